"""Where the HTP parts from the CPU EP inside a qnn package's graphs: every quantized activation, both devices.

    python bench/qnn_op_taps.py PACKAGE [--role decode|prefill] [--prompt-tokens 8] [--show 40] [--json out.json]
                                [--device qnn|openvino:cpu]

The package's graphs of one role (smallest context bucket) get every QuantizeLinear output as an extra graph output
(the uint16 activations themselves); the feeds of a CPU EP run (the prompt but its last token as one prefill chunk,
then the last token's decode step) are replayed through both devices. Per tapped tensor, in graph order: the producing op, the largest difference in quantization steps and the
SQNR of the HTP's values against the CPU EP's. A tensor the HTP computes as the CPU EP does differs by 0-1 steps;
the first one that differs by many is where to look.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.package import load_package
from edgeinfer.static_runner import StaticEngine, StaticRunner

from qnn_htp_steps import prompt_ids  # noqa: E402  (bench/ is the script's folder)


class RecordingSession:
    """A CPU EP session that keeps the feed of its last run."""

    def __init__(self, session):
        self.session, self.feed = session, None

    def run(self, names, feed):
        self.feed = {k: np.array(v) for k, v in feed.items()}
        return self.session.run(names, feed)


def recorded_feeds(package, ids: list[int]) -> dict[str, list[dict]]:
    """Each part's feed per role on the CPU EP: the prefill of IDS but the last token (one chunk), then the decode of
    the last token."""
    backend = get_backend("cpu")
    engine = StaticEngine(backend, package, backend.package_options(package.manifest.precision, BackendOptions()))
    context = engine.contexts[0]
    sessions = {role: [RecordingSession(s) for s in parts] for role, parts in engine.sessions_for(context).items()}
    m = package.manifest
    runner = StaticRunner(sessions, m.graphs, m.spec, context, engine.embeddings)
    if len(ids) - 1 > m.graphs["prefill"]["tokens"]:
        raise SystemExit(f"--prompt-tokens {len(ids)}: at most one prefill chunk ({m.graphs['prefill']['tokens']}) plus one")
    runner.run(ids[:-1], 0)
    runner.run(ids[-1:], len(ids) - 1)
    return {role: [s.feed for s in parts] for role, parts in sessions.items()}


def tapped_graph(path: Path, folder: Path, match: str = "") -> tuple[Path, list[dict]]:
    """PATH with every QuantizeLinear output as a graph output, written into FOLDER beside links to its data files;
    returns the file and, per tap, its name, producer op, scale and zero point. FOLDER must be on the package's file
    system: onnxruntime refuses data files that resolve outside the model's folder, so they are hard links."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    taps = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in init or node.output[0] in outputs:
            continue
        if not re.search(match, node.output[0]):
            continue
        scale = numpy_helper.to_array(init[node.input[1]], base_dir=str(path.parent))
        zero = numpy_helper.to_array(init[node.input[2]], base_dir=str(path.parent)) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale.size != 1:
            continue  # per-channel activations: none in these graphs
        source = producer.get(node.input[0])
        taps.append({"name": node.output[0], "op": source.op_type if source else "input", "node": source.name if source else node.input[0],
                     "scale": float(scale), "zero_point": int(zero), "dtype": zero.dtype})
        model.graph.output.append(helper.make_tensor_value_info(node.output[0], helper.np_dtype_to_tensor_dtype(zero.dtype), None))
    for data in {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}:
        link = folder / data
        if not link.exists():
            os.link(path.parent / data, link)
    out = folder / path.name
    onnx.save(model, str(out))
    return out, taps


def compare(taps: list[dict], cpu: list[np.ndarray], htp: list[np.ndarray]) -> list[dict]:
    rows = []
    for tap, a, b in zip(taps, cpu, htp):
        fa = (a.astype(np.float64) - tap["zero_point"]) * tap["scale"]
        fb = (b.astype(np.float64) - tap["zero_point"]) * tap["scale"]
        noise = float(((fa - fb) ** 2).sum())
        sqnr = float("inf") if noise == 0 else 10 * np.log10(max(float((fa**2).sum()), 1e-30) / noise)
        steps = np.abs(a.astype(np.int64) - b.astype(np.int64))
        rows.append({"tensor": tap["name"], "op": tap["op"], "node": tap["node"], "max_steps": int(steps.max()),
                     "mean_steps": float(steps.mean()), "sqnr_db": sqnr,
                     "saturated_cpu": float(np.mean((a == np.iinfo(a.dtype).max) | (a == np.iinfo(a.dtype).min)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt", default="Write a Python function that checks whether a string is a palindrome.")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--role", choices=("decode", "prefill"), default="decode")
    parser.add_argument("--match", default="", help="tap only tensors whose name matches this regex (a prefill graph "
                        "with every activation as an output exceeds the simulator's memory)")
    parser.add_argument("--show", type=int, default=0, help="print only the first SHOW rows (0: all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="qnn", help="the device compared with the CPU EP (qnn, or openvino:cpu: "
                        "how OpenVINO runs the same QDQ graphs)")
    args = parser.parse_args()
    package = load_package(args.package)
    ids = prompt_ids(package, args.prompt, args.prompt_tokens)
    feeds = recorded_feeds(package, ids)[args.role]
    m = package.manifest
    smallest = min(  # the bucket recorded_feeds ran: StaticEngine's first context
        m.graphs.get("contexts", [m.context_length]))
    qnn, cpu = get_backend(args.device), get_backend("cpu")
    report = []
    with tempfile.TemporaryDirectory(dir=args.package.resolve().parent) as tmp:
        for part, feed in zip(m.graphs[args.role]["parts"], feeds):
            name = part["file"] if smallest == m.context_length else part["contexts"][str(smallest)]
            path, taps = tapped_graph(package.graph(name, "a graph part"), Path(tmp), args.match)
            names = [t["name"] for t in taps]
            results = {}
            for backend in (cpu, qnn):
                # A tapped QuantizeLinear's output leaves the graph; QNN hands such boundary Q nodes to the CPU.
                options = backend.package_options(m.precision, BackendOptions(allow_fallback=True))
                session = backend.create_session(str(path), options)
                results[backend.name] = session.run(names, feed)
            report += compare(taps, results["cpu"], results[qnn.name])
    for i, row in enumerate(report[: args.show or None]):
        print(f"{i:4d} {row['op']:<20} {row['max_steps']:>7d} steps (mean {row['mean_steps']:8.2f})  {row['sqnr_db']:6.1f} dB"
              f"  sat {row['saturated_cpu']:.3f}  {row['tensor']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
