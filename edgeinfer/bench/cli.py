"""The `edgeinfer bench` command line: arguments in, table on screen, files out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EdgeInferError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from ..backends import backend_names
    from ..export.options import PRECISIONS

    p.add_argument("--device", default="cpu", help=", ".join(backend_names()))
    p.add_argument("--model", default=None, help="package, or a source to export first (default: the 1.5B preset, random weights)")
    p.add_argument("--precision", default="w4a16", choices=PRECISIONS, help="when exporting")
    p.add_argument("--prompt-len", type=_int_list, default=[128, 1024], help="prompt lengths, e.g. 128,1024")
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--context", type=int, default=4096, help="context length of the package (when exporting)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-sweep", action="store_true", help="skip decode speed at contexts 128/1024/4096")
    p.add_argument("--json", type=Path, help="write the full result (raw timings, machine, versions) here")
    p.add_argument("--csv", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path, help="PNG: decode vs context, prefill per prompt length")
    add_speculate_argument(p, default=["off"], note="off here: random prompts on random weights loop, and lookup "
                           "would time the loop; bench/speculative.py times real prompts")


def add_speculate_argument(p: argparse.ArgumentParser, default: list[str], note: str) -> None:
    p.add_argument("--speculate", nargs="+", default=default, metavar="MODE",
                   help=f"speculative decoding: auto (adaptive prompt lookup, greedy only), off, lookup, or draft PKG "
                        f"(a smaller package with the same tokenizer); default {default[0]}: {note}")
    p.add_argument("--draft-max", type=int, default=None, metavar="N",
                   help="at most N proposed tokens a step (llama.cpp's --draft-max; default: 15 on cpu, 7 where verify "
                        "runs have a fixed width of 8 rows); auto still picks fewer where they do not pay")


def speculation_from(args, device: str, options):
    """The Speculation --speculate names; a draft package is loaded on DEVICE."""
    from ..speculative import MODES, PROPOSED_LIMIT, Speculation

    mode, *rest = getattr(args, "speculate", None) or ["auto"]
    if mode not in MODES or len(rest) != (mode == "draft"):
        raise EdgeInferError(f"--speculate {' '.join([mode, *rest])}: pass one of auto, off, lookup, or draft PKG")
    most = getattr(args, "draft_max", None)
    if most is not None and not 1 <= most <= PROPOSED_LIMIT:
        raise EdgeInferError(f"--draft-max {most}: pass a number of proposed tokens from 1 to {PROPOSED_LIMIT}")
    if mode != "draft":
        return Speculation(mode, max_proposed=most)
    from ..model import load

    return Speculation("draft", draft=load(rest[0], device=device, options=options), max_proposed=most)


def run_bench(args) -> None:
    from ..backends import BackendOptions
    from .results import csv_text, detail_table, markdown_table, save_json, write_atomic
    from .runner import bench

    if args.repeat < 1 or args.warmup < 0 or args.gen_len < 2:
        raise EdgeInferError("--repeat must be >= 1, --warmup >= 0 and --gen-len >= 2")
    options = BackendOptions(threads=args.threads)
    result = bench(
        args.device, args.model, tuple(args.prompt_len), args.gen_len, args.repeat, args.warmup, args.context,
        args.precision, sweep=not args.no_sweep, options=options, speculation=speculation_from(args, args.device, options),
    )
    print()
    print(markdown_table([result]))
    print()
    print(detail_table(result))
    print(f"\nload {result['load_s']:.2f} s (session {result['session_s']:.2f} s), peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB"
          + (f", peak GPU {result['peak_gpu_mib']:.0f} MiB" if result.get("peak_gpu_mib") else ""))
    if args.json:
        save_json(result, args.json)
    if args.csv:
        write_atomic(args.csv, csv_text([result]))
    if args.markdown:
        write_atomic(args.markdown, markdown_table([result]) + "\n\n" + detail_table(result) + "\n")
    if args.plot:
        from .plot import plot_result

        plot_result(result, args.plot)
