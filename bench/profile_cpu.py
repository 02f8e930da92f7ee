"""Where a decode step and a prefill go: onnxruntime's per-op profiler on a package, grouped by op type,
with the bytes each op must read and the bandwidth that implies.

    python bench/profile_cpu.py PACKAGE [--prompt 128] [--steps 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx


def initializer_bytes(package: Path) -> dict[str, int]:
    """Bytes of weights each node reads (its initializer inputs)."""
    model = onnx.load(str(package / "model.onnx"), load_external_data=False)
    sizes = {}
    for t in model.graph.initializer:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        sizes[t.name] = length if length is not None else len(t.raw_data) or int(np.prod(t.dims)) * 4
    return {n.name: sum(sizes.get(i, 0) for i in n.input) for n in model.graph.node}


def profile(package: Path, prompt: int, steps: int, threads: int | None) -> dict:
    import edgeinfer
    from edgeinfer.backends import BackendOptions

    model = edgeinfer.load(package, verify=False, options=BackendOptions(threads=threads, profile=True))
    gen = model.generator(edgeinfer.GREEDY)
    gen.append(list(range(1000, 1000 + prompt)))
    for _ in range(steps):
        gen.append([gen.next_token()])
    trace = model.engine.session.end_profiling()
    events = json.loads(Path(trace).read_text())
    Path(trace).unlink()
    runs = [e for e in events if e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    weight_bytes = initializer_bytes(package)
    phases = {"prefill": [], "decode": []}
    prefill_runs = -(-prompt // gen.prefill_chunk)  # long prompts run in chunks
    prefill_end = runs[prefill_runs - 1]["ts"] + runs[prefill_runs - 1]["dur"]
    for e in nodes:
        phases["prefill" if e["ts"] < prefill_end else "decode"].append(e)
    report = {}
    for phase, items in phases.items():
        n_runs = prefill_runs if phase == "prefill" else steps
        by_op = defaultdict(lambda: {"us": 0.0, "bytes": 0})
        for e in items:
            op = e["args"].get("op_name", "?")
            by_op[op]["us"] += e["dur"] / n_runs
            by_op[op]["bytes"] += weight_bytes.get(e["name"].removesuffix("_kernel_time"), 0) / n_runs
        run_us = np.median([r["dur"] for r in (runs[:prefill_runs] if phase == "prefill" else runs[prefill_runs:])])
        report[phase] = {"run_ms": run_us / 1000, "ops": dict(sorted(by_op.items(), key=lambda kv: -kv[1]["us"]))}
    return report


def print_report(report: dict) -> None:
    for phase, data in report.items():
        total = sum(v["us"] for v in data["ops"].values())
        print(f"\n{phase}: {data['run_ms']:.1f} ms per run (kernels {total / 1000:.1f} ms)")
        print("| op | ms/run | share | weights read (MB) | GB/s |")
        print("|---|---|---|---|---|")
        for op, v in data["ops"].items():
            gbps = v["bytes"] / (v["us"] * 1e3) if v["us"] and v["bytes"] else 0
            print(f"| {op} | {v['us'] / 1000:.2f} | {100 * v['us'] / total:.1f}% | {v['bytes'] / 1e6:.0f} | {gbps:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = profile(args.package, args.prompt, args.steps, args.threads)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
