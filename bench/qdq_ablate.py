"""Variants of a W4A16 qnn package for the CPU EP, to find which quantized tensors cost the accuracy.

    python bench/qdq_ablate.py PKG_QDQ OUT [--float-package PKG_FLOAT] [--float-weights RE] [--float-acts RE]

Every weight DequantizeLinear is folded into a float initializer (the CPU EP dequantizes int4 weights on every
run otherwise: ~3 s per decode step of a 2-layer model), which computes the same numbers. --float-weights puts
back PKG_FLOAT's original float weights for initializers whose name matches RE (weights-unquantized variant);
--float-acts removes the QuantizeLinear/DequantizeLinear pair of every activation whose name matches RE.
OUT is a package folder (graphs rewritten, other files hard-linked) that `edgeinfer verify OUT --reference PKG_FLOAT`
scores. --block B re-quantizes every int4 weight from PKG_FLOAT in blocks of B input rows (int4_blocks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    q, scale, zero = q.astype(np.float32), scale.astype(np.float32), zero.astype(np.float32)
    if scale.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def variant(src: Path, dst: Path, float_package: Path | None, float_weights: str | None, float_acts: str | None,
            ranges: dict[str, tuple[float, float]] | None = None, block: int = 0) -> None:
    import onnx
    from onnx import helper, numpy_helper

    from edgeinfer.export.int4_blocks import dequantize_int4_blocks, int4_blocks
    from edgeinfer.export.onnx_writer import GraphWriter

    manifest = json.loads((src / "manifest.json").read_text())
    if (block or float_weights) and (manifest["graphs"].get("quantization") or {}).get("rotation"):
        raise SystemExit(f"{src} has a rotated residual stream: its weights cannot be swapped for an unrotated "
                         "package's (export the QDQ package with rotate=False to ablate weights)")
    dst.mkdir(parents=True, exist_ok=True)
    graphs = [p for role in ("prefill", "decode") for p in manifest["graphs"][role]["parts"]]
    for item in src.iterdir():  # embeddings and tokenizer files, hard-linked (a package holds no symbolic links)
        if not item.name.endswith((".onnx", ".onnx.data")) and item.name != "manifest.json" and not (dst / item.name).exists():
            try:
                os.link(item, dst / item.name)
            except OSError:
                shutil.copyfile(item, dst / item.name)
    for name in [n for n in manifest["files"] if n.endswith((".onnx", ".onnx.data"))]:
        del manifest["files"][name]  # rewritten here: not checked against the source's sizes
    for part in graphs:
        model = onnx.load(str(src / part["file"]))
        originals, blocked = {}, {}
        if float_package and (float_weights or block):
            ref = onnx.load(str(float_package / part["file"]), load_external_data=False)
            originals = {i.name: i for i in ref.graph.initializer if re.search(float_weights or "^$", i.name)}
            blocked = {i.name: i for i in ref.graph.initializer if block and i.name not in originals}
        inits = {i.name: i for i in model.graph.initializer}
        writer = GraphWriter(dst / f"{part['file']}.data")
        nodes, renames = [], {}
        for node in model.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                base = node.input[0].removesuffix("_quantized")
                zero = inits.get(node.input[2]) if len(node.input) > 2 else None
                if base in originals:
                    array = numpy_helper.to_array(originals[base], base_dir=str(float_package))
                elif zero is not None and zero.data_type == onnx.TensorProto.INT4 and base in blocked:
                    w = numpy_helper.to_array(blocked[base], base_dir=str(float_package)).astype(np.float32)
                    array = dequantize_int4_blocks(*int4_blocks(w, block))
                else:
                    args = [numpy_helper.to_array(inits[n]) for n in node.input[:3]]
                    attributes = {a.name: a.i for a in node.attribute}
                    if attributes.get("block_size"):  # int4 blocks along the input rows, zero point 0
                        array = dequantize_int4_blocks(args[0], args[1])
                    else:
                        array = dequantize(*args, axis=attributes.get("axis", 1))
                writer.initializer(node.output[0], array.astype(np.float32))
                continue
            if float_acts and node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in inits:
                tensor = node.input[0] if node.op_type == "QuantizeLinear" else renames.get(node.input[0])
                if tensor is not None and re.search(float_acts, tensor):
                    renames[node.output[0]] = tensor
                    continue
            nodes.append(node)
        for node in nodes:  # consumers of a dropped pair read the float tensor
            for k, name in enumerate(node.input):
                while name in renames:
                    name = renames[name]
                node.input[k] = name
        for out in model.graph.output:  # a graph output keeps its name: an Identity from the float tensor
            if out.name in renames:
                source = renames.pop(out.name)
                while source in renames:
                    source = renames[source]
                nodes.append(helper.make_node("Identity", [source], [out.name], name=f"{out.name}/float"))
        kept = [numpy_helper.to_array(i) for i in model.graph.initializer]
        for pattern, (lo, hi) in (ranges or {}).items():  # uint16 activation ranges replaced (scale, zero point)
            index = {i.name: k for k, i in enumerate(model.graph.initializer)}
            for name in index:
                tensor = name.removesuffix("_scale")
                if name.endswith("_scale") and re.search(pattern, tensor) and tensor + "_zero_point" in index:
                    zero_at = index[tensor + "_zero_point"]
                    if kept[zero_at].dtype != np.uint16:
                        continue
                    scale = (hi - lo) / 65535
                    kept[index[name]] = np.array(scale, dtype=np.float32)
                    kept[zero_at] = np.array(round(-lo / scale), dtype=np.uint16)
        for init, array in zip(model.graph.initializer, kept):
            if not init.name.endswith("_quantized") or any(init.name == n.input[0] for n in nodes):
                writer.initializer(init.name, array)
        writer.nodes = nodes
        writer.inputs, writer.outputs = list(model.graph.input), list(model.graph.output)
        writer.save(dst / part["file"], producer="qdq_ablate")
        writer.close()
        part["data"] = f"{part['file']}.data"
        del model
    from edgeinfer.package import describe_files

    written = sorted({name for part in graphs for name in (part["file"], part["data"])})
    manifest["files"].update(describe_files(dst, written))  # the rewritten graphs, listed as the loader requires
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("qdq_package", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--float-package", type=Path)
    parser.add_argument("--float-weights")
    parser.add_argument("--float-acts")
    parser.add_argument("--block", type=int, default=0, help="int4 weights re-quantized from PKG_FLOAT in blocks of BLOCK input rows")
    parser.add_argument("--range", action="append", default=[], help="RE=LOW,HIGH: new uint16 range of matching activations")
    args = parser.parse_args()
    ranges = {r.rsplit("=", 1)[0]: tuple(map(float, r.rsplit("=", 1)[1].split(","))) for r in args.range}
    variant(args.qdq_package, args.out, args.float_package, args.float_weights, args.float_acts, ranges,
            args.block)


if __name__ == "__main__":
    main()
