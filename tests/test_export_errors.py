"""Bad export input gets one clear error; writes are atomic; packages are validated on load."""

from __future__ import annotations

import json
import shutil

import pytest

import edgeinfer
from edgeinfer.errors import ExportError, PackageError, SourceError
from edgeinfer.export.exporter import export
from edgeinfer.export.options import ExportOptions
from edgeinfer.export.open_source import open_source



def test_missing_path():
    with pytest.raises(SourceError, match="does not exist"):
        open_source("/nonexistent/model")


def test_folder_without_config(tmp_path):
    with pytest.raises(SourceError, match="no config.json"):
        open_source(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(SourceError, match="unsupported architecture"):
        open_source(str(tmp_path))


def test_truncated_safetensors(qwen2_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(qwen2_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        open_source(str(folder))


def test_truncated_gguf(qwen2_dir, tmp_path):
    from .gguf_fixtures import write_gguf_from_hf

    path = write_gguf_from_hf(qwen2_dir, tmp_path / "m.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="GGUF"):
        open_source(str(path))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SourceError, match="cannot download edgeinfer-test/no-such-model"):
        open_source("edgeinfer-test/no-such-model")


def test_unknown_preset():
    with pytest.raises(SourceError, match="unknown preset"):
        open_source("preset:gpt-17")


def test_existing_output_needs_force(qwen2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        export(str(qwen2_dir), out, ExportOptions(context_length=64), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="--force replaces only packages"):  # a user's folder is never deleted
        export(str(qwen2_dir), out, ExportOptions(context_length=64), force=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    export(str(qwen2_dir), out, ExportOptions(context_length=64), progress=False)
    export(str(qwen2_dir), out, ExportOptions(context_length=128), force=True, progress=False)  # a package is
    assert json.loads((out / "manifest.json").read_text())["context_length"] == 128


def test_failed_export_leaves_nothing(qwen2_dir, tmp_path, monkeypatch):
    from edgeinfer.export import dynamic_graph

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C midway

    monkeypatch.setattr(dynamic_graph.DynamicDecoderGraph, "_skip_norm", explode)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export(str(qwen2_dir), out, ExportOptions(context_length=64), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind either


def test_bad_options():
    with pytest.raises(ExportError, match="precision"):
        ExportOptions(precision="int3")
    with pytest.raises(ExportError, match="block size"):
        ExportOptions(block_size=48)
    with pytest.raises(ExportError, match="unknown attention"):
        ExportOptions(attention="flash")
    with pytest.raises(ExportError, match="grouped is for --target cpu"):
        ExportOptions(target="cuda", attention="grouped")
    assert ExportOptions().for_model(4096).attention == "gqa"
    assert ExportOptions(target="cuda").for_model(4096).attention == "gqa"


def test_context_beyond_the_model_is_refused(qwen2_dir, tmp_path):
    with pytest.raises(ExportError, match="exceeds"):
        export(str(qwen2_dir), tmp_path / "o", ExportOptions(context_length=100000), progress=False)


@pytest.fixture
def package_copy(qwen2_fp32, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(qwen2_fp32, copy)
    return copy


def test_manifest_describes_the_package(package_copy):
    manifest = json.loads((package_copy / "manifest.json").read_text())
    for key in ("architecture", "precision", "target", "context_length", "kv_cache", "graphs", "tokenizer",
                "export_options", "files", "edgeinfer_version"):
        assert key in manifest
    # the package's own graph and weights, its tokenizer, and onnxruntime-genai's view of it (genai_graph.py)
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
                                      "genai_config.json", "genai_model.onnx"}


def test_changed_file_is_refused(package_copy):
    data = bytearray((package_copy / "model.onnx.data").read_bytes())
    data[-1] ^= 0xFF
    (package_copy / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="sha256"):
        edgeinfer.load(package_copy)


def test_truncated_file_is_refused(package_copy):
    path = package_copy / "model.onnx.data"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(PackageError, match="bytes"):
        edgeinfer.load(package_copy, verify=False)


def test_missing_file_and_missing_manifest(package_copy, tmp_path):
    (package_copy / "tokenizer.json").unlink()
    with pytest.raises(PackageError, match="missing"):
        edgeinfer.load(package_copy)
    with pytest.raises(PackageError, match="not an edgeinfer package"):
        edgeinfer.load(tmp_path)
    with pytest.raises(PackageError, match="does not exist"):
        edgeinfer.load(tmp_path / "nothing")


def test_damaged_manifest_is_refused(package_copy):
    (package_copy / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="damaged"):
        edgeinfer.load(package_copy)
