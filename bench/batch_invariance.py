"""Does a row's result depend on the rows run beside it? What exact speculative decoding needs from the CPU kernels.

    python bench/batch_invariance.py                 MatMulNBits alone: bits x block size x accuracy level
    python bench/batch_invariance.py PKG [--k 4]     a cpu package: one k-token verify run against k one-token runs

A verify run feeds k tokens in one run; plain decoding feeds them one at a time. Greedy speculation gives plain
decoding's tokens exactly only where each row's logits are the same bits either way. The first form runs one
MatMulNBits node (random weights, onnxruntime's own quantizer) on M = 2, 4, 8 rows and compares each row with the same
row run alone. The second adds every layer-0 node's output (and the logits) as graph outputs of a copy of PKG's graph
beside it, prefills a prompt, then runs its last k tokens both ways: the first node whose rows differ is where
invariance breaks. Prints max |difference| per node and row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 1536, 1024
# Ops of the dynamic graph whose first output is a float activation (others compute shapes or constants).
FLOAT_OPS = {"MatMulNBits", "GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
             "MatMul", "Add", "Mul", "Sigmoid", "Concat", "Split", "ReduceSum", "Softmax"}
PROMPT = [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13, 576, 5562, 374, 3974, 13, 1205, 3974, 13876, 38835]


def matmul_nbits_table() -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, K)).astype(np.float32)
    print("| bits | block | accuracy level | max abs difference, M = 2 / 4 / 8 |\n|---|---|---|---|")
    for bits in (4, 8):
        for block in (16, 32, 64, 128):
            for level in (0, 4):
                graph = helper.make_graph(
                    [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
                    [numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w")])
                quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                                 block_size=block, is_symmetric=False, accuracy_level=level, bits=bits)
                quantizer.process()
                session = ort.InferenceSession(quantizer.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
                alone = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(8)])
                diffs = [float(np.abs(session.run(None, {"x": x[:m]})[0] - alone[:m]).max()) for m in (2, 4, 8)]
                print(f"| {bits} | {block} | {level} | {' / '.join(f'{d:.1e}' for d in diffs)} |")


def package_probe(package: Path, k: int) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    model = onnx.load(str(package / manifest["graphs"]["decoder"]["file"]), load_external_data=False)
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    listed = {o.name for o in graph.output}
    for node in graph.node:
        layer0 = node.name.startswith("model.layers.0.") or node.name in ("final_norm", "last_rows")
        if layer0 and node.op_type in FLOAT_OPS and node.input and node.input[0] not in constants and node.output[0] not in listed:
            graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    with tempfile.NamedTemporaryFile(suffix=".onnx", dir=package) as probe:  # beside the weights it points at
        onnx.save(model, probe.name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(probe.name, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    kv = manifest["kv_cache"]
    rows_layout = kv["layout"] == "SH"
    empty = (0, kv["num_kv_heads"] * kv["head_dim"]) if rows_layout else (1, kv["num_kv_heads"], kv["length"] + kv.get("spare_rows", 0), kv["head_dim"])
    past_names = [n for n in inputs if n.startswith("past_key_values.")]

    def run(tokens: list[int], total: int, past: dict, rows: int) -> tuple[dict, dict]:
        feeds = {"input_ids": np.array([tokens], np.int64), "seqlens_k": np.array([total - 1], np.int32),
                 "total_sequence_length": np.array(total, np.int32), **past}
        if "logits_start" in inputs:
            feeds["logits_start"] = np.array([-rows], np.int64)
        elif "logits_rows" in inputs:  # cpu packages of 2026-12-01
            feeds["logits_rows"] = np.array([rows], np.int64)
        out = dict(zip(names, session.run(None, feeds)))
        present = {p: out[p.replace("past_key_values", "present")] for p in past_names}
        if rows_layout:
            present = {p: np.concatenate([past[p], present[p]]) for p in past_names}
        return out, present

    prompt = [t % manifest["architecture"]["vocab_size"] for t in PROMPT]  # tiny presets have small vocabularies
    head = prompt[:-k]
    _, cache = run(head, len(head), {p: np.zeros(empty, np.float32) for p in past_names}, 1)
    together, _ = run(prompt[-k:], len(prompt), {p: v.copy() for p, v in cache.items()}, k)
    alone, past = [], {p: v.copy() for p, v in cache.items()}
    for i in range(k):
        out, past = run([prompt[len(head) + i]], len(head) + i + 1, past, 1)
        alone.append(out)
    print(f"{package}: max |k-row run - one-row runs| per row (k = {k})")
    for name in names:
        if name.startswith("present."):
            continue
        rows = together[name]
        if rows.ndim < 2 or rows.shape[-2] != k:
            continue
        diffs = [float(np.abs(rows[..., i, :] - alone[i][name][..., -1, :]).max()) for i in range(k)]
        print(f"  {name[:72]:72s} {' '.join(f'{d:.1e}' for d in diffs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, nargs="?")
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()
    if args.package is None:
        matmul_nbits_table()
    else:
        package_probe(args.package, args.k)


if __name__ == "__main__":
    sys.exit(main())
