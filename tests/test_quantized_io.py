"""uint16 KV-cache I/O of W4A16 qnn packages: the host keeps the cache as the graphs read and write it.

The reference is the same package with float cache I/O put back (a QuantizeLinear before each past input, a
DequantizeLinear after each new output, same scales): the graphs quantize the same values with the same scale, so
the logits must agree almost bit for bit. Runs on the CPU EP; tests/test_qnn.py runs the package on the HTP.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.errors import PackageError
from edgeinfer.export.static_graph import layer_parts
from edgeinfer.export.presets import PRESETS
from edgeinfer.generator import Generator
from edgeinfer.graph_contract import cache_slot_of, static_io, static_step_bytes
from edgeinfer.package import load_package
from edgeinfer.sampler import GREEDY
from edgeinfer.static_runner import StaticEngine

from .conftest import STATIC_CHUNK as CHUNK, export_tiny
from .test_reliability import copy_package, one_line, rewrite_manifest



@pytest.fixture
def packages(static_packages) -> dict[str, Path]:
    return static_packages


def cache_io_types(graph: Path) -> set[int]:
    model = onnx.load(str(graph), load_external_data=False)
    return {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output) if cache_slot_of(v.name)}


def with_float_cache_io(package: Path, out: Path) -> Path:
    """PACKAGE with float32 cache I/O around the very same graphs: Q before each past input's DequantizeLinear, DQ
    after each new output's QuantizeLinear, reading the scale and zero point initializers those nodes read."""
    copy_package(package, out)
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p["file"] for role in ("prefill", "decode") for p in manifest["graphs"][role]["parts"]}
    for file in files:
        model = onnx.load(str(out / file), load_external_data=False)
        graph = model.graph
        first, last = [], []
        for value in graph.input:
            if cache_slot_of(value.name):
                readers = [n for n in graph.node if value.name in n.input]
                quantized = f"{value.name}_QuantizeLinear_Output"
                for node in readers:
                    node.input[0] = quantized
                first.append(helper.make_node("QuantizeLinear", [value.name, *readers[0].input[1:3]], [quantized]))
                value.type.tensor_type.elem_type = TensorProto.FLOAT
        for value in graph.output:
            if cache_slot_of(value.name):
                writer = next(n for n in graph.node if value.name in n.output)
                quantized = f"{value.name}_QuantizeLinear_Output"
                for node in graph.node:
                    node.input[:] = [quantized if x == value.name else x for x in node.input]
                writer.output[0] = quantized
                last.append(helper.make_node("DequantizeLinear", [quantized, *writer.input[1:3]], [value.name]))
                value.type.tensor_type.elem_type = TensorProto.FLOAT
        nodes = [*first, *graph.node, *last]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(out / file))
        onnx.checker.check_model(str(out / file), full_check=True)

    def float_io(m):
        m["kv_cache"]["dtype"] = "float32"
        del m["graphs"]["host"]["kv_cache"]

    rewrite_manifest(out, float_io)
    return out


def cpu_generator(package: Path, optimization: str = "all") -> Generator:
    loaded = load_package(package)
    engine = StaticEngine(get_backend("cpu"), loaded, BackendOptions(graph_optimization=optimization))
    return Generator(engine.new_runner(), loaded.manifest.spec.vocab_size, GREEDY)


def test_cache_io_is_uint16_in_w4a16_and_float32_in_fp32(packages):
    for name, dtype, onnx_type in (("w4a16", "uint16", TensorProto.UINT16), ("fp32", "float32", TensorProto.FLOAT)):
        manifest = load_package(packages[name]).manifest
        assert manifest.kv_cache["dtype"] == dtype
        for role in ("prefill", "decode"):
            assert cache_io_types(packages[name] / manifest.graphs[role]["parts"][0]["file"]) == {onnx_type}
    manifest = load_package(packages["w4a16"]).manifest
    encoding = manifest.graphs["host"]["kv_cache"]
    assert encoding["dtype"] == "uint16" and sorted(encoding["scale"]) == ["key.0", "key.1", "value.0", "value.1"]
    assert "kv_cache" not in load_package(packages["fp32"]).manifest.graphs["host"]
    # One scale per slot in every role: the scale initializers of past and new, prefill and decode, are one value.
    for role in ("prefill", "decode"):
        model = onnx.load(str(packages["w4a16"] / manifest.graphs[role]["parts"][0]["file"]), load_external_data=False)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if not i.external_data}
        for slot, scale in encoding["scale"].items():
            assert inits[f"past_{slot}_scale"] == inits[f"new_{slot}_scale"] == np.float32(scale)
            assert inits[f"past_{slot}_zero_point"] == inits[f"new_{slot}_zero_point"] == encoding["zero_point"][slot]
    # Empty slots hold the quantized zero, and the runner's cache is what the graphs read.
    arrays = cpu_generator(packages["w4a16"]).runner.cache_arrays()
    assert [a.dtype for a in arrays] == [np.uint16] * 4
    assert [int(a[0, 0, 0, 0]) for a in arrays] == [encoding["zero_point"][s] for s in ("key.0", "value.0", "key.1", "value.1")]


