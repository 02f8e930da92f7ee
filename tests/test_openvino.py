"""The openvino target: static graphs with MatMulNBits weights on OpenVINO (its CPU device here), against the CPU EP on
the same package, so a difference is OpenVINO's and not quantization's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.backends.openvino import BlobCache
from edgeinfer.cli import main
from edgeinfer.errors import BackendError
from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks, quantize_blocks_float_zero
from edgeinfer.package import load_manifest, sha256_of
from edgeinfer.sampler import GREEDY

from .conftest import export_tiny

OPENVINO = get_backend("openvino:cpu").availability()
needs_openvino = pytest.mark.skipif(not OPENVINO.ok, reason=f"openvino backend not available: {OPENVINO}")

CHUNK = 16


@pytest.fixture(scope="module")
def ov_pkg(tmp_path_factory) -> Path:
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("openvino") / "tiny-openvino", target="openvino",
                       prefill_chunk=CHUNK)


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "openvino"


def test_float_zero_points_keep_a_q4k_grid_exactly():
    """Blocks whose values are d*q - m (a GGUF Q4_K sub-block) come back exactly; integer zero points move them."""
    rng = np.random.default_rng(0)
    d, m = rng.uniform(0.01, 0.02, (64, 8, 1)), rng.uniform(0, 0.1, (64, 8, 1))
    q = rng.integers(0, 16, (64, 8, 32))
    q[..., 0], q[..., 1] = 0, 15  # each sub-block reaches both ends of its grid
    weight = (d * q - m).reshape(64, 256).astype(np.float32)
    exact = np.abs(dequantize_blocks(quantize_blocks_float_zero(weight, 32), 256) - weight).max()
    rounded = np.abs(dequantize_blocks(quantize_blocks(weight, 32, symmetric=False), 256) - weight).max()
    assert exact < 1e-6 < 1e-3 < rounded


def test_openvino_package_is_static_with_4bit_blocks(ov_pkg):
    import onnx

    manifest = load_manifest(ov_pkg)
    assert manifest.target == "openvino" and manifest.graph_flavour == "static"
    assert manifest.kv_cache["dtype"] == "float32" and manifest.graphs["quantization"]["block_size"] == 32
    model = onnx.load(str(ov_pkg / "decode.onnx"), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" in ops and not ops & {"GroupQueryAttention", "QuantizeLinear", "DequantizeLinear"}
    assert {n.domain for n in model.graph.node} <= {"", "com.microsoft"}


@needs_openvino
def test_every_node_on_openvino(ov_pkg, private_cache):
    """CPU EP fallback is off by default (a node OpenVINO refused would fail the load); the assignment says so too."""
    model = edgeinfer.load(ov_pkg, device="openvino:cpu")
    sessions = model.engine.sessions_for(model.manifest.context_length)
    assert len(sessions["prefill"]) == len(sessions["decode"]) == 1
    assignment = model.backend.last_assignment
    assert assignment["openvino_share"] == 1.0 and assignment["total_nodes"] > 50 and not assignment["cpu_ops"]


@needs_openvino
def test_greedy_tokens_equal_cpu_ep_on_the_same_package(ov_pkg, private_cache):
    """Free-running greedy on both, prompts of one padded chunk and of two: OpenVINO's CPU device in f32 follows
    the CPU EP to ~1e-6, far below the gaps between random weights' top logits."""
    on_openvino = edgeinfer.load(ov_pkg, device="openvino")
    on_cpu = edgeinfer.load(ov_pkg, device="cpu")
    for length in (5, 2 * CHUNK + 3):
        prompt = np.random.default_rng(length).integers(0, 256, size=length).tolist()
        ours, reference = on_openvino.generator(GREEDY), on_cpu.generator(GREEDY)
        ours.append(prompt)
        reference.append(prompt)
        assert np.abs(ours.logits - reference.logits).max() < 1e-3
        assert ours.extend(24) == reference.extend(24)


@needs_openvino
def test_compiled_blobs_are_reused_and_a_changed_blob_is_compiled_again(ov_pkg, private_cache):
    edgeinfer.load(ov_pkg, device="openvino").engine.sessions_for(256)
    folders = sorted(p for p in private_cache.iterdir() if p.is_dir())
    assert len(folders) == 2  # prefill and decode
    blobs = {f: [b for b in f.iterdir() if b.name != BlobCache.STAMP] for f in folders}
    assert all(len(b) == 1 for b in blobs.values())
    stamps = {f: json.loads((f / BlobCache.STAMP).read_text()) for f in folders}
    first = {f: b[0].stat().st_mtime_ns for f, b in blobs.items()}

    reloaded = edgeinfer.load(ov_pkg, device="openvino")  # current stamps: OpenVINO imports the blobs
    assert {f: b[0].stat().st_mtime_ns for f, b in blobs.items()} == first
    tokens = reloaded.generate("Hello", max_new_tokens=6, sampling=GREEDY, ignore_eos=True).token_ids

    victim = folders[0]
    blob = blobs[victim][0]
    damaged = blob.read_bytes()[:-16] + b"\0" * 16
    blob.write_bytes(damaged)  # a blob that no longer matches its stamp
    again = edgeinfer.load(ov_pkg, device="openvino")
    # Compiled anew (OpenVINO's blobs are not byte-identical between compiles) and stamped with what is there now.
    rewritten = [b for b in victim.iterdir() if b.name != BlobCache.STAMP]
    assert len(rewritten) == 1 and rewritten[0].read_bytes() != damaged
    assert json.loads((victim / BlobCache.STAMP).read_text())["sha256"] == {rewritten[0].name: sha256_of(rewritten[0])}
    assert json.loads((folders[1] / BlobCache.STAMP).read_text()) == stamps[folders[1]]  # the other one kept
    assert again.generate("Hello", max_new_tokens=6, sampling=GREEDY, ignore_eos=True).token_ids == tokens


