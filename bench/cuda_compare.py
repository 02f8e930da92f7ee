"""edgeinfer's CUDA backend against onnxruntime-genai-cuda on one GPU, plus GPU/CPU token parity.

Run by bench/cuda_h100.sh on the lent H100; each step is a subcommand so the script can run them in order:
    python bench/cuda_compare.py hf-checkpoint OUT_DIR            random Qwen2 of the 1.5B preset's shape (for genai's builder)
    python bench/cuda_compare.py parity OUT.json [--large-cpu PKG --large-cuda PKG]
    python bench/cuda_compare.py edge-eager OUT.json              edgeinfer bench with CUDA graphs off
    python bench/cuda_compare.py genai MODEL_DIR OUT.json [--cuda-graph]
    python bench/cuda_compare.py compare OUT.md EDGE.json [EDGE_EAGER.json] GENAI.json [GENAI_GRAPH.json]
Same shape, same test for every system: batch 1, greedy, random prompt ids, P = 128 and 1024, 256 new tokens,
one warm-up run then REPEAT measured runs; TTFT = prompt in -> first token id on the host.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESET = "deepseek-r1-distill-qwen-1.5b"
PROMPT_LENS = (128, 1024)
GEN_LEN = 256
REPEAT = 5


# -- a Hugging Face folder of the preset's shape, for onnxruntime-genai's builder -----------------------------
def hf_checkpoint(out: Path, preset: str = PRESET) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from edgeinfer.export.exporter import _write_tokenizer
    from edgeinfer.export.presets import PRESETS, PresetSource

    spec = PRESETS[preset].spec
    config = Qwen2Config(
        hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, intermediate_size=spec.intermediate_size, vocab_size=spec.vocab_size,
        rope_theta=spec.rope_theta, rms_norm_eps=spec.rms_norm_eps, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False, dtype="float16",
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    _write_tokenizer(out, PresetSource(preset).tokenizer())
    print(json.dumps({"hf_dir": str(out), "parameters": sum(p.numel() for p in model.parameters())}))


# -- parity: GPU tokens against CPU tokens on the same weights -----------------------------------------------
def _greedy_tokens(model, prompt: list[int], steps: int) -> list[int]:
    from edgeinfer.sampler import GREEDY

    gen = model.generator(GREEDY)
    gen.append(prompt)
    return gen.extend(steps)


def _forced_top1(model, ids: list[int], start: int) -> np.ndarray:
    """argmax after each of IDS[start:], feeding IDS one token at a time after a prefill of IDS[:start]."""
    from edgeinfer.sampler import GREEDY

    gen = model.generator(GREEDY)
    gen.append(ids[:start])
    rows = [gen.logits.copy()]
    for t in ids[start:-1]:
        gen.append([t])
        rows.append(gen.logits.copy())
    return np.array(rows)


def _compare(cpu_model, gpu_model, prompts: list[list[int]], steps: int) -> dict:
    same_runs, agree, total, margins = 0, 0, 0, []
    for prompt in prompts:
        cpu_tokens = _greedy_tokens(cpu_model, prompt, steps)
        gpu_tokens = _greedy_tokens(gpu_model, prompt, steps)
        same_runs += cpu_tokens == gpu_tokens
        # Teacher forcing along the CPU's tokens: the GPU's top-1 at every step, errors do not compound.
        ids = prompt + cpu_tokens
        cpu_rows = _forced_top1(cpu_model, ids, len(prompt))
        gpu_rows = _forced_top1(gpu_model, ids, len(prompt))
        top = np.sort(cpu_rows, axis=-1)
        hit = cpu_rows.argmax(-1) == gpu_rows.argmax(-1)
        agree += int(hit.sum())
        total += hit.size
        margins += [float(m) for m in (top[:, -1] - top[:, -2])[~hit]]  # how close the CPU's top two were on a miss
    return {
        "prompts": len(prompts), "steps": steps,
        "greedy_runs_identical": f"{same_runs}/{len(prompts)}",
        "top1_agreement": agree / total, "positions": total,
        "cpu_top2_margin_on_misses": margins,
    }


def parity(out: Path, large_cpu: str | None, large_cuda: str | None) -> None:
    import tempfile

    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions
    from tests.conftest import make_hf_checkpoint

    work = Path(tempfile.mkdtemp(prefix="parity-"))
    hf = make_hf_checkpoint(work / "hf-tiny")  # the tests' tiny Qwen2: peaky logits, few exact ties
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, size=n).tolist() for n in (1, 7, 40, 100)]
    results = {}
    sources = (("tiny Qwen2 (the tests' HF checkpoint)", str(hf)), ("preset:tiny-qwen2", "preset:tiny-qwen2"))
    for n, (source_name, source) in enumerate(sources):
        for precision in ("fp32", "w4a16"):
            pkgs = {}
            for target in ("cpu", "cuda"):
                pkgs[target] = work / f"{n}-{precision}-{target}"
                export(source, pkgs[target], ExportOptions(precision=precision, target=target, context_length=512),
                       force=True, progress=False)
            cpu = edgeinfer.load(pkgs["cpu"])
            for graphs in ("1", "0"):
                gpu = edgeinfer.load(pkgs["cuda"], device="cuda", options=BackendOptions(provider_options={"enable_cuda_graph": graphs}))
                key = f"{source_name} {precision}: cuda (graphs {'on' if graphs == '1' else 'off'}) vs cpu"
                results[key] = _compare(cpu, gpu, prompts, 32)
                print(key, {k: v for k, v in results[key].items() if k != "cpu_top2_margin_on_misses"}, flush=True)
    if large_cpu and large_cuda:
        cpu, gpu = edgeinfer.load(large_cpu, verify=False), edgeinfer.load(large_cuda, device="cuda", verify=False)
        big_prompts = [np.random.default_rng(s).integers(0, 136000, size=n).tolist() for s, n in ((1, 16), (2, 128))]
        key = f"{PRESET} w4a16 (random weights): cuda vs cpu"
        results[key] = _compare(cpu, gpu, big_prompts, 32)
        print(key, {k: v for k, v in results[key].items() if k != "cpu_top2_margin_on_misses"}, flush=True)
    out.write_text(json.dumps(results, indent=2))


# -- edgeinfer with CUDA graphs off (the ablation) ------------------------------------------------------------
def edge_eager(out: Path) -> None:
    from edgeinfer.backends import BackendOptions
    from edgeinfer.bench.results import save_json
    from edgeinfer.bench.runner import bench

    options = BackendOptions(provider_options={"enable_cuda_graph": "0"})
    result = bench("cuda", None, PROMPT_LENS, GEN_LEN, REPEAT, 1, 4096, "w4a16", sweep=False, options=options, progress=False)
    save_json(result, out)
    for test in result["tests"]:
        print("edgeinfer (graphs off)", test["name"], json.dumps(test["summary"]))


# -- onnxruntime-genai-cuda on the same test -------------------------------------------------------------------
def genai(model_dir: Path, out: Path, cuda_graph: bool) -> None:
    import onnxruntime as ort
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    if cuda_graph:
        config.clear_providers()
        config.append_provider("cuda")
        config.set_provider_option("cuda", "enable_cuda_graph", "1")
    model = og.Model(config)
    rng = random.Random(0)
    runs = []
    for p in PROMPT_LENS:
        for i in range(REPEAT + 1):
            prompt = [rng.randrange(0, 136000) for _ in range(p)]
            params = og.GeneratorParams(model)
            total = p + GEN_LEN
            params.set_search_options(do_sample=False, max_length=total, min_length=total)
            generator = og.Generator(model, params)
            t0 = time.perf_counter()
            generator.append_tokens(prompt)
            generator.generate_next_token()
            generator.get_next_tokens()  # the id on the host, as an app streaming text needs it
            t_first = time.perf_counter()
            for _ in range(GEN_LEN - 1):
                generator.generate_next_token()
                generator.get_next_tokens()
            t_last = time.perf_counter()
            if i:  # the first run of each length warms up
                runs.append({"prompt_tokens": p, "ttft_ms": (t_first - t0) * 1e3,
                             "decode_tokens_per_s": (GEN_LEN - 1) / (t_last - t_first)})
            del generator
    result = {"system": "onnxruntime-genai-cuda" + (" + cuda graph" if cuda_graph else ""),
              "onnxruntime_genai": og.__version__, "onnxruntime": ort.__version__, "model_dir": str(model_dir),
              "model_bytes": sum(f.stat().st_size for f in Path(model_dir).iterdir() if f.is_file()),
              "settings": {"prompt_lens": list(PROMPT_LENS), "gen_len": GEN_LEN, "repeat": REPEAT, "warmup": 1},
              "runs": runs}
    out.write_text(json.dumps(result, indent=2))
    for p in PROMPT_LENS:
        mine = [r for r in runs if r["prompt_tokens"] == p]
        print(result["system"], p, f"ttft {statistics.median(r['ttft_ms'] for r in mine):.2f} ms",
              f"decode {statistics.median(r['decode_tokens_per_s'] for r in mine):.1f} tok/s")


# -- the comparison table --------------------------------------------------------------------------------------
def _edge_rows(path: Path, label: str) -> list[dict]:
    result = json.loads(path.read_text())
    rows = []
    for test in result["tests"]:
        s = test["summary"]
        rows.append({"system": label, "prompt": test["prompt_tokens"], "ttft": s["ttft_ms"],
                     "decode": s["decode_tokens_per_s"], "bytes": result["model"]["file_bytes"]})
    return rows


def _genai_rows(path: Path) -> list[dict]:
    from edgeinfer.bench.stats import summarize

    result = json.loads(path.read_text())
    rows = []
    for p in result["settings"]["prompt_lens"]:
        mine = [r for r in result["runs"] if r["prompt_tokens"] == p]
        rows.append({"system": f"{result['system']} {result['onnxruntime_genai']}", "prompt": p,
                     "ttft": summarize([r["ttft_ms"] for r in mine]),
                     "decode": summarize([r["decode_tokens_per_s"] for r in mine]), "bytes": result["model_bytes"]})
    return rows


def compare(out: Path, paths: list[Path]) -> None:
    rows, machine = [], ""
    for path in paths:
        data = json.loads(path.read_text())
        if "tests" in data:
            graphs = data["backend_options"]["provider_options"].get("enable_cuda_graph", "1") != "0"
            rows += _edge_rows(path, f"edgeinfer {data['edgeinfer_version']} {data['device']}" + ("" if graphs else " (graphs off)"))
            machine = machine or f"{data['device_description']}; {json.dumps(data['versions'])}"
        else:
            rows += _genai_rows(path)
    fmt = lambda s, d=1: f"{s['median']:.{d}f} ± {s['stddev']:.{d}f}"  # noqa: E731
    lines = [f"Machine: {machine}", "",
             f"Batch 1, greedy, random prompt ids, {GEN_LEN} new tokens, median ± stddev of {REPEAT} runs after 1 warm-up.", "",
             "| system | model bytes | prompt | TTFT ms | decode tok/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['bytes'] / 2**30:.2f} GiB | {r['prompt']} | {fmt(r['ttft'], 2)} | {fmt(r['decode'])} |")
    base = {r["prompt"]: r for r in rows if r["system"].startswith("onnxruntime-genai-cuda 0")}
    ours = [r for r in rows if r["system"].startswith("edgeinfer") and "off" not in r["system"]]
    if base and ours:
        lines += ["", "edgeinfer (graphs on) / onnxruntime-genai (default config):"]
        for r in ours:
            b = base.get(r["prompt"])
            if b:
                lines.append(f"- P={r['prompt']}: decode x{r['decode']['median'] / b['decode']['median']:.2f}, "
                             f"TTFT {r['ttft']['median']:.2f} ms vs {b['ttft']['median']:.2f} ms")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("hf-checkpoint")
    p.add_argument("out", type=Path)
    p.add_argument("--preset", default=PRESET)
    p = sub.add_parser("parity")
    p.add_argument("out", type=Path)
    p.add_argument("--large-cpu")
    p.add_argument("--large-cuda")
    sub.add_parser("edge-eager").add_argument("out", type=Path)
    p = sub.add_parser("genai")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--cuda-graph", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("out", type=Path)
    p.add_argument("results", type=Path, nargs="+")
    args = ap.parse_args()
    if args.step == "hf-checkpoint":
        hf_checkpoint(args.out, args.preset)
    elif args.step == "parity":
        parity(args.out, args.large_cpu, args.large_cuda)
    elif args.step == "edge-eager":
        edge_eager(args.out)
    elif args.step == "genai":
        genai(args.model_dir, args.out, args.cuda_graph)
    else:
        compare(args.out, args.results)


if __name__ == "__main__":
    main()
