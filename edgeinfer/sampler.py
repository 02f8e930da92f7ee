"""Sampling: pure numpy functions from logits to a token id, in the order transformers applies them.

repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw. Temperature 0 is greedy.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import SamplingError

# Top-p looks at the largest candidates first and sorts the whole vocabulary only when they fall short of p.
_TOP_P_CANDIDATES = 1024


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6  # DeepSeek-R1's recommended setting
    top_k: int = 0  # 0 = off
    top_p: float = 0.95
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        # Types first: a string or None would otherwise fail inside math or numpy with a bare TypeError.
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "top_k", "seed"):
            value, whole = getattr(self, name), name in ("top_k", "seed")
            if name == "seed" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                raise SamplingError(f"{name} must be {'a whole number' if whole else 'a number'}; got {value!r}")
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be a number >= 0 (0 = greedy)"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be a whole number >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
            (self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed must be a whole number >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingError(f"{message}; got {self._value_of(message)}")

    def _value_of(self, message: str):
        return getattr(self, message.split(" ", 1)[0])

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0, top_p=1.0)


def _check_finite(largest) -> None:
    # argmax lands on the first NaN if there is one, on +inf if any, and on -inf only if all are: one pass
    # catches a broken model (-inf elsewhere is a legitimate mask).
    if not math.isfinite(largest):
        raise SamplingError(f"the model produced NaN or infinite logits (max {largest}): the package is broken, re-export it")


def apply_repetition_penalty(logits: np.ndarray, history: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' rule: seen tokens' positive logits are divided by the penalty, negative ones multiplied."""
    if penalty == 1.0 or len(history) == 0:
        return logits
    logits = logits.copy()
    seen = np.unique(history)
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def logits_to_probs(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None) -> np.ndarray:
    """The distribution the next token is drawn from (float64, sums to 1, zeros where filtered out)."""
    logits = np.asarray(logits, dtype=np.float64)
    _check_finite(logits[int(np.argmax(logits))])
    # Extreme settings must not end in NaN (inf - inf): a tiny penalty can push a logit to +inf, clamped here,
    # and shifting by the max before dividing keeps a tiny temperature from doing the same. Overflow to -inf
    # is the intended limit, not worth a warning.
    with np.errstate(over="ignore"):
        history = history if history is not None else np.empty(0, np.int64)
        logits = np.minimum(apply_repetition_penalty(logits, history, params.repetition_penalty), np.finfo(np.float64).max)
        if params.greedy:
            probs = np.zeros_like(logits)
            probs[int(np.argmax(logits))] = 1.0
            return probs
        logits = (logits - logits.max()) / params.temperature
    if 0 < params.top_k < logits.size:
        kth = np.partition(logits, -params.top_k)[-params.top_k]
        logits = np.where(logits >= kth, logits, -np.inf)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        probs = _top_p(probs, params.top_p)
    if params.min_p > 0:
        probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


def _top_p(probs: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose total probability reaches p."""
    n = min(_TOP_P_CANDIDATES, probs.size)
    candidates = np.argpartition(probs, -n)[-n:]
    if probs[candidates].sum() < p:
        candidates = np.arange(probs.size)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    keep = np.searchsorted(np.cumsum(probs[order]), p) + 1  # index of the first prefix sum >= p, plus one
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, history: np.ndarray | None = None) -> int:
    if params.greedy and params.repetition_penalty == 1.0:
        best = int(np.argmax(logits))
        _check_finite(logits[best])
        return best
    probs = logits_to_probs(logits, params, history)
    if params.greedy:
        return int(np.argmax(probs))
    # Inverse-CDF draw over the kept tokens only: one random number per token, reproducible with a seed.
    nonzero = np.flatnonzero(probs)
    cdf = np.cumsum(probs[nonzero])
    return int(nonzero[min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(nonzero) - 1)])
