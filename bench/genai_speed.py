"""Side by side: timings of `edgeinfer bench --json` files and onnxruntime-genai driver runs (bench/peers/ort_genai_driver.py).

    python bench/genai_speed.py --edgeinfer NAME=BENCH.json ... --genai NAME=DRIVER.json ... [--within 0.05]
Prints one markdown table of median prefill and decode per prompt length and source. With --within, also the ratio
of every genai row's decode to the first edgeinfer file's at the same prompt length, and exits 1 if one falls more
than that fraction below it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def edgeinfer_rows(path: Path) -> dict[int, tuple[float, float, int]]:
    """prompt length -> (median prefill tok/s, median decode tok/s, runs)."""
    rows = {}
    for test in json.loads(path.read_text())["tests"]:
        runs = test["runs"]
        rows[test["prompt_tokens"]] = (statistics.median(r["prefill_tokens_per_s"] for r in runs),
                                       statistics.median(r["decode_tokens_per_s"] for r in runs), len(runs))
    return rows


def genai_rows(path: Path) -> dict[int, tuple[float, float, int]]:
    runs = json.loads(path.read_text())["runs"]
    rows = {}
    for length in sorted({r["prompt_len"] for r in runs}):
        mine = [r for r in runs if r["prompt_len"] == length]
        rows[length] = (statistics.median(r["prefill_tok_s"] for r in mine),
                        statistics.median(r["decode_tok_s"] for r in mine), len(mine))
    return rows


def named(values: list[str]) -> list[tuple[str, Path]]:
    return [(v.split("=", 1)[0], Path(v.split("=", 1)[1])) for v in values]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edgeinfer", nargs="*", default=[], help="NAME=edgeinfer bench JSON")
    ap.add_argument("--genai", nargs="*", default=[], help="NAME=ort_genai_driver JSON")
    ap.add_argument("--within", type=float, help="fail if a genai decode falls this fraction below the first edgeinfer's")
    args = ap.parse_args()
    sources = [(n, edgeinfer_rows(p)) for n, p in named(args.edgeinfer)] + [(n, genai_rows(p)) for n, p in named(args.genai)]
    print("| source | prompt | prefill tok/s | decode tok/s | runs |\n|---|---|---|---|---|")
    for name, rows in sources:
        for length, (prefill, decode, runs) in sorted(rows.items()):
            print(f"| {name} | {length} | {prefill:.1f} | {decode:.2f} | {runs} |")
    if args.within is None or not args.edgeinfer:
        return 0
    base_name, base = sources[0]
    ok = True
    for name, rows in sources[len(args.edgeinfer):]:
        for length, (_, decode, _) in sorted(rows.items()):
            if length in base:
                ratio = decode / base[length][1]
                ok &= ratio >= 1 - args.within
                print(f"decode {name} / {base_name} at prompt {length}: {ratio:.3f} "
                      f"({'within' if ratio >= 1 - args.within else 'NOT within'} {args.within:.0%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
