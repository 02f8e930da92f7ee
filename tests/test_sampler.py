"""The sampler's distributions: top-p keeps exactly the smallest set reaching p, greedy limits, seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.errors import SamplingError
from edgeinfer.sampler import (
    GREEDY, SamplingParams, apply_repetition_penalty, logits_to_probs, sample, sample_from_candidates,
)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))


def test_top_p_keeps_smallest_set_reaching_p():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    assert np.count_nonzero(probs) == 2  # 0.5 + 0.2 reaches 0.7
    assert probs[0] == pytest.approx(0.5 / 0.7)
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=0.71))
    assert np.count_nonzero(probs) == 3


def test_top_p_over_a_large_vocabulary_matches_full_sort():
    rng = np.random.default_rng(0)
    for flatness in (0.1, 3.0):  # flat logits force the full-sort path, peaked ones the candidate path
        logits = rng.standard_normal(151936) * flatness
        probs = softmax(logits)
        order = np.argsort(-probs)
        need = np.searchsorted(np.cumsum(probs[order]), 0.9) + 1
        got = logits_to_probs(logits, SamplingParams(temperature=1.0, top_p=0.9))
        assert set(np.flatnonzero(got)) == set(order[:need])


def test_top_k_and_min_p():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=1.0, top_k=3))
    assert np.flatnonzero(probs).tolist() == [0, 1, 2]
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=1.0, top_p=1.0, min_p=0.3))
    assert np.flatnonzero(probs).tolist() == [0, 1, 2]  # >= 0.3 * 0.5


def test_temperature_to_zero_approaches_greedy():
    cold = logits_to_probs(LOGITS, SamplingParams(temperature=0.01, top_p=1.0))
    assert cold[0] > 0.999
    assert sample(LOGITS, GREEDY, np.random.default_rng()) == 0


def test_temperature_flattens():
    hot = logits_to_probs(LOGITS, SamplingParams(temperature=2.0, top_p=1.0))
    assert hot[4] > softmax(LOGITS)[4]


def test_seed_reproduces_and_frequencies_match():
    params = SamplingParams(temperature=1.0, top_p=1.0, seed=7)
    draw = lambda: [sample(LOGITS, params, np.random.default_rng(7)) for _ in range(1)]  # noqa: E731
    assert draw() == draw()
    rng = np.random.default_rng(123)
    counts = np.bincount([sample(LOGITS, params, rng) for _ in range(20000)], minlength=5) / 20000
    assert np.abs(counts - softmax(LOGITS)).max() < 0.015


def test_repetition_penalty_follows_transformers_rule():
    logits = np.array([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize("kwargs", [
    {"temperature": -1}, {"temperature": float("nan")}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1},
    {"min_p": 1.0}, {"repetition_penalty": 0}, {"seed": -3},
])
def test_invalid_parameters_are_refused(kwargs):
    with pytest.raises(SamplingError, match="must be"):
        SamplingParams(**kwargs)


def test_nan_logits_give_a_clear_error():
    with pytest.raises(SamplingError, match="NaN"):
        sample(np.array([np.nan, 1.0]), GREEDY, np.random.default_rng())
    with pytest.raises(SamplingError, match="NaN"):
        sample(np.array([np.nan, 1.0]), SamplingParams(temperature=1.0), np.random.default_rng())


def dense_reference(logits, params, history):
    """transformers' order on whole-vocabulary arrays with a full sort: what the sampler's shortcuts must equal."""
    x = apply_repetition_penalty(np.asarray(logits, np.float64), history, params.repetition_penalty) / params.temperature
    if params.top_k:
        x = np.where(x >= np.sort(x)[-params.top_k], x, -np.inf)
    probs = softmax(x)
    order = np.argsort(-probs, kind="stable")
    cut = np.searchsorted(np.cumsum(probs[order]), params.top_p) + 1
    probs[order[cut:]] = 0.0
    probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


def test_filters_match_a_dense_reference_and_seeded_draws_follow_id_order():
    rng = np.random.default_rng(3)
    for _ in range(40):
        vocab = int(rng.integers(2, 4000))
        logits = rng.standard_normal(vocab) * rng.uniform(0.1, 5)
        params = SamplingParams(temperature=float(rng.uniform(0.1, 2)), top_k=int(rng.integers(0, 60)),
                                top_p=float(rng.uniform(0.3, 1.0)), min_p=float(rng.choice([0, 0.05, 0.2])),
                                repetition_penalty=float(rng.choice([1.0, 1.3])))
        history = rng.integers(0, vocab, 20)
        expected = dense_reference(logits, params, history)
        np.testing.assert_allclose(logits_to_probs(logits, params, history), expected, atol=1e-12)
        # The draw walks the kept tokens in id order: one uniform number u picks the first id whose CDF passes u.
        u = np.random.default_rng(7).random()
        cdf = np.cumsum(expected)
        assert sample(logits, params, np.random.default_rng(7), history) == int(np.searchsorted(cdf, u * cdf[-1], side="right"))


def test_candidates_draw_what_the_whole_row_draws_or_decline():
    """sample_from_candidates (the GPU's K most likely tokens) against sample (the whole row), seed for seed."""
    rng = np.random.default_rng(11)
    served = 0
    for trial in range(300):
        logits = rng.standard_normal(5000) * rng.uniform(0.5, 6)
        params = SamplingParams(temperature=float(rng.uniform(0.2, 1.5)), top_k=int(rng.choice([0, 10, 64, 100])),
                                top_p=float(rng.choice([1.0, 0.5, 0.9, 0.95])), min_p=float(rng.choice([0, 0.05, 0.3])))
        scaled = logits / params.temperature
        top = np.argsort(-scaled)[:64]
        log_total = np.log(np.exp(scaled - scaled.max()).sum()) + scaled.max()
        token = sample_from_candidates(top, scaled[top], log_total, params, np.random.default_rng(trial))
        if token is None:
            probs = logits_to_probs(logits, params)
            # Declined only where the kept set may reach past the 64: top-k above 64, or more than 64 kept.
            assert params.top_k > 64 or np.count_nonzero(probs) >= 64 or (params.top_p == 1 and not params.top_k and not params.min_p)
        else:
            served += 1
            assert token == sample(logits, params, np.random.default_rng(trial))
    assert served > 100
    assert sample_from_candidates(np.arange(3), np.array([0.0, -1, -2]), 0.5, SamplingParams(top_p=1.0), np.random.default_rng()) is None
