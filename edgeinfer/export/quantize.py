"""Block quantization with onnxruntime's own C++ packers: the layout MatMulNBits and GatherBlockQuantized read.

4 bits for the transformer weights; 8 bits where a tensor is too sensitive for 4 (lm_head, optionally).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

_ROWS_PER_SLAB = 8192
# Clip ranges tried per block (fractions of the block's min and max): 9 pairs find most of the gain of a fine search.
_CLIP_RATIOS = (1.0, 0.9, 0.8)
_PACKERS = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}


@dataclass(frozen=True)
class QuantizedBlocks:
    packed: np.ndarray  # uint8 [N, K / block, block * bits / 8]
    scales: np.ndarray  # float [N, K / block]
    zero_points: np.ndarray | None  # uint8, packed like the weights; None when symmetric (implicit mid-point)
    block_size: int
    bits: int


def best_clip(blocks: np.ndarray, levels: int) -> np.ndarray:
    """Clip each block (last axis) to the [lo, hi] range whose asymmetric grid gives the least squared error.

    Round-to-nearest over the full min..max range wastes levels on rare outliers; clipping them costs less
    than the coarser grid does everywhere else. The packer then sees the clipped block and picks exactly
    that range, so the rounding itself stays onnxruntime's.
    """
    lo0 = np.minimum(blocks.min(-1, keepdims=True), 0)  # the packer always includes zero in the range
    hi0 = np.maximum(blocks.max(-1, keepdims=True), 0)
    best = np.full(lo0.shape, np.inf, dtype=np.float32)
    best_lo, best_hi = lo0, hi0
    for a in _CLIP_RATIOS:
        for b in _CLIP_RATIOS:
            lo, hi = lo0 * a, hi0 * b
            scale = (hi - lo) / (levels - 1)
            scale[scale == 0] = 1
            zero = np.round(-lo / scale)
            q = np.clip(np.round(blocks / scale + zero), 0, levels - 1)
            err = np.square((q - zero) * scale - blocks).sum(-1, keepdims=True)
            better = err < best
            best = np.where(better, err, best)
            best_lo, best_hi = np.where(better, lo, best_lo), np.where(better, hi, best_hi)
    return np.clip(blocks, best_lo, best_hi)


def quantize_blocks(weight_out_in: np.ndarray, block_size: int, symmetric: bool, bits: int = 4,
                    clip_search: bool = False) -> QuantizedBlocks:
    """Quantize a [N, K] (out, in) weight along K in blocks; N rows are independent.

    clip_search (asymmetric only) picks each block's range by least squared error instead of min..max.
    """
    n, k = weight_out_in.shape
    k_blocks = -(-k // block_size)
    if k_blocks * block_size != k:  # the last block is zero-padded, as onnxruntime's own quantizer does
        weight_out_in = np.pad(weight_out_in, ((0, 0), (0, k_blocks * block_size - k)))
    per_byte = 8 // bits
    packed = np.zeros((n, k_blocks, block_size // per_byte), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, -(-k_blocks // per_byte)), dtype=np.uint8)
    # onnxruntime's packer takes the weight as [K, N]; rows are independent, so a slab at a time keeps the
    # transposed copy small (the 151936-row embedding would otherwise need a second full fp32 copy).
    for start in range(0, n, _ROWS_PER_SLAB):
        stop = min(start + _ROWS_PER_SLAB, n)
        slab = np.asarray(weight_out_in[start:stop], dtype=np.float32)
        if clip_search and not symmetric:
            blocks = slab.reshape(stop - start, k_blocks, block_size)
            slab = best_clip(blocks, 2**bits).reshape(stop - start, -1)
        weight_kn = np.ascontiguousarray(slab.T)
        _PACKERS[bits](
            packed[start:stop], weight_kn, scales[start:stop], zero_points[start:stop],
            block_size, stop - start, k_blocks * block_size, symmetric,
        )
    return QuantizedBlocks(packed, scales, None if symmetric else zero_points, block_size, bits)


def _unpack(data: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return data.astype(np.float32)
    return np.stack([data & 0x0F, data >> 4], axis=-1).reshape(*data.shape[:-1], -1).astype(np.float32)


def dequantize_blocks(q: QuantizedBlocks, k: int | None = None) -> np.ndarray:
    """The float weight [N, K] that the quantized form stands for (for tests and fidelity reports)."""
    values = _unpack(q.packed, q.bits)
    if q.zero_points is None:
        zp = np.full(q.scales.shape, 2.0 ** (q.bits - 1), dtype=np.float32)
    else:
        zp = _unpack(q.zero_points, q.bits)[:, : q.scales.shape[1]]
    full = ((values - zp[..., None]) * q.scales[..., None]).reshape(q.packed.shape[0], -1)
    return full[:, :k] if k else full
