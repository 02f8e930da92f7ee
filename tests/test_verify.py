"""`edgeinfer verify` and `edgeinfer run QNN_PACKAGE --device cpu`: the QDQ reference on the CPU EP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.backends import get_backend
from edgeinfer.cli import main
from edgeinfer.sampler import GREEDY

from .conftest import export_tiny

QNN = get_backend("qnn").availability()


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("verify")
    qdq = export_tiny("preset:tiny-qwen2", root / "w4a16", target="qnn", prefill_chunk=16)
    float_static = export_tiny("preset:tiny-qwen2", root / "fp32", target="qnn", precision="fp32", prefill_chunk=16)
    return qdq, float_static


def test_verify_reports_every_layer_and_the_logits(packages, tmp_path, capsys):
    qdq, float_static = packages
    out = tmp_path / "figures.json"
    assert main(["verify", str(qdq), "--reference", str(float_static), "--positions", "48", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 0 |" in printed and "| 1 |" in printed and "top-1 agreement" in printed
    figures = json.loads(out.read_text())
    assert [row["layer"] for row in figures["layers"]] == [0, 1]
    # The package's residual stream is rotated, the reference's is not: compared in one basis the layers agree to
    # well above 10 dB (compared raw, two different bases would give about 0 dB).
    assert all(row["normed_sqnr_db"] > 10 for row in figures["layers"])
    assert figures["vs_reference"]["top1_agreement"] >= 0.6
    assert 0.8 < figures["vs_reference"]["perplexity_ratio"] < 1.25


def test_verify_against_itself_is_exact(packages, capsys):
    _, float_static = packages
    from edgeinfer.verify import verify

    result = verify(float_static, float_static, positions=24)
    assert result["vs_reference"]["top1_agreement"] == 1.0 and result["vs_reference"]["max_abs_logit_gap"] == 0.0


def test_verify_refuses_what_it_cannot_compare(packages, preset_pkg, tmp_path, capsys):
    qdq, _ = packages
    assert main(["verify", str(preset_pkg)]) == 2  # a cpu package
    assert main(["verify", str(qdq), "--positions", "100000"]) == 2
    assert main(["verify", str(qdq), "--text", str(tmp_path / "missing.txt")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgeinfer: error:")]
    assert len(errors) == 3 and "qnn packages" in errors[0] and "--positions" in errors[1] and "--text" in errors[2]


def test_a_qnn_package_runs_on_the_cpu_ep(packages, capsys):
    qdq, _ = packages
    model = edgeinfer.load(qdq, device="cpu")
    result = model.generate("Hi", max_new_tokens=6, sampling=GREEDY)
    assert len(result.token_ids) == 6
    assert main(["run", str(qdq), "Hi", "--device", "cpu", "--max-new-tokens", "4", "--temperature", "0"]) == 0


def test_a_cpu_package_still_refuses_other_devices(preset_pkg, capsys):
    assert main(["run", str(preset_pkg), "Hi", "--device", "qnn"]) == 2
    error = capsys.readouterr().err
    assert ("exported for cpu" if QNN.ok else "not available") in error


@pytest.mark.qnn
@pytest.mark.skipif(not QNN.ok, reason=f"qnn backend not available: {QNN}")
def test_verify_on_the_npu_compares_it_with_the_cpu_ep(packages, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    from edgeinfer.verify import format_report, verify

    qdq, reference = packages
    result = verify(qdq, reference, positions=32, device="qnn")
    assert result["device_vs_cpu_ep"]["top1_agreement"] >= 0.9 and result["device_vs_cpu_ep"]["logits_sqnr_db"] > 25
    # The NPU's own distance from the float reference, beside the CPU EP's (both run the same quantized graphs)
    on_npu, on_cpu = result["device_vs_reference"], result["vs_reference"]
    assert abs(on_npu["logits_sqnr_db"] - on_cpu["logits_sqnr_db"]) < 3
    assert f"package (qnn) vs {reference}" in format_report(result)
