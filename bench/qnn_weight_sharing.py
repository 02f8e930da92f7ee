"""Can the QNN EP here share weights between a qnn package's prefill and decode contexts?

    python bench/qnn_weight_sharing.py PACKAGE [--json out.json]

Compiles the package's prefill and decode graphs (single-part packages) twice in a scratch folder: apart (one
context binary each, what the backend's cache writes) and together with ep.share_ep_contexts /
ep.stop_share_ep_contexts (one binary holding both graphs over one copy of the weights). It checks greedy
tokens of the jointly compiled sessions against the CPU EP, then loads each cache in a fresh process, as a
later start would. On the x86-64 HTP simulator (onnxruntime 1.32, onnxruntime-qnn 2.7.0) the shared binary is
written, smaller, and computes the same tokens, but loading it kills the process with SIGSEGV inside
libQnnHtp.so; the backend therefore keeps one context per graph (tests/test_qnn.py watches for a fix).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.backends.qnn import SHARED_MEMORY
from edgeinfer.generator import Generator
from edgeinfer.package import load_manifest, load_package
from edgeinfer.sampler import GREEDY
from edgeinfer.static_runner import StaticEngine, StaticRunner

ROLES = ("prefill", "decode")


def session_options(share: bool, compile_context: bool = False, last: bool = False) -> ort.SessionOptions:
    qnn = get_backend("qnn")
    # Without the HTP shared-memory allocator: the simulator refuses it when loading a context (backends/qnn.py).
    so = qnn.session_options(BackendOptions(provider_options={SHARED_MEMORY: "0"}))
    if compile_context:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "0")
    if share:
        so.add_session_config_entry("ep.share_ep_contexts", "1")
        if last:
            so.add_session_config_entry("ep.stop_share_ep_contexts", "1")
    return so


def compile_pair(folder: Path, share: bool) -> dict:
    started = time.perf_counter()
    sessions = {role: ort.InferenceSession(str(folder / f"{role}.onnx"),
                                           sess_options=session_options(share, True, last=role == ROLES[-1]))
                for role in ROLES}
    seconds = time.perf_counter() - started
    binaries = {p.name: p.stat().st_size for p in sorted(folder.glob("*.bin"))}
    return {"sessions": sessions, "compile_s": round(seconds, 2), "binaries": binaries, "bytes": sum(binaries.values())}


def load_in_fresh_process(folder: Path, share: bool) -> dict:
    """Load both *_ctx.onnx as a later start would; a crash is reported, not raised."""
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "import onnxruntime as ort\n"
        "from qnn_weight_sharing import session_options\n"
        "t = time.perf_counter()\n"
        "for role in ('prefill', 'decode'):\n"
        "    ort.InferenceSession(%r + f'/{role}_ctx.onnx', sess_options=session_options(%r))\n"
        "print('LOAD_S', time.perf_counter() - t)\n"
    ) % (str(Path(__file__).parent), str(folder), share)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    result = {"returncode": run.returncode}
    if run.returncode < 0:
        result["signal"] = f"killed by signal {-run.returncode}" + (" (SIGSEGV)" if run.returncode == -11 else "")
    for line in run.stdout.splitlines():
        if line.startswith("LOAD_S"):
            result["load_s"] = round(float(line.split()[1]), 3)
    errors = [line for line in run.stderr.splitlines() if "LIBNATIVE" not in line and line.strip()]
    if errors:
        result["stderr_tail"] = errors[-3:]
    return result


def teacher_forced_logits(runner, vocab_size: int, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Logits after PROMPT and after each of TOKENS fed in turn (both sides see the same tokens, so one near-tie
    resolved differently does not send the comparison down another path)."""
    generator = Generator(runner, vocab_size, GREEDY)
    generator.append(prompt)
    rows = [generator.logits.copy()]
    for token in tokens[:-1]:
        generator.append([token])
        rows.append(generator.logits.copy())
    return np.stack(rows)


def htp_logits(sessions: dict, package: Path, prompt: list[int], tokens: list[int]) -> np.ndarray:
    loaded = load_package(package)
    manifest, embeddings = loaded.manifest, StaticEngine.host_embeddings(loaded)
    runner = StaticRunner({role: [sessions[role]] for role in ROLES}, manifest.graphs, manifest.spec,
                          manifest.context_length, embeddings)
    return teacher_forced_logits(runner, manifest.spec.vocab_size, prompt, tokens)


def cpu_tokens(package: Path, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """The CPU EP's greedy tokens from PROMPT and the logits they were picked from."""
    loaded = load_package(package)
    engine = StaticEngine(get_backend("cpu"), loaded, BackendOptions())
    generator = Generator(engine.new_runner(), loaded.manifest.spec.vocab_size, GREEDY)
    generator.append(prompt)
    tokens = generator.extend(steps)
    return tokens, teacher_forced_logits(engine.new_runner(), loaded.manifest.spec.vocab_size, prompt, tokens)


def probe(package: Path) -> dict:
    manifest = load_manifest(package)
    if any(len(manifest.graphs[role]["parts"]) != 1 for role in ROLES):
        raise SystemExit("the probe takes a single-part qnn package (the tiny preset, say)")
    prompt = np.random.default_rng(0).integers(0, min(256, manifest.spec.vocab_size), size=20).tolist()
    tokens, reference = cpu_tokens(package, prompt, 16)
    report = {"onnxruntime": ort.__version__, "onnxruntime_qnn": get_backend("qnn").versions()["onnxruntime-qnn"]}
    with tempfile.TemporaryDirectory(prefix="qnn-sharing-") as tmp:
        for share in (False, True):
            folder = Path(tmp) / ("shared" if share else "apart")
            folder.mkdir()
            for name in {manifest.graphs[role]["parts"][0][key] for role in ROLES for key in ("file", "data")}:
                shutil.copy(package / name, folder / name)
            compiled = compile_pair(folder, share)
            logits = htp_logits(compiled.pop("sessions"), package, prompt, tokens)
            compiled["top1_equal_cpu_ep"] = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
            compiled["max_logit_gap_cpu_ep"] = round(float(np.abs(logits - reference).max()), 5)
            compiled["fresh_load"] = load_in_fresh_process(folder, share)
            report["shared" if share else "apart"] = compiled
    report["shared_over_apart"] = round(report["shared"]["bytes"] / report["apart"]["bytes"], 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = probe(args.package)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
