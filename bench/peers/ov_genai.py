"""openvino-genai peer: OpenVINO's own LLM path. optimum-intel exports the random checkpoint of the target shape to a
stateful OpenVINO IR with int4 weights (`optimum-cli export openvino --weight-format int4`, NNCF's data-free default:
asymmetric groups of 128, int8 backup where its rules keep 8 bits), and LLMPipeline runs it on the CPU device, timed
by a driver in the peer's venv (bench/.peers/venv-openvino; it pins transformers to what optimum-intel supports)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import PEERS, PeerNotInstalled, PeerResult, dir_bytes, from_driver_runs, last_line
from .ort_genai import hf_checkpoint

PYTHON = Path(os.environ.get("OPENVINO_GENAI_PYTHON", PEERS / "venv-openvino" / "bin" / "python"))
FIX = "bash bench/setup_peers.sh ov_genai"


def available() -> tuple[bool, str]:
    if not PYTHON.exists():
        return False, f"{PYTHON} is missing; fix: {FIX}"
    code = "import openvino as ov, openvino_genai as g, optimum.intel, transformers as t; print(ov.__version__.split('-')[0], g.__version__.split('-')[0], t.__version__)"
    probe = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    if probe.returncode:
        return False, f"{last_line(probe.stderr)} in {PYTHON}; fix: {FIX}"
    ov, genai, transformers = probe.stdout.split()
    return True, f"openvino {ov}, openvino-genai {genai} (transformers {transformers} in its venv)"


def export(workdir: Path) -> Path:
    out = workdir / "openvino-int4"
    if not (out / "openvino_model.xml").exists():
        cli = PYTHON.parent / "optimum-cli"
        cmd = [cli, "export", "openvino", "--model", hf_checkpoint(workdir, PYTHON), "--task", "text-generation-with-past",
               "--weight-format", "int4", out]
        subprocess.run(cmd, check=True, capture_output=True)
    return out


def run(prompt_lens: list[int], gen_len: int, repeat: int, threads: int, workdir: Path) -> list[PeerResult]:
    ok, why = available()
    if not ok:
        raise PeerNotInstalled(why)
    model = export(workdir.resolve())
    cmd = [PYTHON, Path(__file__).with_name("ov_genai_driver.py"), model, "--prompt-lens", *map(str, prompt_lens),
           "--gen-len", str(gen_len), "--repeat", str(repeat), "--threads", str(threads)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    notes = (f"openvino {out['openvino']}, openvino-genai {out['openvino_genai']}, optimum-intel int4 IR, CPU device "
             f"(inference precision {out['inference_precision']}, KV cache {out['kv_cache_precision']}), random weights")
    size = sum(p.stat().st_size for p in model.glob("openvino_model.*")) or dir_bytes(model)
    return from_driver_runs("openvino-genai", "int4", size, prompt_lens, gen_len, out["runs"], notes)
