"""Numerics of a qnn (static) package against its float twin and the dynamic fp32 package, on real text.

    python bench/qnn_numerics.py PKG_FLOAT [PKG_QDQ] --text FILE [--ref PKG_CPU32] [--positions 512] [--json OUT]

PKG_FLOAT is `--target qnn --precision fp32`, PKG_QDQ the `--target qnn` (W4A16 QDQ) export of the same weights,
PKG_CPU32 a `--target cpu --precision fp32 --all-logits` export (the dynamic graph that matches transformers).
All run on the CPU EP. The text is tokenized raw (no chat template); the first prefill chunk goes through the
prefill graph, then every further token through the decode graph (each static package keeps its own cache, so
errors accumulate as they would in generation), and each step's logits are scored:

- top-1 agreement and perplexity of each package against the reference (PKG_CPU32, else PKG_FLOAT);
- per layer, the SQNR (dB) of the QDQ package's residual stream against PKG_FLOAT's, over all scored positions,
  both raw (dominated by the few massive-activation channels) and after per-token RMS normalization (what the
  next layer's RMSNorm passes on);
- with --ranges, the widest calibrated uint16 activation ranges of the QDQ decode graph (scale * 65535).

The residual taps are extra graph outputs on a copy of each graph (`<file>.taps.onnx`, same weights file); the
logits come from the same (tapped) run. --no-taps scores the unchanged graphs, in case a tap changes how the
CPU EP fuses a QDQ group.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TAP = "model.layers.{i}.mlp_residual/out"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((test.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise)


def tap_names(graph_path: Path, layers: range) -> dict[int, str]:
    """Residual stream after each layer, as the graph's consumers see it (the DequantizeLinear output in QDQ)."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    produced = {out for node in model.graph.node for out in node.output}
    names = {}
    for i in layers:
        name = TAP.format(i=i)
        dq = f"{name}_DequantizeLinear_Output"
        names[i] = dq if dq in produced else name
    return {i: n for i, n in names.items() if n in produced}


