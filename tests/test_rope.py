"""Every rope type's table against transformers' own frequencies (modeling_rope_utils) on the same parameters."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.rope import rotary_table, scaled_frequencies

HEAD_DIM, THETA, POSITIONS = 64, 10000.0, 4096
CASES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    "yarn-mscale": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512, "mscale": 1.0,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 1024,
                 "short_factor": list(np.linspace(1.0, 2.0, HEAD_DIM // 2)),
                 "long_factor": list(np.linspace(1.0, 20.0, HEAD_DIM // 2))},
}


def transformers_frequencies(scaling: dict, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, max_position_embeddings=POSITIONS,
                         rope_parameters={**scaling, "rope_theta": THETA})
    frequencies, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, None, seq_len=seq_len)
    return frequencies.double().numpy(), float(factor)


@pytest.mark.parametrize("case", CASES)
def test_frequencies_and_attention_factor_match_transformers(case):
    scaling = CASES[case]
    ours, long, factor = scaled_frequencies(HEAD_DIM, THETA, scaling, POSITIONS)
    theirs, their_factor = transformers_frequencies(scaling)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert factor == pytest.approx(their_factor, rel=1e-6)
    if case == "longrope":  # transformers' long set is the one past the original context
        np.testing.assert_allclose(long, transformers_frequencies(scaling, seq_len=2048)[0], rtol=1e-6)


def test_longrope_rows_switch_at_the_original_context():
    scaling = CASES["longrope"]
    cos, _ = rotary_table(HEAD_DIM, THETA, scaling, POSITIONS, 2048)
    short, long, factor = scaled_frequencies(HEAD_DIM, THETA, scaling, POSITIONS)
    np.testing.assert_allclose(cos[1023], np.cos(1023 * short) * factor, rtol=1e-5)
    np.testing.assert_allclose(cos[1024], np.cos(1024 * long) * factor, rtol=1e-5)


def test_dynamic_within_the_model_positions_is_the_default_table():
    plain = rotary_table(HEAD_DIM, THETA, None, POSITIONS, POSITIONS)
    dynamic = rotary_table(HEAD_DIM, THETA, {"rope_type": "dynamic", "factor": 2.0}, POSITIONS, POSITIONS)
    np.testing.assert_array_equal(plain[0], dynamic[0])
    theirs, _ = transformers_frequencies({"rope_type": "dynamic", "factor": 2.0}, seq_len=POSITIONS)
    np.testing.assert_allclose(scaled_frequencies(HEAD_DIM, THETA, None, POSITIONS)[0], theirs, rtol=1e-6)
