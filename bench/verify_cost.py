"""What a speculative verify run costs against a decode step, and a greedy check, on one device.

    python bench/verify_cost.py PKG [--device cuda] [--depth 600] [--repeat 20] [--trace RESULT.json] [--json OUT]

1. Times runs of width 1..8 (the pending token and 0..7 proposals) at DEPTH cached tokens through the speculative
   path itself (Generator.verify, then a rewind), on a GPU the decode step's and the fixed-width verify's captured
   graphs. On a GPU every verify run is padded to its fixed width (8): a step costs t(1) or t(8).
2. Greedy check: a repetitive prompt with speculation (lookup) against plain decoding: the same tokens, or it exits 1.
3. With --trace (bench/speculative.py's JSON from real weights on another device), an estimate of effective decode
   per kind on this device: the same accept decisions (greedy output is the same everywhere), each plain step
   costing t(1) here and each verify step t(its width): new tokens / sum of step times. An estimate, labelled so:
   real prompts need the real weights, which cannot be carried to the lent GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgeinfer  # noqa: E402
from edgeinfer.sampler import GREEDY  # noqa: E402


def widths_cost(model, depth: int, repeat: int, max_width: int = 8) -> tuple[dict[int, float], bool]:
    """Median ms of a verify run per width, and whether the runner still verifies at its fixed width afterwards (a GPU
    that could not capture or replay that graph falls back to uncaptured runs)."""
    generator = model.generator(GREEDY)
    generator.append(list(range(1, depth + 1)))
    width_max = generator.runner.verify_rows if generator.runner.verify_width is None else generator.runner.verify_width
    out = {}
    for width in range(1, min(max_width, width_max) + 1):
        times = []
        for i in range(repeat + 2):  # two warm-ups (a GPU captures its graphs in the first)
            ids = [(7 * i + j) % 1000 + 10 for j in range(width)]
            start = time.perf_counter()
            generator.verify(ids, rows=width)
            generator.row_greedy()  # what a step reads back
            elapsed = time.perf_counter() - start
            generator.rewind(depth)
            if i >= 2:
                times.append(elapsed)
        out[width] = statistics.median(times) * 1000
    kept = generator.runner.verify_width is not None
    model.recycle(generator)
    return out, kept


def greedy_check(model) -> dict:
    prompt = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n" * 4
    plain = model.generate(prompt, 64, GREEDY, raw=True, ignore_eos=True, speculate="off")
    fast = model.generate(prompt, 64, GREEDY, raw=True, ignore_eos=True, speculate="lookup")
    return {"identical": fast.token_ids == plain.token_ids, "plain_tok_s": plain.timings.decode_tokens_per_s,
            "lookup_tok_s": fast.timings.decode_tokens_per_s, "acceptance": fast.timings.acceptance_rate,
            "tokens_per_pass": fast.timings.tokens_per_pass}


def estimate(trace: dict, cost_ms: dict[int, float], padded: bool) -> dict:
    """Effective tok/s per kind if each step of TRACE's speculative runs cost what it costs here."""
    out = {}
    for kind in ("edit", "quote", "free"):
        rates = []
        for run in trace["runs"]:
            if run["kind"] != kind or not run["side"].startswith("edgeinfer-") or run["side"] == "edgeinfer-plain":
                continue
            extra = run["extra"]
            verify, plain_steps = extra["verify_passes"], extra["forward_passes"] - extra["verify_passes"]
            # Widths of the verify steps are not kept per step: their mean (proposed / verify steps + 1), or the fixed
            # width where the device pads every verify run to it.
            width = max(cost_ms) if padded else min(max(cost_ms), round(extra["proposed"] / max(verify, 1)) + 1)
            seconds = (plain_steps * cost_ms[1] + verify * cost_ms[width]) / 1000
            rates.append((run["new_tokens"] - 1) / seconds)
        if rates:
            out[kind] = {"estimated_decode_tokens_per_s": statistics.mean(rates),
                         "plain_decode_tokens_per_s": 1000 / cost_ms[1]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--trace", type=Path, help="bench/speculative.py's JSON result (real weights)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = edgeinfer.load(args.package, device=args.device)
    cost, padded = widths_cost(model, args.depth, args.repeat)
    check = greedy_check(model)
    result = {"package": str(args.package), "device": args.device, "depth": args.depth, "verify_ms_by_width": cost,
              "padded_to_fixed_width": padded, "greedy_check": check}
    if args.trace:
        result["estimate_from_trace"] = {"trace": str(args.trace),
                                         **estimate(json.loads(args.trace.read_text()), cost, padded)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not check["identical"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
