"""4-bit block quantization with onnxruntime's own C++ packer (the layout MatMulNBits and GatherBlockQuantized read)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits


_ROWS_PER_SLAB = 8192


@dataclass(frozen=True)
class Quantized4Bit:
    packed: np.ndarray  # uint8 [N, K / block, block / 2]
    scales: np.ndarray  # float [N, K / block]
    zero_points: np.ndarray | None  # uint8 [N, ceil(K / block / 2)], None when symmetric (implicit 8)
    block_size: int


def quantize_4bit(weight_out_in: np.ndarray, block_size: int, symmetric: bool) -> Quantized4Bit:
    """Quantize a [N, K] (out, in) weight along K in blocks; N rows are independent."""
    n, k = weight_out_in.shape
    k_blocks = -(-k // block_size)
    if k_blocks * block_size != k:  # the last block is zero-padded, as onnxruntime's own quantizer does
        weight_out_in = np.pad(weight_out_in, ((0, 0), (0, k_blocks * block_size - k)))
    packed = np.zeros((n, k_blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
    # onnxruntime's packer takes the weight as [K, N]; rows are independent, so a slab at a time keeps the
    # transposed copy small (the 151936-row embedding would otherwise need a second full fp32 copy).
    for start in range(0, n, _ROWS_PER_SLAB):
        stop = min(start + _ROWS_PER_SLAB, n)
        weight_kn = np.ascontiguousarray(weight_out_in[start:stop].T, dtype=np.float32)
        quantize_matmul_4bits(
            packed[start:stop], weight_kn, scales[start:stop], zero_points[start:stop],
            block_size, stop - start, k_blocks * block_size, symmetric,
        )
    return Quantized4Bit(packed, scales, None if symmetric else zero_points, block_size)


def dequantize_4bit(q: Quantized4Bit, k: int | None = None) -> np.ndarray:
    """The float weight [N, K] that the quantized form stands for (for tests and fidelity reports)."""
    low = q.packed & 0x0F
    high = q.packed >> 4
    values = np.stack([low, high], axis=-1).reshape(q.packed.shape[0], q.packed.shape[1], -1).astype(np.float32)
    if q.zero_points is None:
        zp = np.full(q.scales.shape, 8.0, dtype=np.float32)
    else:
        zp = np.stack([q.zero_points & 0x0F, q.zero_points >> 4], axis=-1).reshape(q.scales.shape[0], -1)
        zp = zp[:, : q.scales.shape[1]].astype(np.float32)
    full = ((values - zp[..., None]) * q.scales[..., None]).reshape(q.packed.shape[0], -1)
    return full[:, :k] if k else full
