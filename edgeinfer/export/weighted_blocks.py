"""Activation-aware asymmetric 4-bit blocks for MatMulNBits: a scale and an integer zero point per block of input
rows, chosen for what the layer computes rather than for the weights alone.

A weight's error costs the layer's output (dW)^T H (dW) per output column, H = X^T X over calibration inputs X
(linear_calibration.py). Two uses of H:

- the scale and zero point of each block are searched to minimize sum_i h_i (w_i - q_i)^2 with h_i the mean squared
  input of row i (H's diagonal: llama.cpp's imatrix), over a grid of ranges narrower than the block's min..max
  (clipping its extremes a little to round the rest finer) and each grid point's least-squares scale;
- the rounding is GPTQ's (gptq.py): rows in act order, each row's error moved onto the rows not yet rounded, on
  the scales and zero points chosen first ("static groups"), so the result is an ordinary MatMulNBits weight.

onnxruntime's own packer rounds each block over min(0, min)..max(0, max) to the nearest level (quantize.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .gptq import InverseHessian, gptq_round
from .quantize import QuantizedBlocks

LEVELS = 15  # unsigned 4-bit 0..15 about an integer zero point
CHUNK_COLUMNS = 1024  # output channels per step of the search: bounds its temporaries
# Scale candidates: the block's range over (LEVELS + step), from the range that clips nothing to ~12% clipped, each
# refit once. Layer 0's q|k of Qwen2.5-Coder-1.5B, block 128, output error on held-out text relative to the output
# (H from 2,048 calibration tokens): round to nearest 1.68e-3; unweighted search over 17 steps 1.93e-3 (worse, as
# measured end to end before); weighted: 1 step 1.59e-3, 17 steps 1.53e-3; then GPTQ: on the nearest-rounding
# scales 1.18e-3, after the 1-step search 1.13e-3, after 17 steps 1.10e-3. Each step costs as much as the rest.
SEARCH_STEPS = (0.0, 1.0, 2.0)
REFITS = 1


class LinearStatistics(Protocol):
    def hessian(self, node: str) -> np.ndarray | None:
        """Mean x x^T [K, K] over the calibration inputs of matmul NODE (None: not calibrated); asked once per node."""


def activation_aware_blocks(weight_out_in: np.ndarray, hessian: np.ndarray, block: int, gptq: bool) -> QuantizedBlocks:
    """WEIGHT [N, K] as MatMulNBits 4-bit blocks, scales and zero points searched with HESSIAN's diagonal as each
    input row's importance, rounded by GPTQ on HESSIAN (overwritten) or to the nearest level."""
    weight_kn = np.ascontiguousarray(weight_out_in.T, dtype=np.float32)
    scales, zeros = search_blocks(weight_kn, np.diag(hessian).copy(), block)
    if gptq:
        q = gptq_blocks(weight_kn, InverseHessian.of(hessian), scales, zeros)
    else:
        q = round_blocks(weight_kn, scales, zeros)
    return pack_blocks(q, scales, zeros)


def search_blocks(weight_kn: np.ndarray, importance: np.ndarray, block: int,
                  steps: tuple[float, ...] = SEARCH_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Per block of BLOCK input rows of WEIGHT [K, N]: (scales float32 [K // BLOCK, N], zero points [K // BLOCK, N]
    integers 0..15 as float32) minimizing sum_i importance_i (w_i - scale (q_i - zero))^2, IMPORTANCE [K] >= 0."""
    rows, columns = weight_kn.shape
    blocks = rows // block
    imp = np.asarray(importance, dtype=np.float32).reshape(blocks, block, 1)
    imp = imp + 1e-6 * max(float(imp.mean()), 1e-30)  # rows that never fired still count a little
    scales = np.empty((blocks, columns), dtype=np.float32)
    zeros = np.empty((blocks, columns), dtype=np.float32)
    for start in range(0, columns, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, columns)
        w = np.asarray(weight_kn[:, start:stop], dtype=np.float32).reshape(blocks, block, stop - start)
        low, high = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
        span = np.maximum(high - low, 1e-12)
        best_error = best_scale = best_zero = None
        for step in steps:
            scale = span / (LEVELS + step)
            zero = np.clip(np.rint(-low / scale), 0, LEVELS)
            for _ in range(REFITS):  # round, then refit the scale to the levels (weighted least squares), then again
                levels = np.clip(np.rint(w / scale[:, None]) + zero[:, None], 0, LEVELS) - zero[:, None]
                fitted = (imp * w * levels).sum(axis=1) / np.maximum((imp * levels * levels).sum(axis=1), 1e-30)
                scale = np.where(fitted > 0, fitted, scale)
            levels = np.clip(np.rint(w / scale[:, None]) + zero[:, None], 0, LEVELS) - zero[:, None]
            error = (imp * (w - scale[:, None] * levels) ** 2).sum(axis=1)
            if best_error is None:
                best_error, best_scale, best_zero = error, scale, zero
            else:
                better = error < best_error
                best_error = np.where(better, error, best_error)
                best_scale, best_zero = np.where(better, scale, best_scale), np.where(better, zero, best_zero)
        scales[:, start:stop], zeros[:, start:stop] = best_scale, best_zero
    return scales, zeros


def round_blocks(weight_kn: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """WEIGHT [K, N] to its nearest levels: uint8 [K, N] in 0..15."""
    rows = weight_kn.shape[0]
    block = rows // scales.shape[0]
    s, z = np.repeat(scales, block, axis=0), np.repeat(zeros, block, axis=0)
    return np.clip(np.rint(weight_kn / s) + z, 0, LEVELS).astype(np.uint8)


def gptq_blocks(weight_kn: np.ndarray, inverse: InverseHessian, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """WEIGHT [K, N] rounded by GPTQ on fixed SCALES and ZEROS [K // BLOCK, N]: uint8 [K, N] in 0..15."""
    return gptq_round(weight_kn, inverse, scales, zeros, 0, LEVELS, np.uint8)


def pack_blocks(q_kn: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> QuantizedBlocks:
    """Levels [K, N] (0..15), SCALES and ZEROS [K // BLOCK, N] in MatMulNBits' layout: each output channel's
    levels two to a byte (the even one in the low nibble), its zero points likewise, its scales in block order."""
    rows, columns = q_kn.shape
    blocks = scales.shape[0]
    levels = np.ascontiguousarray(q_kn.T).reshape(columns, blocks, rows // blocks)
    packed = (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)
    z = zeros.T.astype(np.uint8)  # [N, blocks]
    if blocks % 2:
        z = np.pad(z, ((0, 0), (0, 1)))
    packed_zeros = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
    return QuantizedBlocks(packed, np.ascontiguousarray(scales.T, dtype=np.float32), packed_zeros, rows // blocks, 4)


def dequantize(q_kn: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """The float [K, N] that levels, scales and zero points stand for."""
    block = q_kn.shape[0] // scales.shape[0]
    return (q_kn.astype(np.float32) - np.repeat(zeros, block, axis=0)) * np.repeat(scales, block, axis=0)
