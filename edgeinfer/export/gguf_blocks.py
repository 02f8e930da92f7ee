"""GGUF block formats kept as the file holds them: the integers and scales of Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K
as onnxruntime's MatMulNBits / GatherBlockQuantized blocks, instead of dequantizing and quantizing a second time.

Every format here is weight = scale * (code - 2**(bits-1)) + offset per block, with
- 4-bit codes for Q4_0, Q4_1 and Q4_K (blocks of 32: Q4_K's sub-blocks), 8-bit codes for Q8_0, Q5_K (blocks of 32)
  and Q6_K (blocks of 16, its sub-blocks), shifted so that the operator's implicit zero point (8 or 128) is right;
- scale = a float16 per block or per 256-superblock times the sub-block's integer scale (6-bit for the K-quants'
  mins formats, int8 for Q6_K): the product of a float16 and an integer below 2^8 fits float32's mantissa, so the
  graph computes it exactly from the file's own fields (constant-folded by onnxruntime at load, which keeps the
  package near the GGUF's size: a float32 scale per 32 weights would cost a bit per weight);
- offset, for the formats with mins (Q4_1, Q4_K, Q5_K): (code's shift) * scale - min, a float per block added as
  sum(x over the block) * offset. MatMulNBits could take it as a float zero point, but onnxruntime 1.32's CPU
  kernels then dequantize the whole matrix every call (bench/lossless_forms.py: 131 ms against 3.1 ms for the
  1536x17920 gate|up decode matmul), and a float zero point (offset / scale) cannot hold a sub-block whose scale is
  0 under a nonzero min (16 of the real Q4_K_M's 42 million).

`ExactBlocks.dequantize` computes the weights as the graph does; tests compare it with gguf-py's own dequantize.
Other types (Q2_K, Q3_K, IQ*, Q5_0...) have no such mapping here: the exporter requantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SUPER = 256  # K-quants' superblock


@dataclass(frozen=True)
class Factors:
    """Per-block values [N, B] stored as GGUF stores them: coarse (float16 [N, C], one per B // C blocks) times fine
    (an integer per block [N, B], or None for 1)."""

    coarse: np.ndarray
    fine: np.ndarray | None = None

    def values(self) -> np.ndarray:
        coarse = self.coarse.astype(np.float32)
        if self.fine is None:
            return coarse
        n, c = coarse.shape
        return (coarse[:, :, None] * self.fine.astype(np.float32).reshape(n, c, -1)).reshape(n, -1)

    def rows(self, index) -> "Factors":
        return Factors(self.coarse[index], None if self.fine is None else self.fine[index])

    @staticmethod
    def concat(parts: list["Factors"]) -> "Factors":
        fine = None if parts[0].fine is None else np.concatenate([p.fine for p in parts])
        return Factors(np.concatenate([p.coarse for p in parts]), fine)

    def finite(self) -> bool:
        return bool(np.isfinite(self.coarse).all())


@dataclass(frozen=True)
class ExactBlocks:
    """One [N, K] weight (out, in) in a GGUF's own blocks: weight = scale * (code - 2**(bits-1)) + offset, with
    offset = offset_steps * scale + shift per block (None: no offset)."""

    kind: str  # the GGUF type it came from
    bits: int  # 4 or 8
    block_size: int
    codes: np.ndarray  # uint8 [N, K]
    scale: Factors  # [N, K // block_size]
    offset_steps: int = 0
    shift: Factors | None = None

    @property
    def layout(self) -> str:
        """What must agree for two weights to share one MatMulNBits: the GGUF type fixes bits, blocks and factors."""
        return self.kind

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def offset(self) -> np.ndarray | None:
        """float32 [N, K // block_size], computed as the graph computes it."""
        if self.shift is None:
            return None
        return np.float32(self.offset_steps) * self.scale.values() + self.shift.values()

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: the weights the graph multiplies by."""
        n, k = self.codes.shape
        steps = self.codes.reshape(n, -1, self.block_size).astype(np.float32) - np.float32(2 ** (self.bits - 1))
        weight = steps * self.scale.values()[:, :, None]
        offset = self.offset()
        if offset is not None:
            weight = weight + offset[:, :, None]
        return weight.reshape(n, k)

    def packed(self) -> np.ndarray:
        """uint8 [N, K // block_size, block_size * bits // 8], MatMulNBits' B (two 4-bit codes a byte, low first)."""
        n, k = self.codes.shape
        codes = self.codes.reshape(n, k // self.block_size, self.block_size)
        if self.bits == 8:
            return codes
        return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)

    def rows(self, index) -> "ExactBlocks":
        return replace(self, codes=np.ascontiguousarray(self.codes[index]), scale=self.scale.rows(index),
                       shift=None if self.shift is None else self.shift.rows(index))

    def finite(self) -> bool:
        return self.scale.finite() and (self.shift is None or self.shift.finite())


def concat_rows(parts: list[ExactBlocks]) -> ExactBlocks:
    """Weights of one layout stacked along N (q|k|v, gate|up)."""
    first = parts[0]
    if any(p.layout != first.layout for p in parts):
        raise ValueError("weights of different block layouts cannot share one MatMulNBits")
    return replace(first, codes=np.concatenate([p.codes for p in parts]), scale=Factors.concat([p.scale for p in parts]),
                   shift=None if first.shift is None else Factors.concat([p.shift for p in parts]))


# -- GGUF block decoding (byte layouts as gguf-py's quants.py and ggml-quants.c read them) ----------------------------
def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).reshape(raw.shape[0])


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """Bytes [nb, G*group] -> [nb, 2*G*group] codes: each run of GROUP bytes gives its low nibbles, then its high."""
    nb = qs.shape[0]
    qs = qs.reshape(nb, -1, 1, group)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, -1)


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins per superblock."""
    nb = scales.shape[0]
    d, m, m_d = np.split(scales.reshape(nb, 3, 4), 3, axis=1)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1).reshape(nb, 8)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1).reshape(nb, 8)
    return sc, mn


def _q4_0(b):
    return dict(bits=4, block_size=32, codes=_nibbles(b[:, 2:], 16), scale=(_f16(b[:, :2]), None))


def _q4_1(b):
    return dict(bits=4, block_size=32, codes=_nibbles(b[:, 4:], 16), scale=(_f16(b[:, :2]), None),
                offset_steps=8, shift=(_f16(b[:, 2:4]), None))


def _q8_0(b):
    codes = (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return dict(bits=8, block_size=32, codes=codes, scale=(_f16(b[:, :2]), None))


def _q4_k(b):
    sc, mn = _scale_min_k4(b[:, 4:16])
    return dict(bits=4, block_size=32, codes=_nibbles(b[:, 16:], 32), scale=(_f16(b[:, :2]), sc),
                offset_steps=8, shift=(-_f16(b[:, 2:4]), mn))


def _q5_k(b):
    sc, mn = _scale_min_k4(b[:, 4:16])
    nb = b.shape[0]
    high = (b[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    codes = _nibbles(b[:, 48:], 32) | (high.reshape(nb, -1) << 4)
    return dict(bits=8, block_size=32, codes=codes + np.uint8(112), scale=(_f16(b[:, :2]), sc),
                offset_steps=16, shift=(-_f16(b[:, 2:4]), mn))


def _q6_k(b):
    nb = b.shape[0]
    low = _nibbles(b[:, :128], 64)  # [nb, 256]: ql's two halves, each its low then high nibbles
    high = (b[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    codes = low | (high.reshape(nb, -1) << 4)
    return dict(bits=8, block_size=16, codes=codes + np.uint8(96), scale=(_f16(b[:, 208:210]), b[:, 192:208].view(np.int8)))


_DECODERS = {"Q4_0": (32, _q4_0), "Q4_1": (32, _q4_1), "Q8_0": (32, _q8_0),
             "Q4_K": (SUPER, _q4_k), "Q5_K": (SUPER, _q5_k), "Q6_K": (SUPER, _q6_k)}
EXACT_KINDS = tuple(_DECODERS)


def exact_blocks(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> ExactBlocks | None:
    """A GGUF tensor's raw bytes (RAW, any shape) of type KIND holding a [N, K] weight -> its exact blocks; None when
    KIND has no exact mapping or K is not whole blocks."""
    if kind not in _DECODERS:
        return None
    per_block, decode = _DECODERS[kind]
    n, k = shape
    if k % per_block:
        return None
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(n * (k // per_block), -1)
    fields = decode(blocks)

    def factors(pair):
        if pair is None:
            return None
        coarse, fine = pair
        return Factors(coarse.reshape(n, -1), None if fine is None else np.ascontiguousarray(fine).reshape(n, -1))

    return ExactBlocks(kind=kind, bits=fields["bits"], block_size=fields["block_size"],
                       codes=np.ascontiguousarray(fields["codes"], dtype=np.uint8).reshape(n, k),
                       scale=factors(fields["scale"]), offset_steps=fields.get("offset_steps", 0),
                       shift=factors(fields.get("shift")))