def teacher_forced_gaps(ours: Generator, theirs: Generator, steps: int = 12) -> list[float]:
    ids = np.random.default_rng(4).integers(0, 256, size=40).tolist()  # three prefill chunks, the last padded
    ours.append(ids)
    theirs.append(ids)
    gaps = []
    for _ in range(steps):  # decode steps: the rows the graphs wrote are read back by them
        gaps.append(float(np.abs(ours.logits - theirs.logits).max()))
        token = theirs.next_token()
        ours.append([token])
        theirs.append([token])
    return gaps


def test_uint16_io_gives_the_logits_of_float_io_on_the_same_graphs(packages, tmp_path):
    """Exact as the graphs define them (onnxruntime's graph optimizations off). With them on, the CPU EP fuses Q/DQ
    differently around a float output (the DQ of new_<slot> folds into its Q at the basic level, leaving values off
    the uint16 grid); its fusions move either package ~0.004 from the unfused graph, so they may differ by as much."""
    reference = with_float_cache_io(packages["w4a16"], tmp_path / "float-io")
    ours, theirs = cpu_generator(packages["w4a16"], "disable"), cpu_generator(reference, "disable")
    exact = teacher_forced_gaps(ours, theirs)
    encoding = load_package(packages["w4a16"]).manifest.graphs["host"]["kv_cache"]
    for slot, q, f in zip(("key.0", "value.0", "key.1", "value.1"), ours.runner.cache_arrays(), theirs.runner.cache_arrays()):
        dequantized = (q.astype(np.float32) - encoding["zero_point"][slot]) * np.float32(encoding["scale"][slot])
        np.testing.assert_allclose(dequantized, f, rtol=0, atol=1e-7)  # the float host held the very same grid values
    fused = teacher_forced_gaps(cpu_generator(packages["w4a16"]), cpu_generator(reference))
    print(f"uint16 vs float cache I/O, same graphs: max logit gap {max(exact):.1e} unoptimized, {max(fused):.1e} "
          f"with the CPU EP's optimizations, over {len(exact)} steps")
    assert max(exact) < 1e-6
    assert max(fused) < 0.02


def test_a_graph_whose_cache_io_disagrees_with_the_manifest_is_refused(packages, tmp_path):
    float_io = with_float_cache_io(packages["w4a16"], tmp_path / "float-io")
    manifest = json.loads((packages["w4a16"] / "manifest.json").read_text())
    rewrite_manifest(float_io, lambda m: m.update(kv_cache=manifest["kv_cache"], graphs=manifest["graphs"]))
    with pytest.raises(PackageError, match="past_key.0 is tensor.float., the manifest's kv_cache says uint16") as caught:
        cpu_generator(float_io)
    one_line(caught.value)


def set_encoding(key, value):
    def change(m):
        m["graphs"]["host"]["kv_cache"][key] = value
    return change


def set_slot(key, slot, value):
    def change(m):
        m["graphs"]["host"]["kv_cache"][key][slot] = value
    return change


def drop_encoding(m):
    del m["graphs"]["host"]["kv_cache"]


