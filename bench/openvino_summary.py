"""One table from `edgeinfer bench --json` reports (--device cpu and --device openvino, of one run) and the
openvino-genai peer's JSONs (bench/run_peers.py --peers ov_genai) of the same run, with the ratios of the openvino row
to each other row, and the fidelity of `edgeinfer eval PKG... --device ... --reference FP32 --json` (or
`edgeinfer verify ... --json`) when given.

    python bench/openvino_summary.py --edgeinfer CPU.json OPENVINO.json --peers PEER.json [PEER_F32.json]
        [--eval EVAL.json] [--verify VERIFY.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def edgeinfer_rows(path: Path) -> dict:
    report = json.loads(path.read_text())
    test = report["tests"][0]
    runs = test["runs"]
    return {"system": f"edgeinfer --device {report['device']}", "device": report["device_description"],
            "weights": f"{report['model']['target']} package, {report['model']['file_bytes'] / 2**20:.0f} MiB",
            "prompt": test["prompt_tokens"], "prefill": statistics.median(r["prefill_tokens_per_s"] for r in runs),
            "decode": statistics.median(r["decode_tokens_per_s"] for r in runs),
            "ttft_ms": statistics.median(r["ttft_s"] for r in runs) * 1e3, "rss_mib": report["peak_rss_bytes"] / 2**20,
            "session_s": report["session_s"]}


def peer_rows(path: Path) -> dict:
    report = json.loads(path.read_text())
    results = {r["test"].split(" @")[0][:2]: r for r in report["results"]}
    pp, tg = results["pp"], results["tg"]
    precision = pp["notes"].split("inference precision ")[1].split(",")[0] if "inference precision " in pp["notes"] else ""
    return {"system": f"openvino-genai ({precision})" if precision else "openvino-genai", "device": "OpenVINO CPU",
            "weights": f"{pp['weights']} IR, {pp['file_bytes'] / 2**20:.0f} MiB", "prompt": int(pp["test"][2:]),
            "prefill": pp["tokens_per_s"], "decode": tg["tokens_per_s"], "ttft_ms": pp["ttft_ms"], "rss_mib": None,
            "session_s": None, "notes": pp["notes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edgeinfer", type=Path, nargs="+", required=True, help="edgeinfer bench JSONs")
    ap.add_argument("--peers", type=Path, nargs="*", default=[], help="run_peers.py JSONs of openvino-genai")
    ap.add_argument("--eval", type=Path)
    ap.add_argument("--verify", type=Path)
    args = ap.parse_args()
    rows = [edgeinfer_rows(p) for p in args.edgeinfer] + [peer_rows(p) for p in args.peers]
    print("| system | device | weights | prompt | TTFT ms | prefill tok/s | decode tok/s | peak RSS MiB | session s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = f"{r['rss_mib']:.0f}" if r["rss_mib"] else ""
        session = f"{r['session_s']:.1f}" if r["session_s"] is not None else ""
        print(f"| {r['system']} | {r['device']} | {r['weights']} | {r['prompt']} | {r['ttft_ms']:.0f} | {r['prefill']:.1f} | "
              f"{r['decode']:.2f} | {rss} | {session} |")
    print()
    ours = next((r for r in rows if r["system"].startswith("edgeinfer --device openvino")), None)
    for other in rows if ours else []:
        if other is not ours:
            print(f"- edgeinfer openvino / {other['system']} ({other['weights']}): prefill x{ours['prefill'] / other['prefill']:.2f}, "
                  f"decode x{ours['decode'] / other['decode']:.2f}")
    for r in rows:
        if "notes" in r:
            print(f"- {r['system']}: {r['notes']}")
    if args.eval:
        reports = json.loads(args.eval.read_text())
        print("\n| package (eval) | reference | scored tokens | same top token | mean KLD | PPL ratio |\n|---|---|---|---|---|---|")
        for r in reports if isinstance(reports, list) else [reports]:
            print(f"| {r['package']} | {r['reference']} | {r['scored_tokens']} | {r['same_top_pct']:.2f}% | {r['kld_mean']:.5f} | "
                  f"{r['perplexity_ratio']:.4f} |")
    if args.verify:
        v = json.loads(args.verify.read_text())
        for key in ("vs_reference", "device_vs_reference", "device_vs_cpu_ep"):
            if key in v:
                print(f"- verify {key}: {json.dumps(v[key])}")
        print(f"- verify: {v['positions']} scored positions, reference {v.get('reference')}")


if __name__ == "__main__":
    main()
