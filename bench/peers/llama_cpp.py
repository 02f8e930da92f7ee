"""llama.cpp peer: llama-bench on Q4_0 (requantized once from the real GGUF) and on Q4_K_M as shipped.
The GGUF is bench/weights.py's: EDGEINFER_QWEN_GGUF, else weights/ in the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.weights import FETCH_HINT, real_gguf

from . import PEERS, PeerNotInstalled, PeerResult, result

BIN = PEERS / "llama.cpp" / "build" / "bin"
FIX = "bash bench/setup_peers.sh llama_cpp weights"


def available(gguf: Path | None = None) -> tuple[bool, str]:
    gguf = gguf or real_gguf()
    for tool in ("llama-bench", "llama-quantize"):
        if not (BIN / tool).exists():
            return False, f"{BIN / tool} is missing; fix: {FIX}"
    if not gguf.exists():
        return False, f"{gguf} is missing; fix: {FETCH_HINT}"
    return True, f"llama.cpp tools in {BIN}, weights {gguf}"


def q4_0(gguf: Path, workdir: Path) -> Path:
    """The Q4_0 requantization of `gguf`, made once (a lossy copy: timing only, not quality)."""
    out = workdir / f"{gguf.stem}.q4_0.gguf"
    if not out.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run([BIN / "llama-quantize", "--allow-requantize", gguf, tmp, "Q4_0"], check=True,
                       capture_output=True)
        tmp.rename(out)
    return out


def test_name(row: dict) -> str:
    """llama-bench's own names: pp128, tg64, tg64 @ d128 (decode after 128 tokens in the cache)."""
    name = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
    return name + (f" @ d{row['n_depth']}" if row.get("n_depth") else "")


def bench(model: Path, prompt_lens: list[int], gen_len: int, repeat: int, threads: int) -> list[dict]:
    """One llama-bench call; depths 0 and each prompt length, so decode is also timed after a prompt."""
    lens = ",".join(map(str, prompt_lens))
    cmd = [BIN / "llama-bench", "-m", model, "-o", "json", "-p", lens, "-n", str(gen_len), "-d", "0," + lens,
           "-r", str(repeat), "-t", str(threads)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def run(prompt_lens: list[int], gen_len: int, repeat: int, threads: int, workdir: Path,
        gguf: Path | None = None) -> list[PeerResult]:
    gguf = gguf or real_gguf()
    ok, why = available(gguf)
    if not ok:
        raise PeerNotInstalled(why)
    results = []
    for weights, model in (("Q4_0", q4_0(gguf, workdir)), ("Q4_K_M", gguf)):
        for row in bench(model, prompt_lens, gen_len, repeat, threads):
            notes = f"llama-bench {row['build_commit']}, {row['n_threads']} threads, type {row['model_type']}"
            results.append(result("llama.cpp", weights, model.stat().st_size, test_name(row), row["samples_ts"],
                                  notes=notes))
    return results