@needs_openvino
def test_a_bad_device_name_is_refused_in_one_line(ov_pkg, capsys):
    assert main(["run", str(ov_pkg), "hi", "--device", "openvino:xpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "openvino:xpu" not in err.split("choose")[1:] and "openvino:npu" in err
    with pytest.raises(BackendError, match="unknown openvino device 'xpu'"):
        get_backend("openvino:xpu")
    with pytest.raises(BackendError, match="no sub-devices"):
        get_backend("cpu:fast")


@needs_openvino
def test_a_device_openvino_does_not_offer_says_why_and_the_fix():
    offered = get_backend("openvino:cpu").ep_device().ep_metadata
    assert offered["ov_device"] == "CPU"
    for device in ("npu", "gpu"):
        backend = get_backend(f"openvino:{device}")
        if backend.ep_device() is None:  # not on this machine: the reason names the device and the driver
            status = backend.availability()
            assert not status.ok and device.upper() in status.reason and "driver" in status.fix or "runtime" in status.fix
            with pytest.raises(BackendError, match=device.upper()):
                edgeinfer.load(Path("unused"), device=f"openvino:{device}")


@needs_openvino
def test_the_cpu_package_splits_on_openvino_and_fallback_off_names_the_ops(tmp_path, private_cache):
    """Why a target of its own: the cpu package's GroupQueryAttention stays on the CPU EP; with fallback off the
    error says which ops, in one line."""
    cpu_pkg = export_tiny("preset:tiny-qwen2", tmp_path / "tiny-cpu")
    backend = get_backend("openvino:cpu")
    with pytest.raises(BackendError, match="GroupQueryAttention") as error:
        backend.create_session(str(cpu_pkg / "model.onnx"), BackendOptions())
    assert "\n" not in str(error.value)


@needs_openvino
@pytest.mark.parametrize("family", ["gemma3", "phi4-mini", "smollm3"])
def test_families_static_graph_features_run_on_openvino(family, tmp_path, private_cache):
    """The openvino graph's own pieces (MatMulNBits linears, rotate-half RoPE) under the families' graph differences:
    Gemma 3's sandwich norms, windows and q/k norms (prompt longer than the window), Phi-4-mini's partial rotary,
    SmolLM3's NoPE layers. OpenVINO follows the CPU EP on the same package, prefill and 8 decode steps. Both quantize
    MatMulNBits' activations to int8 in blocks of 32 (the CPU EP's accuracy_level 4, OpenVINO's dynamic quantization):
    decode agrees to ~1e-6; a 16-row prefill on phi4-mini's peaky weights by 4.4e-3 (with OpenVINO's dynamic
    quantization off, every step parts by ~1e-2: the CPU EP's int8 rounding is what it then misses)."""
    from .family_checkpoints import make_family_checkpoint

    pkg = export_tiny(make_family_checkpoint(tmp_path / family, family), tmp_path / "pkg", target="openvino",
                      prefill_chunk=CHUNK)
    prompt = np.random.default_rng(1).integers(0, 256, size=20).tolist()
    ours, reference = (edgeinfer.load(pkg, device=d).generator(GREEDY) for d in ("openvino", "cpu"))
    ours.append(prompt)
    reference.append(prompt)
    assert np.abs(ours.logits - reference.logits).max() < 1e-2
    for _ in range(8):
        token = int(np.argmax(reference.logits))
        ours.append([token])
        reference.append([token])
        assert np.abs(ours.logits - reference.logits).max() < 1e-4


@needs_openvino
def test_a_float_openvino_package_loads_back_from_the_blob_cache(tmp_path, private_cache):
    """fp32 packages take the rotate-half RoPE too: a second load (from OpenVINO's cache) gives the same logits."""
    pkg = export_tiny("preset:tiny-qwen2", tmp_path / "fp32", target="openvino", precision="fp32", prefill_chunk=CHUNK)
    prompt = np.random.default_rng(3).integers(0, 256, size=7).tolist()
    rows = []
    for _ in range(2):
        generator = edgeinfer.load(pkg, device="openvino").generator(GREEDY)
        generator.append(prompt)
        generator.append([int(np.argmax(generator.logits))])
        rows.append(generator.logits.copy())
    assert any(private_cache.rglob("*.blob"))
    assert np.abs(rows[0] - rows[1]).max() < 1e-5
