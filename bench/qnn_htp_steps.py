"""A few decode steps of a qnn package on the HTP beside the CPU EP: the same QDQ graphs, token for token.

    python bench/qnn_htp_steps.py PACKAGE [--prompt "..."] [--raw] [--prompt-tokens 8] [--steps 4] [--json out.json]

The prompt goes through the decode graph one token at a time (the simulator spends minutes on a 128-token prefill
of the 1.5B), then STEPS greedy tokens; both devices use the package's smallest context bucket. Prints, per step,
the greedy token of each device and the relative difference of their logits, with the HTP's seconds per step and
the time the first load spent compiling.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.chat import ChatFormat
from edgeinfer.package import load_package
from edgeinfer.static_runner import StaticEngine
from edgeinfer.tokenizer import TextTokenizer


def prompt_ids(package, text: str, count: int, raw: bool = False) -> list[int]:
    """The end of TEXT as a chat prompt (where the assistant turn opens), or with RAW the start of TEXT itself."""
    tok = package.manifest.tokenizer
    tokenizer = TextTokenizer.from_package(package, tok["bos_token_id"], tok["add_bos_token"])
    if raw:
        return tokenizer.encode(text, parse_special=False, add_bos=False)[:count]
    chat = ChatFormat(tokenizer, tok["chat_template"], tok["chat_format"], package.manifest.context_length)
    return chat.encode(text)[-count:]


def decode_steps(engine: StaticEngine, ids: list[int], steps: int) -> dict:
    runner = engine.runner_for(engine.contexts[0])
    logits, seconds = [], []
    for position, token in enumerate(ids):
        started = time.perf_counter()
        runner.run([token], position)
        seconds.append(time.perf_counter() - started)
    tokens = []
    for step in range(steps):
        row = runner.last_logits().copy()
        logits.append(row)
        tokens.append(int(np.argmax(row)))
        started = time.perf_counter()
        runner.run(tokens[-1:], len(ids) + step)
        seconds.append(time.perf_counter() - started)
    return {"tokens": tokens, "logits": logits, "seconds_per_step": float(np.mean(seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt", default="Write a Python function that checks whether a string is a palindrome.")
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--raw", action="store_true", help="the prompt's own tokens (a text to continue), no chat template")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    package = load_package(args.package)
    ids = prompt_ids(package, args.prompt, args.prompt_tokens, args.raw)
    results = {}
    for device in ("cpu", "qnn"):
        backend = get_backend(device)
        started = time.perf_counter()
        engine = StaticEngine(backend, package, backend.package_options(package.manifest.precision, BackendOptions()))
        load_s = time.perf_counter() - started
        results[device] = {"load_s": round(load_s, 1), **decode_steps(engine, ids, args.steps)}
        print(f"{device}: loaded in {load_s:.1f} s, {results[device]['seconds_per_step']:.2f} s per decode step", flush=True)
    report = {"package": str(args.package), "context": package.manifest.graphs.get("contexts", [package.manifest.context_length])[0],
              "prompt_ids": ids, "steps": []}
    for step, (a, b) in enumerate(zip(results["cpu"]["logits"], results["qnn"]["logits"])):
        difference = float(np.abs(a - b).max() / np.abs(a).max())
        entry = {"cpu": results["cpu"]["tokens"][step], "qnn": results["qnn"]["tokens"][step], "relative_max_difference": difference}
        report["steps"].append(entry)
        print(f"step {step}: cpu {entry['cpu']} qnn {entry['qnn']} {'same' if entry['cpu'] == entry['qnn'] else 'DIFFERENT'} "
              f"(logits relative max difference {difference:.4f})")
    for device in results:
        report[device] = {k: v for k, v in results[device].items() if k != "logits"}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
