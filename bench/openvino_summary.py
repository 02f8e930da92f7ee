"""One table from an `edgeinfer bench --device cpu` JSON, an `edgeinfer bench --device openvino` JSON and the
openvino-genai peer's JSON (bench/run_peers.py --peers ov_genai) of the same run, with the ratios, and the fidelity
of `edgeinfer verify PKG --reference FP32 --device openvino --json` when given.

    python bench/openvino_summary.py CPU.json OPENVINO.json PEER.json [--verify VERIFY.json]
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
    return {"system": "openvino-genai", "device": "OpenVINO CPU", "weights": f"{pp['weights']} IR, {pp['file_bytes'] / 2**20:.0f} MiB",
            "prompt": int(pp["test"][2:]), "prefill": pp["tokens_per_s"], "decode": tg["tokens_per_s"],
            "ttft_ms": pp["ttft_ms"], "rss_mib": None, "session_s": None, "notes": pp["notes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cpu", type=Path)
    ap.add_argument("openvino", type=Path)
    ap.add_argument("peer", type=Path)
    ap.add_argument("--verify", type=Path)
    args = ap.parse_args()
    cpu, ov, peer = edgeinfer_rows(args.cpu), edgeinfer_rows(args.openvino), peer_rows(args.peer)
    print("| system | device | weights | prompt | TTFT ms | prefill tok/s | decode tok/s | peak RSS MiB | session s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (cpu, ov, peer):
        rss = f"{r['rss_mib']:.0f}" if r["rss_mib"] else ""
        session = f"{r['session_s']:.1f}" if r["session_s"] is not None else ""
        print(f"| {r['system']} | {r['device']} | {r['weights']} | {r['prompt']} | {r['ttft_ms']:.0f} | {r['prefill']:.1f} | "
              f"{r['decode']:.2f} | {rss} | {session} |")
    print()
    for name, other in (("edgeinfer --device cpu", cpu), ("openvino-genai", peer)):
        print(f"- edgeinfer openvino / {name}: prefill x{ov['prefill'] / other['prefill']:.2f}, decode x{ov['decode'] / other['decode']:.2f}")
    print(f"- openvino-genai: {peer['notes']}")
    if args.verify:
        v = json.loads(args.verify.read_text())
        for key in ("vs_reference", "device_vs_reference", "device_vs_cpu_ep"):
            if key in v:
                print(f"- verify {key}: {json.dumps(v[key])}")
        print(f"- verify: {v['positions']} scored positions, reference {v.get('reference')}")


if __name__ == "__main__":
    main()
