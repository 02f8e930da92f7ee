"""4-bit block quantization with onnxruntime's own C++ packer (the layout MatMulNBits and GatherBlockQuantized read)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits


@dataclass(frozen=True)
class Quantized4Bit:
    packed: np.ndarray  # uint8 [N, K / block, block / 2]
    scales: np.ndarray  # float [N, K / block]
    zero_points: np.ndarray | None  # uint8 [N, ceil(K / block / 2)], None when symmetric (implicit 8)
    block_size: int


def quantize_4bit(weight_out_in: np.ndarray, block_size: int, symmetric: bool) -> Quantized4Bit:
    """Quantize a [N, K] (out, in) weight along K in blocks; N rows are independent."""
    n, k = weight_out_in.shape
    if k % block_size:
        raise ValueError(f"input size {k} is not a multiple of block size {block_size}")
    k_blocks = k // block_size
    packed = np.zeros((n, k_blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
    # onnxruntime's packer takes the weight as [K, N].
    weight_kn = np.ascontiguousarray(weight_out_in.T, dtype=np.float32)
    quantize_matmul_4bits(packed, weight_kn, scales, zero_points, block_size, n, k, symmetric)
    return Quantized4Bit(packed, scales, None if symmetric else zero_points, block_size)


def dequantize_4bit(q: Quantized4Bit) -> np.ndarray:
    """The float weight [N, K] that the quantized form stands for (for tests and fidelity reports)."""
    low = q.packed & 0x0F
    high = q.packed >> 4
    values = np.stack([low, high], axis=-1).reshape(q.packed.shape[0], q.packed.shape[1], -1).astype(np.float32)
    if q.zero_points is None:
        zp = np.full(q.scales.shape, 8.0, dtype=np.float32)
    else:
        zp = np.stack([q.zero_points & 0x0F, q.zero_points >> 4], axis=-1).reshape(q.scales.shape[0], -1)
        zp = zp[:, : q.scales.shape[1]].astype(np.float32)
    return ((values - zp[..., None]) * q.scales[..., None]).reshape(q.packed.shape[0], -1)
