"""Peers that edgeinfer is benchmarked against, side by side on one machine.

Each peer module (edgeinfer_cpu, llama_cpp, ort_genai, optimum_ort) has `available() -> (ok, reason)`,
`run(prompt_lens, gen_len, repeat, threads, workdir) -> list[PeerResult]` and `FIX`, the command that sets it up
(said when it cannot run). Peers live under bench/.peers/, made by bench/setup_peers.sh; derived models are made
once in `workdir`.
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.bench.results import BenchRecord

BENCH = Path(__file__).resolve().parent.parent
PEERS = BENCH / ".peers"

# DeepSeek-R1-Distill-Qwen-1.5B shape, as transformers' Qwen2Config arguments (random weights are enough to time it).
TARGET_SHAPE = dict(
    hidden_size=1536,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    head_dim=128,
    intermediate_size=8960,
    vocab_size=151936,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    bos_token_id=151643,
    eos_token_id=151643,
)


class PeerNotInstalled(RuntimeError):
    """A peer is missing here; the message says how to install it."""


def last_line(text: str | bytes | None) -> str:
    """The last non-empty line of a tool's output: for a Python traceback, the exception itself."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_reason(error: BaseException) -> str:
    """One line on why a peer failed: for a failed tool, which one, its exit status and its last words."""
    if isinstance(error, subprocess.CalledProcessError):
        cmd = error.cmd if isinstance(error.cmd, (list, tuple)) else [error.cmd]
        tool = " ".join(Path(str(c)).name if i == 0 else str(c) for i, c in enumerate(cmd[:3]))
        said = last_line(error.stderr) or last_line(error.stdout) or "no output"
        return f"`{tool} ...` exited {error.returncode}: {said}"
    return f"{type(error).__name__}: {last_line(str(error)) or repr(error)}"


@dataclass
class PeerResult:
    system: str
    weights: str
    file_bytes: int
    test: str  # "pp128", "tg64": llama-bench's names
    tokens_per_s: float  # median over the repeats
    tokens_per_s_min: float
    tokens_per_s_max: float
    ttft_ms: float | None
    notes: str = ""


def bench_records(results: list[PeerResult], device: str) -> list[BenchRecord]:
    """The peers' llama-bench tests as edgeinfer's bench records: pp{P} (prefill, TTFT) and tg{N} @ d{P} (decode
    after that prompt) of one system and weights become one pp{P}+tg{N} row, as `edgeinfer bench` names it."""
    prefill = {(r.system, r.weights, r.test): r for r in results if r.test.startswith("pp") and "@" not in r.test}
    rows = []
    for r in results:
        if not (r.test.startswith("tg") and " @ d" in r.test):
            continue
        new, prompt = r.test.removeprefix("tg").split(" @ d")
        pp = prefill.get((r.system, r.weights, f"pp{prompt}"))
        rows.append(BenchRecord(
            device=device, backend="cpu", precision=r.weights, model="1.5B shape",
            ttft_ms=pp.ttft_ms if pp else None, prefill_tokens_per_s=pp.tokens_per_s if pp else None,
            decode_tokens_per_s=r.tokens_per_s, context_size=None, file_bytes=r.file_bytes,
            prompt_tokens=int(prompt), new_tokens=int(new), test=f"pp{prompt}+tg{new}", system=r.system,
        ))
    return rows


def result(system: str, weights: str, file_bytes: int, test: str, rates: list[float],
           ttft_ms: list[float] | None = None, notes: str = "") -> PeerResult:
    """Summarize the per-run rates of one test (median, min, max)."""
    ttft = statistics.median(ttft_ms) if ttft_ms else None
    return PeerResult(system, weights, file_bytes, test, statistics.median(rates), min(rates), max(rates), ttft, notes)


def dir_bytes(path: Path) -> int:
    """Bytes of the model files (graph and external weights) under an exported folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.name.endswith((".onnx", ".onnx.data", ".onnx_data")))


def from_driver_runs(system: str, weights: str, file_bytes: int, prompt_lens: list[int], gen_len: int,
                     runs: list[dict], notes: str) -> list[PeerResult]:
    """Rows pp{P} (prompt / TTFT) and tg{N} @ d{P} (decode after the prompt) from a timing driver's runs."""
    results = []
    for p in prompt_lens:
        mine = [r for r in runs if r["prompt_len"] == p]
        results.append(result(system, weights, file_bytes, f"pp{p}", [r["prefill_tok_s"] for r in mine],
                              [r["ttft_ms"] for r in mine], notes + "; pp = prompt / TTFT"))
        results.append(result(system, weights, file_bytes, f"tg{gen_len} @ d{p}", [r["decode_tok_s"] for r in mine],
                              notes=notes))
    return results
