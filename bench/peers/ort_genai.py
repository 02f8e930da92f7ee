"""onnxruntime-genai peer: its own builder (`-p int4 -e cpu`) on a random checkpoint of the target shape,
timed with its generator API by a driver run in the peer's venv (bench/.peers/venv-genai)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import BENCH, PEERS, PeerNotInstalled, PeerResult, dir_bytes, from_driver_runs, last_line

PYTHON = PEERS / "venv-genai" / "bin" / "python"
VOCAB = PEERS / "ggml-vocab-qwen2.gguf"
FIX = "bash bench/setup_peers.sh ort_genai"
# What the builder and the random checkpoint (hf_checkpoint.py) import besides onnxruntime-genai itself.
NEEDS = ("torch", "transformers", "onnx", "onnx_ir", "gguf")


def available() -> tuple[bool, str]:
    if not PYTHON.exists() or not VOCAB.exists():
        return False, f"{PYTHON} or {VOCAB} is missing; fix: {FIX}"
    code = f"import {', '.join(NEEDS)}; import onnxruntime_genai as og, onnxruntime as o; print(og.__version__, o.__version__)"
    probe = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    if probe.returncode:
        return False, f"{last_line(probe.stderr)} in {PYTHON}; fix: {FIX}"
    genai, ort = probe.stdout.split()
    return True, f"onnxruntime-genai {genai} on onnxruntime {ort}"


def hf_checkpoint(workdir: Path, python: Path = PYTHON) -> Path:
    """The random-weight Hugging Face folder of the target shape, made once (shared with the optimum peer)."""
    out = workdir / "qwen2-1.5b-shape-random"
    if not (out / "model.safetensors").exists():
        subprocess.run([python, "-m", "bench.peers.hf_checkpoint", out, VOCAB], check=True, cwd=BENCH.parent,
                       capture_output=True)
    return out


def export(workdir: Path) -> Path:
    out = workdir / "genai-int4-cpu"
    if not (out / "genai_config.json").exists():
        cmd = [PYTHON, "-m", "onnxruntime_genai.models.builder", "-i", hf_checkpoint(workdir), "-o", out,
               "-p", "int4", "-e", "cpu", "-c", workdir / "hf-cache"]
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def run(prompt_lens: list[int], gen_len: int, repeat: int, threads: int, workdir: Path) -> list[PeerResult]:
    ok, why = available()
    if not ok:
        raise PeerNotInstalled(why)
    model = export(workdir.resolve())
    cmd = [PYTHON, Path(__file__).with_name("ort_genai_driver.py"), model, "--prompt-lens", *map(str, prompt_lens),
           "--gen-len", str(gen_len), "--repeat", str(repeat), "--threads", str(threads)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    notes = f"onnxruntime-genai {out['onnxruntime_genai']}, onnxruntime {out['onnxruntime']}, builder -p int4 -e cpu, random weights"
    return from_driver_runs("onnxruntime-genai", "int4", dir_bytes(model), prompt_lens, gen_len, out["runs"], notes)
