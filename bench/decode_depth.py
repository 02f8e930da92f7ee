"""Decode speed with a long context in the cache: edgeinfer's attention paths before/after, llama.cpp beside them.

    /work/heavy python bench/decode_depth.py [GGUF] [--depths 128,4064] [--steps 64] [--repeat 3] [--profile]
                                             [--package NAME=PATH ...]

With --package (repeated), times those packages instead (the first is "before", each other one an "after"). Without
it, exports the GGUF twice into --workdir (once per attention path, kept for later runs): "gqa" (onnxruntime's
GroupQueryAttention over a [1, kv heads, context, head dim] cache: every cpu package before grouped attention) and
"grouped" (export/grouped_attention.py over row-major cache rows). Each package's cache is filled with random values
(every page touched, as a real prefill leaves it; untouched pages would all read one shared zero page), then
decode_at_depth times STEPS tokens at each depth. Repeats alternate between the packages so that load from other
processes falls on both alike. llama-bench then decodes the same STEPS tokens after DEPTH tokens of prefill (-d) on
the same GGUF and threads. --profile adds onnxruntime's per-op profile at the deepest depth: the attention nodes'
share of a decode step and the cache bandwidth it implies. Results: bench/results/decode-depth-cpu-<tag>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.weights import real_gguf  # noqa: E402

PATHS = ("gqa", "grouped")
LABELS = {"gqa": "edgeinfer before (GroupQueryAttention, BNSH cache)", "grouped": "edgeinfer after (grouped attention, SH rows)"}
DEFAULT_LLAMA_BIN = Path("/work/main/bench/.peers/llama.cpp/build/bin")


def export_package(gguf: Path, workdir: Path, attention: str, context: int) -> Path:
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions
    from edgeinfer.package import load_manifest

    out = workdir / f"{gguf.stem}-{attention}-c{context}"
    if (out / "manifest.json").exists() and load_manifest(out, verify=False).export_options.get("attention", "gqa") == attention:
        return out
    export(str(gguf), out, ExportOptions(context_length=context, attention=attention), force=True, progress=True)
    return out


def fill_cache(generator) -> None:
    """Every cache page written: each is really read at decode, as after a real prefill."""
    generator.runner.touch_cache()


def attention_node(name: str) -> bool:
    """Nodes of a layer's attention (GroupQueryAttention, or grouped attention's matmuls) and the masks they share."""
    return ".attn" in name or name.startswith("attn/")


def profile_decode(package: Path, depth: int, steps: int, threads: int) -> dict:
    """Per-op time of decode steps at DEPTH: by op type, and the attention nodes' share."""
    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.bench.profiler import decode_at_depth

    model = edgeinfer.load(package, verify=False, options=BackendOptions(threads=threads, profile=True))
    gen = model.generator(edgeinfer.GREEDY)
    fill_cache(gen)
    decode_at_depth(gen, depth, steps, 1)
    trace = Path(model.engine.session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    by_op, attention_us = defaultdict(float), 0.0
    for e in nodes:
        by_op[e["args"].get("op_name", "?")] += e["dur"] / len(runs)
        if attention_node(e["name"].removesuffix("_kernel_time")):
            attention_us += e["dur"] / len(runs)
    kv = model.manifest.kv_cache
    cache_bytes = 2 * kv["num_layers"] * kv["num_kv_heads"] * kv["head_dim"] * (depth + 1) * np.dtype(kv["dtype"]).itemsize
    return {"depth": depth, "steps": len(runs), "run_ms": float(np.median(runs)) / 1000, "attention_ms": attention_us / 1000,
            "attention_share": attention_us / sum(by_op.values()), "cache_mb_per_step": cache_bytes / 1e6,
            "cache_gb_per_s": cache_bytes / (attention_us * 1e3),
            "ops_ms": {op: us / 1000 for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def edgeinfer_rates(packages: dict[str, Path], depths: list[int], steps: int, repeat: int, threads: int) -> dict:
    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.bench.profiler import decode_at_depth

    generators = {}
    for path, package in packages.items():
        gen = edgeinfer.load(package, verify=False, options=BackendOptions(threads=threads)).generator(edgeinfer.GREEDY)
        fill_cache(gen)
        decode_at_depth(gen, depths[0], 4, 1)  # warm-up: sessions' first runs allocate
        generators[path] = gen
    rates = {path: {d: [] for d in depths} for path in packages}
    for _ in range(repeat):  # alternate: other processes' load falls on both paths alike
        for depth in depths:
            for path, gen in generators.items():
                rates[path][depth] += decode_at_depth(gen, depth, steps, 1)["raw"]
    return rates


def llama_rates(gguf: Path, bin_dir: Path, depths: list[int], steps: int, repeat: int, threads: int) -> tuple[dict, str]:
    tool = bin_dir / "llama-bench"
    if not tool.exists():
        return {}, f"{tool} is missing (bash bench/setup_peers.sh llama_cpp)"
    cmd = [str(tool), "-m", str(gguf), "-p", "0", "-n", str(steps), "-d", ",".join(map(str, depths)),
           "-r", str(repeat), "-t", str(threads), "-o", "json"]
    try:
        rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        return {}, f"llama-bench failed: {str(getattr(exc, 'stderr', '') or exc)[-300:]}"
    rates = {row["n_depth"]: row["samples_ts"] for row in rows if row["n_gen"]}
    notes = f"llama-bench {rows[0]['build_commit']}, {rows[0]['n_threads']} threads, {rows[0]['model_type']}, " \
            f"flash_attn {rows[0].get('flash_attn')}, cache {rows[0].get('type_k')}/{rows[0].get('type_v')}; " + " ".join(cmd)
    return rates, notes


def agreement(packages: dict[str, Path], new_tokens: int = 32, prompt_tokens: int = 600) -> dict:
    """Both paths on a real prompt (this file's source as text, ~600 tokens): greedy tokens equal, logits apart."""
    import edgeinfer

    before, after = list(packages)[:2]
    models = {p: edgeinfer.load(packages[p], verify=False) for p in (before, after)}
    prompt = models[before].tokenizer.encode(Path(__file__).read_text())[:prompt_tokens]
    gens = {p: m.generator(edgeinfer.GREEDY) for p, m in models.items()}
    for gen in gens.values():
        gen.append(prompt)
    first = float(np.abs(gens[before].logits - gens[after].logits).max())
    tokens = {p: gen.extend(new_tokens) for p, gen in gens.items()}
    same = next((i for i, (a, b) in enumerate(zip(tokens[before], tokens[after])) if a != b), new_tokens)
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "equal_greedy_tokens": same,
            "max_abs_logit_diff_after_prompt": first}


def prefill_rates(packages: dict[str, Path], tokens: int, threads: int, repeat: int = 2) -> dict[str, list[float]]:
    """Prefill tok/s of a TOKENS-token prompt (the generator's chunks), alternating between the paths."""
    import time

    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.bench.profiler import random_prompt

    gens = {p: edgeinfer.load(pkg, verify=False, options=BackendOptions(threads=threads)).generator(edgeinfer.GREEDY)
            for p, pkg in packages.items()}
    rates = {p: [] for p in packages}
    for i in range(repeat):
        for path, gen in gens.items():
            gen.reset()
            prompt = random_prompt(tokens, gen.vocab_size, seed=i)
            start = time.perf_counter()
            gen.append(prompt)
            gen.next_token()
            rates[path].append(tokens / (time.perf_counter() - start))
    return rates


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def markdown(result: dict) -> str:
    depths = result["settings"]["depths"]
    rows = [("edgeinfer " + p, LABELS.get(p, result["packages"][p]), rates) for p, rates in result["edgeinfer"].items()]
    if result["llama_cpp"]["rates"]:
        rows.append(("llama.cpp", result["llama_cpp"]["notes"], result["llama_cpp"]["rates"]))
    else:
        rows.append(("llama.cpp (no figure)", result["llama_cpp"]["notes"], {}))
    out = [f"Decode tok/s with DEPTH tokens in the cache ({result['settings']['steps']} steps, median of "
           f"{result['settings']['repeat']}; {result['machine']['cpu']}, {result['settings']['threads']} threads)", "",
           "| system | " + " | ".join(f"d{d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for name, _, rates in rows:
        out.append(f"| {name} | " + " | ".join(f"{median(rates.get(d, rates.get(str(d), []))):.2f}" for d in depths) + " |")
    for name, label, _ in rows:
        out.append(f"\n- {name}: {label}")
    ratios = result["ratios"]
    out.append("\n" + "; ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
    if "prefill_1024" in result:
        out.append("\nprefill of 1024 tokens, tok/s (median of 2): " + ", ".join(
            f"{p} {median(r):.1f}" for p, r in result["prefill_1024"].items()))
    if "agreement" in result:
        a = result["agreement"]
        out.append(f"\nsame real prompt ({a['prompt_tokens']} tokens), greedy: {a['equal_greedy_tokens']}/{a['new_tokens']} tokens "
                   f"equal between the paths; logits after the prompt differ by at most {a['max_abs_logit_diff_after_prompt']:.2e}")
    for path, prof in result.get("profile", {}).items():
        out.append(f"\nprofile {path} at d{prof['depth']}: {prof['run_ms']:.1f} ms per step, attention {prof['attention_ms']:.1f} ms "
                   f"({100 * prof['attention_share']:.0f}%), cache {prof['cache_mb_per_step']:.0f} MB read at "
                   f"{prof['cache_gb_per_s']:.1f} GB/s; top ops (ms): "
                   + ", ".join(f"{op} {ms:.1f}" for op, ms in list(prof["ops_ms"].items())[:6]))
    return "\n".join(out) + "\n"


def main() -> None:
    from edgeinfer.bench.machine import describe_machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, nargs="?", default=None)
    parser.add_argument("--workdir", type=Path, default=Path("/work/scratch/longctx"))
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--depths", default="128,4064")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-bin", type=Path, default=DEFAULT_LLAMA_BIN)
    parser.add_argument("--llama-repeat", type=int, default=2, help="llama-bench -r (each repeat prefills DEPTH tokens anew)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--package", action="append", default=[], metavar="NAME=PATH",
                        help="time this package (repeat; the first is the before): no export")
    parser.add_argument("--tag", default="xeon-2c")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    gguf = args.gguf or real_gguf()
    depths = [int(d) for d in args.depths.split(",")]
    if max(depths) + args.steps > args.context:
        parser.error(f"depth {max(depths)} + {args.steps} steps does not fit the context {args.context}")

    if args.package:
        packages = dict(item.split("=", 1) for item in args.package)
        packages = {name: Path(path) for name, path in packages.items()}
    else:
        packages = {path: export_package(gguf, args.workdir, path, args.context) for path in PATHS}
    if len(packages) < 2:
        parser.error("give two or more packages to compare (--package NAME=PATH, repeated)")
    rates = edgeinfer_rates(packages, depths, args.steps, args.repeat, args.threads)
    llama, notes = llama_rates(gguf, args.llama_bin, depths, args.steps, args.llama_repeat, args.threads)
    deepest = max(depths)
    before, *afters = packages
    ratios = {f"{name}/{before} d{d}": median(rates[name][d]) / median(rates[before][d]) for name in afters for d in depths}
    if llama:
        ratios.update({f"{name}/llama.cpp d{d}": median(rates[name][d]) / median(llama[d]) for name in packages for d in depths})
    result = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": describe_machine(),
        "gguf": str(gguf),
        "packages": {p: str(v) for p, v in packages.items()},
        "settings": {"depths": depths, "steps": args.steps, "repeat": args.repeat, "llama_repeat": args.llama_repeat,
                     "threads": args.threads,
                     "context": args.context, "cache_fill": "random values, every page touched"},
        "edgeinfer": {p: {d: r for d, r in by_depth.items()} for p, by_depth in rates.items()},
        "llama_cpp": {"rates": llama, "notes": notes},
        "ratios": ratios,
    }
    result["agreement"] = agreement(packages)
    result["prefill_1024"] = prefill_rates(packages, 1024, args.threads)
    if args.profile:
        result["profile"] = {p: profile_decode(pkg, deepest, 16, args.threads) for p, pkg in packages.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"decode-depth-cpu-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
