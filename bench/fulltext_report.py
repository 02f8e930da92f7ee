"""Tables of bench/results/float-path-fulltext-qwen2.5-coder-1.5b.md from the raw outputs that
bench/fulltext_device.sh brought back (bench/results/float-path-fulltext/): `edgeinfer eval`'s JSON (batched),
the decode-path eval's progress log, and llama-perplexity's logs.

llama-perplexity prints running figures after each chunk (same top p to 3 decimals of a percent, mean KLD to 5
decimals, PPL to 4); each chunk's own figures are rebuilt from two running ones (same top: counts, exact; KLD and
ln PPL: to about 1e-4). The decode-path log (edgeinfer main's progress line: running perplexity, running same top to
2 decimals) is rebuilt the same way (counts to +-1 token).

    python bench/fulltext_report.py [RAW_DIR] [--json OUT]      # prints the markdown tables
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np

RAW = Path(__file__).parent / "results" / "float-path-fulltext"
SCORED = 255  # tokens scored per chunk of 512 (positions 256..510)
LLAMA = {"q4_0-from-f32": "llama.cpp Q4_0 from the F32", "q4_k_m-from-f32": "llama.cpp Q4_K_M from the F32",
         "G": "the original Q4_K_M GGUF (llama.cpp)"}
EDGEINFER = ["cpu default (attention-down, lm_head 4)", "old default (q4km rule, lm_head 8)",
             "lossless import of the Q4_K_M GGUF"]


def per_chunk_from_running(running: list[float], scale: float, kind: str) -> list[float]:
    """Each chunk's own value from running ones: 'count' (running percentages of SCORED-token chunks -> counts),
    'mean' (running means), 'ppl' (running perplexities)."""
    out = []
    for k, value in enumerate(running, start=1):
        before = running[k - 2] if k > 1 else None
        if kind == "count":
            now = round(value / 100 * SCORED * k)
            out.append(now - (round(before / 100 * SCORED * (k - 1)) if before is not None else 0))
        elif kind == "mean":
            out.append(value * k - (before * (k - 1) if before is not None else 0))
        else:
            out.append(math.exp(k * math.log(value) - ((k - 1) * math.log(before) if before is not None else 0)))
    return out


def llama_kld(path: Path) -> dict:
    text = path.read_text(errors="replace")
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+) ±\s+[\d.]+\s+(-?[\d.]+) ±\s+[\d.]+\s+(-?[\d.]+) ±\s+[\d.]+\s+[\d.]+ ±\s+[\d.]+ %"
                      r"\s+([\d.]+) ±\s+[\d.]+ %", text, re.M)
    chunks = [int(r[0]) for r in rows]
    assert chunks == list(range(1, len(chunks) + 1)), path
    ppl, ln_ratio, kld, top = (np.array([float(r[i]) for r in rows]) for i in (1, 2, 3, 4))

    def stat(label, unit=""):
        m = re.search(rf"{re.escape(label)}\s*:\s*(-?[\d.]+)(?: ± \s*([\d.]+))?\s*{unit}", text)
        return (float(m.group(1)), float(m.group(2)) if m.group(2) else None)

    same, same_se = stat("Same top p", "%")
    kld_mean, kld_se = stat("Mean    KLD")
    return dict(
        chunks=len(chunks), scored_tokens=SCORED * len(chunks),
        perplexity=stat("Mean PPL(Q)")[0], base_perplexity_from_saved_logits=stat("Mean PPL(base)")[0],
        ln_perplexity_ratio=stat("Mean ln(PPL(Q)/PPL(base))")[0], ln_perplexity_ratio_stderr=stat("Mean ln(PPL(Q)/PPL(base))")[1],
        perplexity_ratio=stat("Mean PPL(Q)/PPL(base)")[0], perplexity_ratio_stderr=stat("Mean PPL(Q)/PPL(base)")[1],
        kld_mean=kld_mean, kld_stderr=kld_se, kld_median=stat("Median  KLD")[0], kld_p99=stat("99.0%   KLD")[0],
        kld_max=stat("Maximum KLD")[0], same_top_pct=same, same_top_stderr_pct=same_se,
        delta_p_mean_pct=stat("Mean    Δp", "%")[0],
        running_same_top_pct=top.tolist(),
        per_chunk_same_top_pct=[100 * c / SCORED for c in per_chunk_from_running(top.tolist(), 1, "count")],
        per_chunk_kld_mean=per_chunk_from_running(kld.tolist(), 1, "mean"),
        per_chunk_perplexity=per_chunk_from_running(ppl.tolist(), 1, "ppl"),
    )


def llama_base(path: Path) -> dict:
    text = path.read_text(errors="replace")
    running = [float(v) for v in re.findall(r"\[\d+\]([\d.]+),", text)]
    final = float(re.search(r"Final estimate: PPL = ([\d.]+)", text).group(1))
    return dict(perplexity=final, per_chunk_perplexity=per_chunk_from_running(running, 1, "ppl"), running=running)


def decode_log(path: Path) -> dict:
    rows = re.findall(r"^\[(\d+)/\d+\] running perplexity ([\d.]+), same top token ([\d.]+)%", path.read_text(), re.M)
    ppl = [float(r[1]) for r in rows]
    top = [float(r[2]) for r in rows]
    return dict(chunks=len(rows), running_perplexity=ppl, running_same_top_pct=top,
                per_chunk_same_top_pct=[100 * c / SCORED for c in per_chunk_from_running(top, 1, "count")],
                per_chunk_perplexity=per_chunk_from_running(ppl, 1, "ppl"))


def chunk_stderr(values: list[float]) -> float:
    """Standard error of the mean over chunks: tokens of one chunk are not independent, chunks nearly are."""
    v = np.asarray(values)
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def spread(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.min():.2f} / {np.percentile(v, 25):.2f} / {np.median(v):.2f} / {np.percentile(v, 75):.2f} / {v.max():.2f}"


def build(raw: Path) -> dict:
    reports = json.loads((raw / "eval-batched.json").read_text())
    base = llama_base(raw / "ppl-base.log")
    llama = {k: llama_kld(raw / f"kld-{k}.log") for k in LLAMA}
    decode = decode_log(raw / "eval-decode.log")
    ref_ppl = [c["reference_perplexity"] for c in reports[0]["per_chunk"]]
    sizes = {name: int(size) for size, name in (line.split("\t") for line in (raw / "sizes.txt").read_text().splitlines()
                                                if line and not line.startswith("#"))}
    cpu = (raw / "cpu.txt").read_text().splitlines()
    flags = set(cpu[1].split())
    machine = dict(cpu=cpu[0].split(":", 1)[1].strip(), logical_cpus=16,
                   isa=sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni"}))
    return dict(machine=machine, bytes=sizes, edgeinfer_batched=dict(zip(EDGEINFER, reports)), edgeinfer_decode_cpu_default=decode,
                llama_f32_base=base, llama=llama,
                reference_chunk_check=dict(
                    eval_fp32_package_perplexity=reports[0]["reference_perplexity"],
                    llama_f32_perplexity=base["perplexity"],
                    max_chunk_perplexity_rel_diff=max(abs(a / b - 1) for a, b in zip(ref_ppl, base["per_chunk_perplexity"]))))


def markdown(data: dict) -> str:
    out = []
    rows = []
    for name, r in data["edgeinfer_batched"].items():
        tops = [c["same_top_pct"] for c in r["per_chunk"]]
        rows.append((f"edgeinfer: {name}", r["same_top_pct"], r["same_top_stderr_pct"], chunk_stderr(tops), spread(tops),
                     r["perplexity"], r["perplexity_ratio"], r["perplexity_ratio"] * r["ln_perplexity_ratio_stderr"],
                     r["kld_mean"], r["kld_stderr"], r["kld_p99"], r["kld_max"]))
    for key, name in LLAMA.items():
        r = data["llama"][key]
        tops = r["per_chunk_same_top_pct"]
        rows.append((name, r["same_top_pct"], r["same_top_stderr_pct"], chunk_stderr(tops), spread(tops),
                     r["perplexity"], r["perplexity_ratio"], r["perplexity_ratio_stderr"], r["kld_mean"], r["kld_stderr"],
                     r["kld_p99"], r["kld_max"]))
    out.append("| | same top token | ± per token | ± per chunk | by chunk: min / 25% / median / 75% / max | PPL | PPL ratio "
               "| mean KLD | 99% KLD | max KLD |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for n, top, se, cse, sp, ppl, ratio, rse, kld, kse, p99, kmax in rows:
        out.append(f"| {n} | **{top:.2f}%** | {se:.2f} | {cse:.2f} | {sp} | {ppl:.4f} | {ratio:.4f} ± {rse:.4f} "
                   f"({100 * (ratio - 1):+.2f}%) | {kld:.{6 if kld < 1e-3 else 5}f} ± {kse:.{6 if kld < 1e-3 else 5}f} | {p99:.4f} "
                   f"| {kmax:.3f} |")
    out.append("")

    # paired by chunk against llama.cpp's Q4_0: the chunks' own difficulty cancels
    q4_0 = np.array(data["llama"]["q4_0-from-f32"]["per_chunk_same_top_pct"])
    for name, r in data["edgeinfer_batched"].items():
        diffs = np.array([c["same_top_pct"] for c in r["per_chunk"]]) - q4_0
        wins = int((diffs > 0).sum()), int((diffs < 0).sum())
        out.append(f"- {name} minus llama.cpp Q4_0, same top token: {diffs.mean():+.2f} ± {chunk_stderr(diffs.tolist()):.2f} "
                   f"points (mean of the chunks' differences ± its standard error; higher in {wins[0]} chunks, lower in {wins[1]})")
    out.append("")

    # decode steps against the batched scoring, on the chunks the decode run finished
    d = data["edgeinfer_decode_cpu_default"]
    n = d["chunks"]
    batched = data["edgeinfer_batched"][EDGEINFER[0]]["per_chunk"][:n]
    b_top = [c["same_top_pct"] for c in batched]
    diffs = np.array(d["per_chunk_same_top_pct"]) - np.array(b_top)
    b_ppl = math.exp(np.mean([math.log(c["perplexity"]) for c in batched]))
    out.append(f"decode steps vs batched, cpu default, chunks 1-{n}: same top {d['running_same_top_pct'][-1]:.2f}% vs "
               f"{np.mean(b_top):.2f}% (paired by chunk: decode minus batched {diffs.mean():+.2f} ± {chunk_stderr(diffs.tolist()):.2f} points), "
               f"PPL {d['running_perplexity'][-1]:.4f} vs {b_ppl:.4f}")
    out.append("")

    # per chunk
    names = ["fp32 pkg PPL", "llama F32 PPL", "cpu default", "cpu default, decode", "old default", "lossless", "Q4_0",
             "Q4_K_M from F32", "Q4_K_M GGUF"]
    out.append("| chunk | " + " | ".join(names) + " |")
    out.append("|" + "---|" * (len(names) + 1))
    eb = list(data["edgeinfer_batched"].values())
    for i in range(len(eb[0]["per_chunk"])):
        cells = [f"{eb[0]['per_chunk'][i]['reference_perplexity']:.3f}", f"{data['llama_f32_base']['per_chunk_perplexity'][i]:.3f}"]
        cells.append(f"{eb[0]['per_chunk'][i]['same_top_pct']:.1f}")
        cells.append(f"{d['per_chunk_same_top_pct'][i]:.1f}" if i < n else "")
        cells += [f"{eb[j]['per_chunk'][i]['same_top_pct']:.1f}" for j in (1, 2)]
        cells += [f"{data['llama'][k]['per_chunk_same_top_pct'][i]:.1f}" for k in LLAMA]
        out.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", nargs="?", default=str(RAW))
    parser.add_argument("--json")
    args = parser.parse_args()
    data = build(Path(args.raw))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(data))


if __name__ == "__main__":
    main()
