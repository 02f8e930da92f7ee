"""Untrusted packages: a load opens only files its manifest lists, inside the package, never through a link.

Packages come from strangers. Each crafted package below must end in one clear PackageError, and nothing
outside the package may be opened (watched with an audit hook on `open`) or changed (hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.errors import EdgeInferError, PackageError
from edgeinfer.external_data import external_data_files
from edgeinfer.package import describe_files, load_package
from edgeinfer.static_runner import StaticEngine

from .conftest import export_tiny
from .test_reliability import copy_package, fast, one_line, rewrite_manifest, set_key

OPENED: list[str] | None = None  # paths passed to open() while a test watches


def _audit(event: str, args) -> None:
    if OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # process-wide and permanent: it records only while OPENED is a list


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


class Watch:
    """Records every path opened inside the block; `outside(package)` lists those under ROOT but not in PACKAGE."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def __enter__(self):
        global OPENED
        OPENED = []
        return self

    def __exit__(self, *exc):
        global OPENED
        self.opened, OPENED = OPENED, None

    def outside(self, package: Path, extra: tuple[Path, ...] = ()) -> list[str]:
        package = package.resolve()
        bad = []
        for name in self.opened:
            path = Path(os.path.abspath(name))
            watched = path.is_relative_to(self.root) or any(path == p for p in extra)
            inside = path.parent == package  # only files directly in the package folder
            if watched and not inside:
                bad.append(name)
        return bad


@pytest.fixture(scope="module")
def static_pkg(tmp_path_factory) -> Path:
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("static") / "tiny-qnn", target="qnn", prefill_chunk=32)


@pytest.fixture
def arena(tmp_path) -> tuple[Path, Path]:
    """A workspace with an `outside` folder of secrets next to where the crafted package will sit."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "credentials.json").write_text(json.dumps({"api_token": "hunter2", "eos_token": "hunter2"}))
    (outside / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    return tmp_path, outside


def load_static_on_cpu(folder: Path):
    """What `--device qnn` does up to the device: the same engine and file gate, on the CPU EP."""
    return StaticEngine(get_backend("cpu"), load_package(folder), BackendOptions())


# -- one rule: listed, plain, inside, no links -----------------------------------------------------------------------

def test_a_listed_file_that_is_a_link_is_refused(preset_pkg, arena):
    root, outside = arena
    folder = copy_package(preset_pkg, root / "pkg")
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").symlink_to(outside / "credentials.json")
    rewrite_manifest(folder, lambda m: None)  # the manifest's hashes now vouch for the link's target
    before = tree_digest(outside)
    with Watch(root) as watch, pytest.raises(PackageError, match="is a link") as caught:
        edgeinfer.load(folder)
    one_line(caught.value)
    assert watch.outside(folder) == [] and tree_digest(outside) == before


def test_an_unlisted_tokenizer_config_linked_to_credentials_never_reaches_the_prompt(preset_pkg, arena):
    root, outside = arena
    folder = copy_package(preset_pkg, root / "pkg")
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").symlink_to(outside / "credentials.json")

    def unlist(manifest):
        del manifest["files"]["tokenizer_config.json"]

    rewrite_manifest(folder, unlist, rehash=False)
    with Watch(root) as watch, pytest.raises(PackageError, match="not a file it lists") as caught:
        edgeinfer.load(folder)
    one_line(caught.value)
    assert watch.outside(folder) == []


def test_graph_external_data_outside_or_unlisted_is_refused_before_onnxruntime(preset_pkg, arena):
    import onnx

    root, outside = arena
    shutil.copy(preset_pkg / "model.onnx.data", outside / "weights.data")
    for location in ("../outside/weights.data", str(outside / "weights.data"), "unlisted.data", "*/_ORT_MEM_ADDR_/*"):
        folder = copy_package(preset_pkg, root / f"pkg-{abs(hash(location))}")
        shutil.copy(preset_pkg / "model.onnx.data", folder / "unlisted.data")
        model = onnx.load(folder / "model.onnx", load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, folder / "model.onnx")
        rewrite_manifest(folder, lambda m: None)
        assert location in external_data_files(folder / "model.onnx")
        with Watch(root) as watch, pytest.raises(PackageError, match="not a file it lists") as caught:
            edgeinfer.load(folder)
        one_line(caught.value)
        assert watch.outside(folder) == []


def test_external_data_scanner_agrees_with_onnx(preset_pkg, static_pkg, tmp_path):
    """Locations in initializers, in Constant attributes and inside subgraphs, as onnx itself reads them."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors, convert_model_to_external_data

    for package in (preset_pkg, static_pkg):
        for name in json.loads((package / "manifest.json").read_text())["files"]:
            if name.endswith(".onnx"):
                model = onnx.load(package / name, load_external_data=False)
                expected = {e.value for t in _get_all_tensors(model) for e in t.external_data if e.key == "location"}
                assert external_data_files(package / name) == expected and expected

    def big(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ones((64, 64), np.float32), name)

    inner = helper.make_graph([helper.make_node("Constant", [], ["y"], value=big("c_inner"))], "inner", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])])
    outer = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=big("c_outer")),
         helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)],
        "outer", [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])], [big("w")])
    model = helper.make_model(outer)
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    onnx.save(model, tmp_path / "m.onnx")
    expected = {e.value for t in _get_all_tensors(onnx.load(tmp_path / "m.onnx", load_external_data=False))
                for e in t.external_data if e.key == "location"}
    assert external_data_files(tmp_path / "m.onnx") == expected and len(expected) == 3