def tapped_copy(graph_path: Path, names: list[str]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(graph_path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    path = graph_path.with_name(graph_path.stem + ".taps.onnx")
    onnx.save(model, str(path))  # initializers keep pointing at the original weights file
    return path


class TapSession:
    """Runs like an InferenceSession (`run(names, feed)`) and keeps the tapped tensors of each run."""

    def __init__(self, path: Path, taps: dict[int, str]):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.taps = taps
        self.seen: list[dict[int, np.ndarray]] = []

    def run(self, names, feed):
        out = self.session.run([*names, *self.taps.values()], feed)
        self.seen.append({i: a[0, -1].copy() for i, a in zip(self.taps, out[len(names):])})
        return out[: len(names)]


def static_run(package: Path, ids: list[int], prefill: int, taps: bool) -> tuple[np.ndarray, list[dict]]:
    """Logits after ids[:prefill] (prefill graph) and after each later token (decode graph); with TAPS, the
    residual stream of the last row after every layer, per step."""
    from edgeinfer.backends import BackendOptions, get_backend
    from edgeinfer.package import load_manifest, load_package
    from edgeinfer.static_runner import StaticEngine, StaticRunner

    manifest = load_manifest(package, verify=False)
    if taps:
        sessions = {}
        for role in ("prefill", "decode"):
            for part in manifest.graphs[role]["parts"]:
                names = tap_names(package / part["file"], range(*part["layers"]))
                sessions.setdefault(role, []).append(TapSession(tapped_copy(package / part["file"], list(names.values())), names))
        embeddings = np.load(package / manifest.graphs["host"]["embeddings"]["file"], mmap_mode="r")
        runner = StaticRunner(sessions, manifest.graphs, manifest.spec, manifest.context_length, embeddings)
    else:
        runner = StaticEngine(get_backend("cpu"), load_package(package, verify=False), BackendOptions()).new_runner()
        sessions = None
    rows = [runner.forward(np.array(ids[:prefill]), 0)]
    for pos in range(prefill, len(ids)):
        rows.append(runner.forward(np.array([ids[pos]]), pos))
    steps = []
    if sessions:
        decode = [s.seen for s in sessions["decode"]]
        prefill_seen = [s.seen[-1] for s in sessions["prefill"]]  # the last chunk's last row
        steps.append({k: v for d in prefill_seen for k, v in d.items()})
        for t in range(len(decode[0])):
            steps.append({k: v for part in decode for k, v in part[t].items()})
    return np.stack(rows), steps


def reference_rows(package: Path, ids: list[int], prefill: int, chunk: int = 128) -> np.ndarray:
    import edgeinfer

    runner = edgeinfer.load(package, verify=False).engine.new_runner()
    rows = np.concatenate([runner.forward(np.array(ids[i : i + chunk]), i, all_rows=True) for i in range(0, len(ids), chunk)])
    return rows[prefill - 1 :]


def scores(logits: np.ndarray, ref: np.ndarray, targets: np.ndarray) -> dict:
    n = len(targets)
    nll = lambda x: -log_softmax(x[:n].astype(np.float64))[np.arange(n), targets]  # noqa: E731
    ppl, ppl_ref = float(np.exp(nll(logits).mean())), float(np.exp(nll(ref).mean()))
    return {"top1_agreement": float(np.mean(logits.argmax(-1) == ref.argmax(-1))), "perplexity": ppl,
            "reference_perplexity": ppl_ref, "perplexity_ratio": ppl / ppl_ref,
            "logits_sqnr_db": sqnr_db(ref, logits)}


def layer_sqnr(float_steps: list[dict], qdq_steps: list[dict]) -> list[dict]:
    out = []
    for i in sorted(float_steps[0]):
        ref = np.stack([s[i] for s in float_steps]).astype(np.float64)
        test = np.stack([s[i] for s in qdq_steps]).astype(np.float64)
        rms = lambda x: x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)  # noqa: E731
        out.append({"layer": i, "sqnr_db": sqnr_db(ref, test), "normed_sqnr_db": sqnr_db(rms(ref), rms(test)),
                    "max_abs": float(np.abs(ref).max()), "median_abs": float(np.median(np.abs(ref)))})
    return out


def widest_ranges(package: Path, top: int) -> list[tuple[str, float, float]]:
    """(tensor, low, high) of the QDQ decode graph's uint16 activations, widest first."""
    import onnx
    from onnx import numpy_helper

    from edgeinfer.package import load_manifest

    manifest = load_manifest(package, verify=False)
    found = []
    for part in manifest.graphs["decode"]["parts"]:
        model = onnx.load(str(package / part["file"]), load_external_data=False)
        inits = {i.name: i for i in model.graph.initializer if not i.external_data}
        for node in model.graph.node:
            if node.op_type != "QuantizeLinear" or node.input[1] not in inits or len(node.input) < 3:
                continue
            zero = numpy_helper.to_array(inits[node.input[2]])
            if zero.dtype != np.uint16:
                continue
            scale = float(numpy_helper.to_array(inits[node.input[1]]))
            z = float(zero)
            found.append((node.input[0], -z * scale, (65535 - z) * scale))
    return sorted(found, key=lambda r: r[1] - r[2])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_package", type=Path)
    parser.add_argument("qdq_package", type=Path, nargs="?")
    parser.add_argument("--ref", type=Path, help="dynamic fp32 package exported with --all-logits")
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--positions", type=int, default=512, help="scored positions (decode steps + 1)")
    parser.add_argument("--prefill", type=int, default=0, help="tokens through the prefill graph (default: its chunk)")
    parser.add_argument("--prefix", default="", help="text put before FILE's, special tokens parsed: '<|im_start|>user\\n' "
                        "starts the text as every chat prompt does (the first token becomes the model's attention sink, "
                        "and its activations differ by orders of magnitude between tokens)")
    parser.add_argument("--no-taps", action="store_true", help="skip the per-layer SQNR pass")
    parser.add_argument("--ranges", type=int, default=0, help="print the N widest uint16 activation ranges")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgeinfer.package import load_package
    from edgeinfer.tokenizer import TextTokenizer

    package = load_package(args.float_package, verify=False)
    manifest = package.manifest
    tokenizer = TextTokenizer.from_package(package, manifest.tokenizer["bos_token_id"], False)
    prefill = args.prefill or manifest.graphs["prefill"]["tokens"]
    prefix = tokenizer.encode(args.prefix.encode().decode("unicode_escape")) if args.prefix else []
    ids = (prefix + tokenizer.encode(args.text.read_text(encoding="utf-8"), parse_special=False))[: prefill + args.positions]
    if len(ids) < prefill + args.positions:
        raise SystemExit(f"{args.text} gives {len(ids)} tokens: need {prefill + args.positions}")
    targets = np.array(ids[prefill:])
    n = args.positions - 1  # the last step's next token is not in the text
    result = {"text": str(args.text), "prefix": args.prefix, "positions": n, "prefill": prefill}
    started = time.perf_counter()
    taps = bool(args.qdq_package) and not args.no_taps
    float_logits, float_steps = static_run(args.float_package, ids, prefill, taps=taps)
    ref = reference_rows(args.ref, ids, prefill) if args.ref else float_logits
    result["reference"] = str(args.ref or args.float_package)
    result["float_static"] = scores(float_logits, ref, targets[:n])
    print(f"float static vs reference: {json.dumps(result['float_static'])}  ({time.perf_counter() - started:.0f} s)")
    if args.qdq_package:
        qdq_logits, qdq_steps = static_run(args.qdq_package, ids, prefill, taps=taps)
        result["qdq"] = scores(qdq_logits, ref, targets[:n])
        result["qdq_vs_float_static"] = scores(qdq_logits, float_logits, targets[:n])
        print(f"QDQ vs reference:          {json.dumps(result['qdq'])}  ({time.perf_counter() - started:.0f} s)")
        print(f"QDQ vs float static:       {json.dumps(result['qdq_vs_float_static'])}")
        if taps:
            result["layers"] = layer_sqnr(float_steps, qdq_steps)
            print("| layer | SQNR dB | normed SQNR dB | max abs | median abs |\n|---|---|---|---|---|")
            for r in result["layers"]:
                print(f"| {r['layer']} | {r['sqnr_db']:.1f} | {r['normed_sqnr_db']:.1f} | {r['max_abs']:.1f} | {r['median_abs']:.3f} |")
        if args.ranges:
            result["widest_ranges"] = widest_ranges(args.qdq_package, args.ranges)
            for name, lo, hi in result["widest_ranges"]:
                print(f"{name:60s} [{lo:10.2f}, {hi:10.2f}]")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