CRAFTED = {
    "bad dtype": (set_encoding("dtype", "float16"), "must give the dtype uint16"),
    "nan scale": (set_slot("scale", "key.0", math.nan), "finite positive"),
    "infinite scale": (set_slot("scale", "value.1", math.inf), "finite positive"),
    "negative scale": (set_slot("scale", "key.1", -0.5), "finite positive"),
    "string scale": (set_slot("scale", "key.1", "0.5"), "finite positive"),
    "zero point too large": (set_slot("zero_point", "key.0", 70000), "0..65535"),
    "fractional zero point": (set_slot("zero_point", "key.0", 1.5), "0..65535"),
    "missing slot": (lambda m: m["graphs"]["host"]["kv_cache"]["scale"].pop("value.1"), "every cache slot"),
    "extra slot": (set_slot("zero_point", "key.9", 0), "every cache slot"),
    "no encoding": (drop_encoding, "must give the dtype uint16"),
    "uint8 cache": (lambda m: m["kv_cache"].update(dtype="uint8"), "kv_cache dtype 'uint8'"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_kv_encoding_is_refused_in_one_line(packages, tmp_path, case):
    change, message = CRAFTED[case]
    folder = copy_package(packages["w4a16"], tmp_path / "pkg")
    rewrite_manifest(folder, change)
    with pytest.raises(PackageError, match=message) as caught:
        load_package(folder)
    assert "re-export" in one_line(caught.value)


def test_a_float_package_with_an_encoding_is_refused(packages, tmp_path):
    encoding = json.loads((packages["w4a16"] / "manifest.json").read_text())["graphs"]["host"]["kv_cache"]
    folder = copy_package(packages["fp32"], tmp_path / "pkg")
    rewrite_manifest(folder, lambda m: m["graphs"]["host"].update(kv_cache=encoding))
    with pytest.raises(PackageError, match="float32 cache, which has none") as caught:
        load_package(folder)
    one_line(caught.value)


def test_decode_step_bytes(packages):
    """Tiny preset (context 256, 2 layers, 2 kv heads of 16): the cache is most of what a decode step moves."""
    moved = {}
    for name in ("w4a16", "fp32"):
        manifest = load_package(packages[name]).manifest
        moved[name] = static_step_bytes(manifest.graphs, manifest.spec, manifest.context_length)
    cache_f32 = 2 * 2 * (2 * 256 * 16 + 2 * 1 * 16) * 4  # layers x kinds x (past + new rows) x float32
    assert moved["fp32"]["cache"] == cache_f32 and moved["w4a16"]["cache"] == cache_f32 // 2
    assert moved["fp32"]["total"] - moved["fp32"]["cache"] == moved["w4a16"]["total"] - moved["w4a16"]["cache"]


def test_decode_step_bytes_of_the_1_5b_shape():
    """DeepSeek-R1-Distill-Qwen-1.5B (28 layers, 2 kv heads of 128) at a context of 4096, from its manifest's shape."""
    spec = PRESETS["deepseek-r1-distill-qwen-1.5b"].spec
    parts = layer_parts(spec, "w4a16")
    graphs = {"decode": {"tokens": 1, "parts": [static_io(p, k == 0, k == len(parts) - 1) for k, p in enumerate(parts)]}}
    float_io = static_step_bytes({**graphs, "host": {}}, spec, 4096)
    uint16_io = static_step_bytes({**graphs, "host": {"kv_cache": {"dtype": "uint16"}}}, spec, 4096)
    print(f"1.5B decode step at 4096: float32 cache I/O {float_io}, uint16 {uint16_io}")
    assert float_io["cache"] == 28 * 2 * 2 * (4096 + 1) * 128 * 4 == 234_938_368
    assert uint16_io["cache"] == float_io["cache"] // 2


def test_the_rewrite_refuses_graphs_it_does_not_know(packages, tmp_path, monkeypatch):
    """A float graph has no Q/DQ at its boundary; untied calibration ranges give past and new different scales."""
    import shutil

    from edgeinfer.errors import ExportError
    from edgeinfer.export import qdq
    from edgeinfer.export.quantized_io import quantize_cache_io

    graph = tmp_path / "decode.onnx"
    shutil.copy(packages["fp32"] / "decode.onnx", graph)
    with pytest.raises(ExportError, match="past_key.0 is read by .* not one QuantizeLinear") as caught:
        quantize_cache_io(graph)
    one_line(caught.value)
    monkeypatch.setattr(qdq, "tie_ranges", lambda *args: None)
    with pytest.raises(ExportError, match="ranges were not tied") as caught:
        export_tiny("preset:tiny-qwen2", tmp_path / "untied", target="qnn", prefill_chunk=CHUNK)
    one_line(caught.value)