@pytest.mark.parametrize("damage", [b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x3a\x05abc", b"\x0b" * 64])
def test_a_malformed_graph_file_is_one_clear_error(tmp_path, damage):
    (tmp_path / "m.onnx").write_bytes(damage)
    with pytest.raises(PackageError) as caught:
        external_data_files(tmp_path / "m.onnx")
    one_line(caught.value)


@pytest.mark.parametrize("field", ["part", "embeddings"])
@pytest.mark.parametrize("name", ["../outside/id_rsa", "ABSOLUTE", "..\\outside\\id_rsa", "C:id_rsa", "prefill.onnx:x",
                                  "sub/prefill.onnx", "unlisted.onnx"])
def test_static_parts_and_host_files_outside_the_package_are_refused(static_pkg, arena, field, name):
    root, outside = arena
    folder = copy_package(static_pkg, root / "pkg")
    shutil.copy(folder / "prefill.onnx", folder / "unlisted.onnx")
    name = str(outside / "id_rsa") if name == "ABSOLUTE" else name
    path = ("graphs", "decode", "parts", 0, "file") if field == "part" else ("graphs", "host", "embeddings", "file")
    rewrite_manifest(folder, set_key(*path, value=name))
    before = tree_digest(outside)
    with Watch(root) as watch, pytest.raises(PackageError) as caught:
        load_static_on_cpu(folder)
    one_line(caught.value)
    assert watch.outside(folder, (outside / "id_rsa",)) == [] and tree_digest(outside) == before


def test_an_object_array_for_embeddings_is_refused_not_unpickled(static_pkg, tmp_path):
    folder = copy_package(static_pkg, tmp_path / "pkg")
    np.save(folder / "embeddings.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    rewrite_manifest(folder, lambda m: None)
    with pytest.raises(PackageError, match="not a plain numeric array") as caught:
        load_static_on_cpu(folder)
    one_line(caught.value)


@pytest.mark.parametrize("case,change", [
    ("context 10^9", set_key("context_length", value=10**9)),
    ("layers 10^12", set_key("architecture", "num_layers", value=10**12)),
    ("vocab 10^10", set_key("architecture", "vocab_size", value=10**10)),
])
def test_sizes_in_a_manifest_are_bounded_before_allocating(preset_pkg, tmp_path, case, change):
    folder = copy_package(preset_pkg, tmp_path / "pkg")
    rewrite_manifest(folder, change)
    with pytest.raises(PackageError, match="above the") as caught:
        edgeinfer.load(folder)
    one_line(caught.value)


def test_a_kv_cache_larger_than_this_machine_is_refused_before_allocating(preset_pkg, tmp_path):
    def huge(manifest):
        for key in ("num_layers", "num_kv_heads", "head_dim"):
            manifest["architecture"][key] = manifest["kv_cache"][key] = 1024
        manifest["architecture"]["num_heads"] = 1024
        manifest["context_length"] = manifest["kv_cache"]["length"] = manifest["export_options"]["context_length"] = 2**20

    folder = copy_package(preset_pkg, tmp_path / "pkg")
    rewrite_manifest(folder, huge)
    with pytest.raises(PackageError, match="KV cache needs .* GiB") as caught:
        edgeinfer.load(folder)
    one_line(caught.value)


def test_an_oversized_manifest_is_refused_unread(preset_pkg, tmp_path):
    folder = copy_package(preset_pkg, tmp_path / "pkg")
    with open(folder / "manifest.json", "ab") as f:
        f.truncate(64 << 20)  # sparse: no disk used
    with pytest.raises(PackageError, match="more than a manifest holds"):
        edgeinfer.load(folder)


# -- the fuzz: any file field, any crafted name, zero opens outside ---------------------------------------------------

CRAFTED = ["..", ".", "", "../outside/credentials.json", "ABSOLUTE", "..\\outside\\credentials.json",
           "C:\\outside\\credentials.json", "\\\\server\\share\\x", "model.onnx/../model.onnx", "./model.onnx",
           "LINK", "unlisted.json", "model.onnx:stream", ".hidden", "model.onnx\x00.txt", "a" * 300]


@pytest.fixture(scope="module")
def fuzz_arena(preset_pkg, static_pkg, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-files")
    outside = root / "outside"
    outside.mkdir()
    (outside / "credentials.json").write_text(json.dumps({"api_token": "hunter2"}))
    packages = {}
    for kind, source in (("dynamic", preset_pkg), ("static", static_pkg)):
        folder = copy_package(source, root / kind)
        (folder / "LINK").symlink_to(outside / "credentials.json")
        shutil.copy(folder / "tokenizer_config.json", folder / "unlisted.json")
        packages[kind] = (folder, json.loads((folder / "manifest.json").read_text()))
    return root, outside, packages


FILE_FIELDS = {
    "dynamic": [("graphs", "decoder", "file"), ("files", "RENAME", "tokenizer.json"), ("files", "RENAME", "model.onnx.data"),
                ("files", "RENAME", "tokenizer_config.json")],
    "static": [("graphs", "prefill", "parts", 0, "file"), ("graphs", "decode", "parts", 0, "file"),
               ("graphs", "host", "embeddings", "file"), ("files", "RENAME", "prefill.onnx.data"),
               ("files", "RENAME", "embeddings.npy")],
}


@fast(60)
@given(data=st.data())
def test_fuzzed_file_fields_open_nothing_outside_the_package(fuzz_arena, data):
    root, outside, packages = fuzz_arena
    kind = data.draw(st.sampled_from(sorted(packages)))
    folder, original = packages[kind]
    field = data.draw(st.sampled_from(FILE_FIELDS[kind]))
    name = data.draw(st.sampled_from(CRAFTED))
    name = str(outside / "credentials.json") if name == "ABSOLUTE" else name
    manifest = json.loads(json.dumps(original))
    if field[1] == "RENAME":  # the files table itself lists the crafted name instead of a real one
        manifest["files"][name] = manifest["files"].pop(field[2])
        if name == "LINK":
            manifest["files"]["LINK"] = describe_files(folder, ["LINK"])["LINK"]
    else:
        node = manifest
        for key in field[:-1]:
            node = node[key]
        node[field[-1]] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before = tree_digest(outside)
    with Watch(root) as watch:
        try:
            if kind == "static":
                load_static_on_cpu(folder)
            else:
                edgeinfer.load(folder).generate("Hi", max_new_tokens=2)
        except EdgeInferError as exc:
            one_line(exc)
    assert watch.outside(folder, (outside / "credentials.json",)) == [], (field, name)
    assert tree_digest(outside) == before


def test_a_manifest_that_is_a_link_is_refused_unread(preset_pkg, arena):
    root, outside = arena
    folder = copy_package(preset_pkg, root / "pkg")
    shutil.move(folder / "manifest.json", outside / "manifest.json")
    (folder / "manifest.json").symlink_to(outside / "manifest.json")
    with Watch(root) as watch, pytest.raises(PackageError, match="is a link") as caught:
        edgeinfer.load(folder)
    one_line(caught.value)
    assert watch.outside(folder) == []
