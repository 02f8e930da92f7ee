"""Activation-aware 4-bit blocks (export/weighted_blocks.py) and their calibration (export/linear_calibration.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeinfer.export.gptq import InverseHessian
from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks
from edgeinfer.export.weighted_blocks import (
    activation_aware_blocks, dequantize, gptq_blocks, pack_blocks, round_blocks, search_blocks,
)


def layer(seed: int = 0, rows: int = 256, columns: int = 64, tokens: int = 1024):
    """A weight [K, N] and inputs whose channels carry very different energy and move together (as real
    activations do: GPTQ has nothing to compensate along without correlations)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((rows, columns)).astype(np.float32)
    mixing = rng.standard_normal((rows // 4, rows)).astype(np.float32) * rng.gamma(0.5, 2.0, rows).astype(np.float32)

    def inputs():
        return rng.standard_normal((tokens, rows // 4)).astype(np.float32) @ mixing + 0.1 * rng.standard_normal((tokens, rows)).astype(np.float32)

    calibration, held_out = inputs(), inputs()
    return weight, calibration.T @ calibration / tokens, held_out.T @ held_out / tokens


def output_error(weight: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    delta = approx - weight
    return float(np.einsum("kn,kl,ln->", delta, hessian, delta))


@pytest.mark.parametrize("rows,block", [(256, 32), (96, 32)])  # 8 blocks, and 3 (an odd count of zero points)
def test_packing_is_what_matmulnbits_reads(rows, block):
    weight, h, _ = layer(rows=rows)
    scales, zeros = search_blocks(weight, np.diag(h), block)
    q = round_blocks(weight, scales, zeros)
    packed = pack_blocks(q, scales, zeros)
    assert packed.packed.shape == (64, rows // block, block // 2)
    np.testing.assert_allclose(dequantize_blocks(packed).T, dequantize(q, scales, zeros), rtol=0, atol=1e-6)
    assert q.max() <= 15 and zeros.min() >= 0 and zeros.max() <= 15 and np.all(zeros == np.rint(zeros))


def test_weighted_search_then_gptq_cut_the_output_error_on_held_out_inputs():
    weight, h_calibration, h_held_out = layer()
    nearest = dequantize_blocks(quantize_blocks(weight.T, 64, symmetric=False)).T  # onnxruntime's own packer
    scales, zeros = search_blocks(weight, np.diag(h_calibration), 64)
    searched = dequantize(round_blocks(weight, scales, zeros), scales, zeros)
    compensated = dequantize(gptq_blocks(weight, InverseHessian.of(h_calibration.copy()), scales, zeros), scales, zeros)
    errors = [output_error(weight, w, h_held_out) for w in (nearest, searched, compensated)]
    assert errors[1] < 0.95 * errors[0], errors
    assert errors[2] < 0.9 * errors[1], errors


def test_importance_moves_precision_to_the_rows_that_carry_energy():
    weight, _, _ = layer()
    importance = np.ones(len(weight), dtype=np.float32)
    importance[:16] = 1e4  # the first rows of block 0 dominate the output
    uniform = search_blocks(weight, np.ones(len(weight)), 64)
    weighted = search_blocks(weight, importance, 64)
    first = lambda s_z: np.abs(dequantize(round_blocks(weight, *s_z), *s_z) - weight)[:16].mean()  # noqa: E731
    assert first(weighted) < first(uniform)


def test_activation_aware_blocks_takes_the_out_in_weight_and_keeps_its_shape():
    weight, h, _ = layer()
    q = activation_aware_blocks(weight.T.copy(), h.copy(), 64, gptq=True)
    approx = dequantize_blocks(q)
    assert approx.shape == weight.T.shape
    assert np.abs(approx - weight.T).max() < np.abs(weight).max()


def test_export_calibrates_the_four_bit_matmuls(qwen2_dir, tmp_path):
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions

    aware = export(str(qwen2_dir), tmp_path / "aware", ExportOptions(block_size=32, activation_aware=True, eight_bit_rule="q4km"),
                   progress=False)  # q4km: down_proj at 4 bits, which the calibration rounds
    nearest = export(str(qwen2_dir), tmp_path / "nearest", ExportOptions(block_size=32, eight_bit_rule="q4km"), progress=False)
    assert aware.export_options["activation_aware"] and not nearest.export_options["activation_aware"]

    def weights(folder):
        model = onnx.load(str(folder / "model.onnx"))
        return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".qweight")}

    a, n = weights(tmp_path / "aware"), weights(tmp_path / "nearest")
    assert a.keys() == n.keys()
    differ = [name for name in a if not np.array_equal(a[name], n[name])]
    assert any("down_proj" in name for name in differ) and not any(name.startswith("lm_head") for name in differ)
    assert not list(tmp_path.glob("aware/.calibration-*"))  # the float graph is gone
    import edgeinfer

    ids = np.arange(3, 40)
    logits = edgeinfer.load(tmp_path / "aware").engine.new_runner().forward(ids, 0)
    assert np.isfinite(logits).all()


def test_random_weights_skip_calibration(tmp_path, monkeypatch):
    import edgeinfer.export.linear_calibration as calibration
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions

    def refuse(*args, **kwargs):
        raise AssertionError("a source of random weights has nothing to be faithful to")

    monkeypatch.setattr(calibration, "collect_linear_inputs", refuse)
    manifest = export("preset:tiny-qwen2", tmp_path / "p", ExportOptions(), progress=False)
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["source"]["random_weights"]
    assert manifest.precision == "w4a16"
