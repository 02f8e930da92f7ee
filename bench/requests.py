"""What an app sees request after request: `model.stream()` called again and again on one loaded model.

    python bench/requests.py PACKAGE [--device cuda] [--requests 30] [--prompt-len 128] [--new-tokens 32] [--sample [--top-k K]]

`edgeinfer bench` keeps one generator for all its runs; an app calls `generate`/`stream` per request, so
each request also pays for whatever a fresh generator costs (cache buffers, a new CUDA graph). This prints,
per block of requests: time to the first streamed piece, whole-request time, decode speed, and process / GPU
memory, so a per-request cost or a leak shows up as a trend. Greedy by default; --sample draws with the
model's defaults (temperature 0.6, top-p 0.95), as a chat app does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--block", type=int, default=10, help="requests per printed row")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sample", action="store_true", help="sample with the model's defaults instead of greedy")
    ap.add_argument("--top-k", type=int, default=0, help="with --sample: also keep only the K most likely tokens")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import edgeinfer
    from edgeinfer.bench.memory import _gpu_used_mib
    from edgeinfer.sampler import GREEDY

    model = edgeinfer.load(args.package, device=args.device, verify=False)
    sampling = replace(model.default_sampling(), top_k=args.top_k) if args.sample else GREEDY
    sentence = "The quick brown fox jumps over the lazy dog while the cat watches from the window. "
    ids = model.tokenizer.encode(sentence * args.prompt_len)[: args.prompt_len]
    words = model.tokenizer.decode(ids)  # about PROMPT_LEN tokens of plain text
    process, rows, requests = psutil.Process(), [], []
    for i in range(args.requests):
        started = time.perf_counter()
        first = None
        stream = model.stream(words, max_new_tokens=args.new_tokens, sampling=sampling, raw=True, ignore_eos=True)
        for _ in stream:
            first = first or time.perf_counter()
        done = time.perf_counter()
        requests.append({"first_piece_ms": (first - started) * 1e3, "request_ms": (done - started) * 1e3,
                         "decode_tokens_per_s": stream.result.timings.decode_tokens_per_s})
        if (i + 1) % args.block == 0:
            block = requests[-args.block:]
            row = {
                "requests": f"{i + 2 - args.block}-{i + 1}",
                "first_piece_ms": statistics.median(r["first_piece_ms"] for r in block),
                "request_ms": statistics.median(r["request_ms"] for r in block),
                "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in block),
                "rss_mib": process.memory_info().rss / 2**20,
                "gpu_mib": _gpu_used_mib() if args.device == "cuda" else None,
            }
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"package": args.package, "device": args.device, "settings": vars(args) | {"json": str(args.json)},
                                         "blocks": rows, "requests": requests}, indent=2))


if __name__ == "__main__":
    main()
