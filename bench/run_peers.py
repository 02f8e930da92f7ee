"""Run the benchmark peers (llama.cpp, onnxruntime-genai, optimum) and write one JSON with the machine.

    python bench/run_peers.py --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2
Peers come from bench/setup_peers.sh. A peer that is missing, or that fails while it runs, is reported in one line
(which peer, why, the fix), recorded with that reason and skipped; the other peers' results are kept.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.peers import PEERS, PeerResult, bench_records, failure_reason  # noqa: E402
from edgeinfer.backends import get_backend  # noqa: E402
from edgeinfer.bench.machine import describe_machine  # noqa: E402
from edgeinfer.bench.results import render_markdown  # noqa: E402

PEER_MODULES = ("edgeinfer_cpu", "llama_cpp", "ort_genai", "optimum_ort", "ov_genai")
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def package_version(name: str) -> str | None:
    """The installed version, or None where the package is not installed (a report never fails on it)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [f for f in CPU_FLAGS if f in flags]


def machine() -> dict:
    """edgeinfer's machine description (so tables merge), plus what explains peer figures here."""
    build_info = PEERS / "llama.cpp" / "BUILD_INFO.txt"
    return {
        **describe_machine(),
        "cpu_flags": cpu_flags(),
        "loadavg_1_5_15": os.getloadavg(),  # other work on a shared machine skews the figures
        "system_packages": {name: package_version(name) for name in ("torch", "transformers", "onnxruntime")},
        "llama_cpp_build": build_info.read_text().splitlines() if build_info.exists() else None,
    }


def run_peer(name: str, peer: ModuleType, args: argparse.Namespace) -> tuple[dict, list[PeerResult]]:
    """One peer's rows and status. A peer that is missing or fails is skipped with a one-line reason on stderr."""
    try:
        ok, reason = peer.available()
    except Exception as e:  # a broken probe is one more reason to skip, not the end of the run
        ok, reason = False, f"its availability check failed: {failure_reason(e)}; fix: {peer.FIX}"
    status = {"available": ok, "reason": reason}
    if not ok:
        print(f"skipped {name}: {reason}", file=sys.stderr)
        return status, []
    print(f"{name}: {reason}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        rows = peer.run(args.prompt_lens, args.gen_len, args.repeat, args.threads, args.workdir)
    except Exception as e:
        status["error"] = f"failed after {time.perf_counter() - t0:.0f} s: {failure_reason(e)}; fix: {peer.FIX}"
        print(f"skipped {name}: {status['error']}", file=sys.stderr)
        return status, []
    status["seconds"] = round(time.perf_counter() - t0, 1)
    return status, rows


def run_peers(peers: dict[str, ModuleType], args: argparse.Namespace) -> tuple[dict, list[PeerResult]]:
    """Every peer in turn: the status of each, and the rows of those that ran."""
    status, results = {}, []
    for name, peer in peers.items():
        status[name], rows = run_peer(name, peer, args)
        results += rows
    return status, results


def table(results: list[PeerResult]) -> str:
    rows = ["| system | weights | MiB | test | tok/s (median) | min - max | TTFT ms |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ttft = f"{r.ttft_ms:.0f}" if r.ttft_ms is not None else ""
        rows.append(f"| {r.system} | {r.weights} | {r.file_bytes / 2**20:.0f} | {r.test} | {r.tokens_per_s:.2f} | "
                    f"{r.tokens_per_s_min:.2f} - {r.tokens_per_s_max:.2f} | {ttft} |")
    return "\n".join(rows)


def ratios(results: list[PeerResult]) -> str:
    """edgeinfer's speed over each peer's, test by test (above 1: edgeinfer is faster)."""
    ours = {r.test: r for r in results if r.system == "edgeinfer"}
    lines = []
    for r in results:
        if r.system != "edgeinfer" and r.test in ours and r.tokens_per_s:
            lines.append(f"- {r.test}: edgeinfer / {r.system} {r.weights}: x{ours[r.test].tokens_per_s / r.tokens_per_s:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-lens", type=int, nargs="+", default=[128])
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", nargs="+", choices=PEER_MODULES, default=list(PEER_MODULES))
    ap.add_argument("--workdir", type=Path, default=PEERS / "models", help="where derived models are made once")
    ap.add_argument("--out", type=Path, help="default: bench/results/peers-cpu-DATE.json")
    args = ap.parse_args()
    today = datetime.date.today().isoformat()
    out = args.out or Path(__file__).resolve().parent / "results" / f"peers-cpu-{today}.json"

    status, results = run_peers({name: importlib.import_module(f"bench.peers.{name}") for name in args.peers}, args)

    settings = {k: v for k, v in vars(args).items() if k in ("prompt_lens", "gen_len", "repeat", "threads")}
    report = {"date": today, "machine": machine(), "settings": settings, "peers": status,
              "results": [asdict(r) for r in results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(render_markdown(bench_records(results, get_backend("cpu").device_description()), by_system=True))
    print()
    print(table(results))
    print()
    print(ratios(results))
    skipped = [f"- {name}: {st.get('error') or st['reason']}" for name, st in status.items() if "seconds" not in st]
    if skipped:
        print("\nskipped:\n" + "\n".join(skipped))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
