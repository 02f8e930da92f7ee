"""Block-wise symmetric INT4 weights for QDQ graphs: one scale per BLOCK input rows of each output channel, on the
grid of Qualcomm's LPBQ (low-power block quantization).

Per output channel, one int4 scale has to cover the whole input dimension, and Qwen2's weights hold input rows many
times larger than the rest (the rows that meet the residual stream's massive-activation channels): every other weight
of the column then rounds to a handful of levels. Blocks of 32 rows keep an outlier's cost inside its own block,
the granularity of GGUF's Q4 blocks and onnxruntime's MatMulNBits.

The HTP runs block-quantized int4 MatMuls with 16-bit integer activations only in LPBQ form: a float scale per
output channel times a 4-bit integer (1..16) per block. The QNN EP converts an ONNX block-quantized weight to that
form (provider option enable_block_quant_weight_optimization) by taking channel scale = max block scale / 16 and
rounding each block's ratio to an integer; for arbitrary block scales that rounding changes the weights the HTP
uses (1.3% relative error against the CPU EP on a probe matmul). So the scales written here are already on that
grid: the conversion is exact, and the CPU EP and the HTP compute with the same weights (0.2%, as per-channel int4).
Without the option, QNN runs these MatMuls with fp16 activations, and only on SoCs with fp16.

Measured on a 2-layer truncation of Qwen2.5-Coder-1.5B (bench/results/qnn-numerics-*.md), per-layer SQNR of the
residual stream, unrotated: 13.3 dB per channel -> 17.2 / 18.0 dB with free block scales of 64 / 32; the LPBQ grid
costs 0.5 dB. Rotated, on the grid: blocks of 32 19.6 dB, of 16 20.4 dB, and 21.0 dB when each block also tries one
grid step below the scale that clips nothing (clipping its largest weight a little to round the rest finer).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BLOCK = 16
INT4_MAX = 7  # levels -7..7 with zero point 0: the grid is symmetric, -8 is never produced
LPBQ_LEVELS = 16  # 4-bit block multipliers 1..16 of the channel scale, as the QNN EP's conversion assigns them
CHUNK_COLUMNS = 2048  # output channels per step: bounds the temporaries


def block_size_for(rows: int, block: int = DEFAULT_BLOCK) -> int | None:
    """BLOCK if it splits ROWS (the input dimension) into two or more blocks, else None (keep per-channel)."""
    return block if block > 0 and rows % block == 0 and rows > block else None


def int4_blocks(weight_kn: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """WEIGHT [K, N] float -> (q int8 [K, N] in -7..7, scales float32 [K // BLOCK, N]) with WEIGHT ~ q * scale and
    every scale = channel_scale * k, k an integer in 1..16, channel_scale = the channel's largest scale / 16.
    Each weight rounds to its nearest level (gptq.py rounds with error compensation on the same scales)."""
    scales = lpbq_scales(weight_kn, block)
    return round_to_blocks(weight_kn, scales), scales


def lpbq_scales(weight_kn: np.ndarray, block: int) -> np.ndarray:
    """The block scales [K // BLOCK, N] of int4_blocks: per block, the grid multiple that clips nothing or the one
    below it, whichever rounds the block with less error."""
    rows, columns = weight_kn.shape
    if rows % block:
        raise ValueError(f"{rows} input rows do not split into blocks of {block}")
    blocks = rows // block
    scales = np.empty((blocks, columns), dtype=np.float32)
    for start in range(0, columns, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, columns)
        w = np.asarray(weight_kn[:, start:stop], dtype=np.float32).reshape(blocks, block, stop - start)
        needed = np.abs(w).max(axis=1) / INT4_MAX  # [blocks, n]: the scale each block would take on its own
        channel = needed.max(axis=0) / LPBQ_LEVELS
        channel[channel == 0] = 1.0
        ceiling = np.clip(np.ceil(needed / channel - 1e-4), 1, LPBQ_LEVELS)  # the smallest multiple that clips nothing
        # A grid step below the ceiling clips the block's largest weight a little and rounds all others finer:
        # keep whichever of the two errs least on the block.
        best, best_error = ceiling, None
        for multiple in (ceiling, np.maximum(ceiling - 1, 1)):
            scale = channel * multiple
            error = ((np.clip(np.rint(w / scale[:, None, :]), -INT4_MAX, INT4_MAX) * scale[:, None, :] - w) ** 2).sum(axis=1)
            if best_error is None:
                best_error = error
            else:
                better = error < best_error
                best, best_error = np.where(better, multiple, best), np.where(better, error, best_error)
        # The EP derives the channel scale as the largest block scale / 16: the largest block must keep 16.
        best[needed.argmax(axis=0), np.arange(stop - start)] = LPBQ_LEVELS
        scales[:, start:stop] = channel * best
    return scales


def round_to_blocks(weight_kn: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """WEIGHT [K, N] rounded to the nearest level of its block's scale: int8 [K, N] in -7..7."""
    rows, columns = weight_kn.shape
    blocks = scales.shape[0]
    q = np.empty((rows, columns), dtype=np.int8)
    for start in range(0, columns, CHUNK_COLUMNS):
        stop = min(start + CHUNK_COLUMNS, columns)
        w = np.asarray(weight_kn[:, start:stop], dtype=np.float32).reshape(blocks, rows // blocks, stop - start)
        q[:, start:stop] = np.clip(np.rint(w / scales[:, None, start:stop]), -INT4_MAX, INT4_MAX).reshape(rows, -1)
    return q


def dequantize_int4_blocks(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    blocks = scales.shape[0]
    rows, columns = q.shape
    return (q.reshape(blocks, rows // blocks, columns).astype(np.float32) * scales[:, None, :]).reshape(rows, columns)
