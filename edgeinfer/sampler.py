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
    # The defaults are DeepSeek-R1's recommendation, a sound default for other chat models too.
    temperature: float = 0.6
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
    ids, probs = kept_tokens(logits, params, history)
    dense = np.zeros(np.shape(logits)[-1], dtype=np.float64)
    dense[ids] = probs
    return dense


def kept_tokens(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tokens the draw may pick and their probabilities (summing to 1).

    Each filter works on as few tokens as it can (top-k on its k, top-p on the best candidates first), and
    nothing vocabulary-sized is built beyond one softmax pass: over 152k tokens, 2.7 ms instead of 10.5 with
    top-k 50, 4.3 instead of 5.0 with top-p 0.95 (2-core EPYC).
    """
    logits = np.asarray(logits, dtype=np.float64)
    vocab = logits.shape[-1]
    _check_finite(logits[int(np.argmax(logits))])
    # Extreme settings must not end in NaN (inf - inf): a tiny penalty can push a logit to +inf, clamped here,
    # and shifting by the max before dividing keeps a tiny temperature from doing the same. Overflow to -inf
    # is the intended limit, not worth a warning.
    with np.errstate(over="ignore"):
        history = history if history is not None else np.empty(0, np.int64)
        logits = np.minimum(apply_repetition_penalty(logits, history, params.repetition_penalty), np.finfo(np.float64).max)
        if params.greedy:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        scaled = (logits - logits.max()) / params.temperature  # <= 0, the best token at 0
    ids = None  # every token, until a filter narrows it
    if 0 < params.top_k < scaled.size:
        ids = np.argpartition(scaled, -params.top_k)[-params.top_k:]
        scaled = scaled[ids]
    weights = np.exp(scaled)  # unnormalized probabilities, the best token's 1
    keep = None
    if params.top_p < 1.0:
        keep = _top_p(weights, params.top_p)
    if params.min_p > 0:
        kept = np.arange(weights.size) if keep is None else keep
        keep = kept[weights[kept] >= params.min_p * weights.max()]
    if keep is not None:
        ids, weights = (keep if ids is None else ids[keep]), weights[keep]
    elif ids is None:
        ids = np.arange(weights.size)
    if ids.size < vocab:  # top-k and top-p reorder: back to id order, so a seeded draw picks as before
        ascending = np.argsort(ids)
        ids, weights = ids[ascending], weights[ascending]
    return ids, weights / weights.sum()


def _top_p(weights: np.ndarray, p: float) -> np.ndarray:
    """Indices of the smallest set of heaviest WEIGHTS holding a share P of their total."""
    mass = p * weights.sum()
    n = min(_TOP_P_CANDIDATES, weights.size)
    candidates = np.argpartition(weights, -n)[-n:]
    if weights[candidates].sum() < mass:
        candidates = np.arange(weights.size)
    order = candidates[np.argsort(-weights[candidates], kind="stable")]
    keep = np.searchsorted(np.cumsum(weights[order]), mass) + 1  # index of the first prefix sum >= mass, plus one
    return order[: min(keep, order.size)]


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, history: np.ndarray | None = None) -> int:
    if params.greedy and params.repetition_penalty == 1.0:
        best = int(np.argmax(logits))
        _check_finite(logits[best])
        return best
    ids, probs = kept_tokens(logits, params, history)
    if params.greedy:
        return int(ids[np.argmax(probs)])
    # Inverse-CDF draw over the kept tokens only: one random number per token, reproducible with a seed.
    cdf = np.cumsum(probs)
    return int(ids[min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(ids) - 1)])


def sample_from_candidates(ids: np.ndarray, scaled: np.ndarray, log_total: float, params: SamplingParams,
                           rng: np.random.Generator) -> int | None:
    """Draw as `sample` would, from the K most likely tokens alone: IDS, their logits / temperature (SCALED),
    and LOG_TOTAL = log(sum(exp(logits / temperature))) over the whole vocabulary, which makes their
    probabilities exact. None when the kept set may reach past the K (top-k above K; top-p needing more than
    their mass, unless min-p stops earlier; no filter at all): the caller samples from the whole row instead."""
    if not (np.isfinite(log_total) and np.isfinite(scaled).all()):
        return None  # an overflowing temperature or a broken model: the full path handles and reports it
    order = np.argsort(-scaled, kind="stable")
    ids, probs = ids[order], np.exp(scaled[order].astype(np.float64) - log_total)
    # Every filter keeps a prefix of the tokens by probability: find the shortest, and whether it provably
    # ends within the candidates.
    keep, known, total = ids.size, False, 1.0  # total: what top-p takes its share of (the vocabulary, or top-k's)
    if params.top_k > 0:
        if params.top_k > ids.size:
            return None
        keep, known, total = params.top_k, True, probs[: params.top_k].sum()
    if params.top_p < 1.0:
        cumulative = np.cumsum(probs[:keep])
        if cumulative[-1] >= params.top_p * total:
            keep, known = int(np.searchsorted(cumulative, params.top_p * total)) + 1, True
    if params.min_p > 0:
        above = int(np.count_nonzero(probs[:keep] >= params.min_p * probs[0]))
        if above < keep or known:
            keep, known = above, True
    if not known:
        return None
    ids, probs = ids[:keep], probs[:keep]
    ascending = np.argsort(ids)  # the same id-order draw as `sample`
    cdf = np.cumsum(probs[ascending])
    return int(ids[ascending][min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(ids) - 1)])
