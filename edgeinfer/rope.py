"""Rotary position embeddings: the cos/sin tables of every rope type the supported families use.

A table has one row per position and one column per rotated pair (rotary_dims / 2): the non-interleaved
(GPT-NeoX, rotate-half) rotary of Hugging Face's Llama, Qwen, Gemma and Phi models. Both graphs read these rows,
the dynamic one inside GroupQueryAttention, the static one from the host; so a rope type is only a table.

Types (config.json's rope_type), as transformers' modeling_rope_utils computes them:
- default; linear (frequencies / factor); llama3 (low frequencies / factor, high ones kept, a smooth ramp
  between); yarn (the same idea by rotations per original context, cos/sin times an attention factor).
- dynamic (NTK): transformers rescales only past max_position_embeddings, which an export never exceeds (its
  context is at most that), so within it the table is the default one.
- longrope (Phi-3/4): short factors for positions below original_max_position_embeddings, long factors from
  there on, cos/sin times an attention factor. transformers switches the whole forward pass to the long factors
  once the sequence passes that length; rows indexed by position give the same result token by token, and differ
  only for a prompt that crosses the boundary in one prefill (its early rows keep the short factors here).
- frequency_divisors: one divisor per frequency, as GGUF files store llama3 scaling (the rope_freqs tensor).
"""

from __future__ import annotations

import math

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope", "frequency_divisors")


def inverse_frequencies(dims: int, theta: float) -> np.ndarray:
    """theta^(-2i/dims) for each rotated pair i, in float32 as transformers computes them, then held in float64."""
    exponents = np.arange(0, dims, 2, dtype=np.int64).astype(np.float32) / np.float32(dims)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float64)


def scaled_frequencies(dims: int, theta: float, scaling: dict | None, max_positions: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """(frequencies, long-context frequencies or None, attention factor) of one rope."""
    kind = (scaling or {}).get("rope_type", "default")
    base = inverse_frequencies(dims, theta)
    if kind in ("default", "dynamic"):
        return base, None, 1.0
    if kind == "linear":
        return base / scaling["factor"], None, 1.0
    if kind == "frequency_divisors":
        return base / np.asarray(scaling["divisors"], dtype=np.float64), None, 1.0
    if kind == "llama3":
        return _llama3(base, scaling), None, 1.0
    if kind == "yarn":
        return _yarn(dims, theta, scaling, max_positions)
    if kind == "longrope":
        return _longrope(dims, theta, scaling, max_positions)
    raise ValueError(f"rope type {kind!r} is not one of {', '.join(ROPE_TYPES)}")


def rotary_table(dims: int, theta: float, scaling: dict | None, max_positions: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of [LENGTH, DIMS / 2], float32."""
    frequencies, long_frequencies, factor = scaled_frequencies(dims, theta, scaling, max_positions)
    positions = np.arange(length, dtype=np.float64)
    angles = np.outer(positions, frequencies)
    if long_frequencies is not None:
        switch = int(scaling["original_max_position_embeddings"])
        angles[switch:] = np.outer(positions[switch:], long_frequencies)
    return (np.cos(angles) * factor).astype(np.float32), (np.sin(angles) * factor).astype(np.float32)


def _llama3(base: np.ndarray, s: dict) -> np.ndarray:
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s["original_max_position_embeddings"]
    wavelength = 2 * math.pi / base
    scaled = np.where(wavelength > old / low, base / factor, base)
    smooth = (old / wavelength - low) / (high - low)
    medium = ~(wavelength < old / high) & ~(wavelength > old / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _yarn(dims: int, theta: float, s: dict, max_positions: int) -> tuple[np.ndarray, None, float]:
    original = s["original_max_position_embeddings"]
    factor = s.get("factor") or max_positions / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dims * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.get("beta_fast") or 32), correction_dim(s.get("beta_slow") or 1)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dims // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = inverse_frequencies(dims, theta)
    interpolation = extrapolation / factor
    keep = 1 - ramp  # high frequencies keep their value, low ones are interpolated
    return interpolation * (1 - keep) + extrapolation * keep, None, float(attention)


def _longrope(dims: int, theta: float, s: dict, max_positions: int) -> tuple[np.ndarray, np.ndarray, float]:
    original = s["original_max_position_embeddings"]
    factor = s.get("factor") or max_positions / original
    attention = s.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    base = inverse_frequencies(dims, theta)
    short = base / np.asarray(s["short_factor"], dtype=np.float64)
    long = base / np.asarray(s["long_factor"], dtype=np.float64)
    return short, long, float(attention)
