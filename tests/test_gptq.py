"""GPTQ on the LPBQ grid (export/gptq.py): same scales as rounding to nearest, less output error on inputs with
the structure of a real model's (a few channels much larger than the rest, correlated with each other)."""

import numpy as np
import pytest

from edgeinfer.export.gptq import InverseHessian, LinearInputs, gptq_int4_blocks, upper_cholesky_of_inverse
from edgeinfer.export.int4_blocks import INT4_MAX, dequantize_int4_blocks, int4_blocks


def realistic_inputs(rows: int, channels: int, draw: int = 0) -> np.ndarray:
    """Activations with a low-rank correlated part and a few large channels, as LLM hidden states have: one fixed
    structure, rows drawn with seed DRAW (another DRAW: unseen rows of the same layer)."""
    structure = np.random.default_rng(1234)
    mixing = structure.standard_normal((16, channels)).astype(np.float32)
    large = structure.choice(channels, 4, replace=False)
    rng = np.random.default_rng(draw)
    x = rng.standard_normal((rows, 16)).astype(np.float32) @ mixing + 0.3 * rng.standard_normal((rows, channels)).astype(np.float32)
    x[:, large] *= 20
    return x


def output_error(x: np.ndarray, weight: np.ndarray, q: np.ndarray, scales: np.ndarray) -> float:
    return float(np.mean((x @ (dequantize_int4_blocks(q, scales) - weight)) ** 2))


def test_upper_cholesky_of_the_inverse():
    x = realistic_inputs(600, 256)
    h = x.T @ x + np.eye(256, dtype=np.float32)
    u = upper_cholesky_of_inverse(h)
    assert np.array_equal(np.triu(u), u)
    assert np.allclose(u.T @ u, np.linalg.inv(h.astype(np.float64)), rtol=1e-3, atol=1e-3 * np.abs(u.T @ u).max())


@pytest.mark.parametrize("block", [16, 32])
def test_gptq_keeps_the_grid_and_lowers_the_output_error(block):
    rng = np.random.default_rng(1)
    x = realistic_inputs(2000, 512)
    weight = (rng.standard_normal((512, 96)) * 0.05).astype(np.float32)
    nearest_q, nearest_scales = int4_blocks(weight, block)
    q, scales = gptq_int4_blocks(weight, InverseHessian.of(x.T @ x), block)
    assert np.array_equal(scales, nearest_scales)  # the same LPBQ scales: only the rounding differs
    assert q.dtype == np.int8 and np.abs(q).max() <= INT4_MAX
    unseen = realistic_inputs(2000, 512, draw=1)
    for rows in (x, unseen):
        assert output_error(rows, weight, q, scales) < 0.8 * output_error(rows, weight, nearest_q, nearest_scales)


def test_inputs_that_never_fire_round_to_zero():
    x = realistic_inputs(500, 64)
    x[:, 5] = 0
    weight = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)
    q, _ = gptq_int4_blocks(weight, InverseHessian.of(x.T @ x), 16)
    assert not q[5].any()


def test_linear_inputs_fold_rows_and_skip_padding():
    inputs = LinearInputs({"a"})
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1, 8, 4)).astype(np.float32) for _ in range(3)]
    inputs.real_rows = 5  # a left-padded run: the first 3 rows are padding
    inputs.add("a", rows[0])
    inputs.real_rows = None
    inputs.add("a", rows[1])
    inputs.add("a", rows[2])
    kept = np.concatenate([rows[0][0, 3:], rows[1][0], rows[2][0]])
    assert inputs.counts["a"] == 21
    assert np.allclose(inputs.hessian("a"), kept.T @ kept, rtol=1e-5)
    assert "a" not in inputs.rows and "a" not in inputs.gram  # released once taken
