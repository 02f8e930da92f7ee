"""optimum peer: `optimum-cli export onnx --task text-generation-with-past` of the random checkpoint, then
ORTModelForCausalLM.generate, in fp32 as exported and with its MatMuls at 4 bits (onnx_int4.py).
Runs in the peer's venv (bench/.peers/venv-optimum: optimum-onnx pins transformers < 4.58)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import PEERS, PeerNotInstalled, PeerResult, dir_bytes, from_driver_runs, last_line, ort_genai

PYTHON = PEERS / "venv-optimum" / "bin" / "python"
HERE = Path(__file__).resolve().parent
FIX = "bash bench/setup_peers.sh optimum"
# optimum's runtime, the random checkpoint's needs (hf_checkpoint.py) and the 4-bit quantizer (onnx_int4.py).
PROBE = ("import torch, gguf, onnx_ir, optimum.onnxruntime, onnxruntime as o; "
         "from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer; print(o.__version__)")


def available() -> tuple[bool, str]:
    if not PYTHON.exists():
        return False, f"{PYTHON} is missing; fix: {FIX}"
    probe = subprocess.run([PYTHON, "-c", PROBE], capture_output=True, text=True)
    if probe.returncode:
        return False, f"{last_line(probe.stderr)} in {PYTHON}; fix: {FIX}"
    return True, f"optimum on onnxruntime {probe.stdout.strip()}"


def export(workdir: Path) -> dict[str, Path]:
    """fp32 export and its int4 copy, each made once."""
    fp32, int4 = workdir / "optimum-fp32", workdir / "optimum-int4"
    if not (fp32 / "model.onnx").exists():
        hf = ort_genai.hf_checkpoint(workdir, python=PYTHON)
        subprocess.run([PYTHON.parent / "optimum-cli", "export", "onnx", "--model", hf,
                        "--task", "text-generation-with-past", fp32], check=True, capture_output=True)
    if not (int4 / "model.onnx").exists():
        subprocess.run([PYTHON, HERE / "onnx_int4.py", fp32, int4], check=True, capture_output=True)
    return {"fp32": fp32, "int4": int4}


def run(prompt_lens: list[int], gen_len: int, repeat: int, threads: int, workdir: Path) -> list[PeerResult]:
    ok, why = available()
    if not ok:
        raise PeerNotInstalled(why)
    workdir = workdir.resolve()
    results = []
    for weights, model in export(workdir).items():
        cmd = [PYTHON, HERE / "optimum_ort_driver.py", model, "--prompt-lens", *map(str, prompt_lens),
               "--gen-len", str(gen_len), "--repeat", str(repeat), "--threads", str(threads)]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        v = out["versions"]
        notes = (f"optimum-onnx {v['optimum-onnx']}, onnxruntime {v['onnxruntime']}, transformers {v['transformers']}, "
                 "random weights" + ("; MatMulNBits block 32, accuracy_level 4" if weights == "int4" else ""))
        results += from_driver_runs("optimum ORTModelForCausalLM", weights, dir_bytes(model), prompt_lens, gen_len,
                                    out["runs"], notes)
    return results
