"""Greedy answer on real weights through `edgeinfer run`, and its first tokens against transformers.

    python bench/real_greedy.py GGUF PACKAGE [--prompt "..."] [--tokens 32]

PACKAGE is an export of GGUF (any precision); transformers runs the same GGUF dequantized to fp32 with the
same chat-templated prompt ids, and the script prints both continuations and where they first differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPT = "Write a Python function that checks whether a string is a palindrome."


def edgeinfer_run(package: Path, prompt: str, tokens: int) -> dict:
    command = [sys.executable, "-m", "edgeinfer.cli", "run", str(package), prompt, "--temperature", "0",
               "--max-new-tokens", str(tokens), "--json"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def transformers_greedy(gguf: Path, prompt_ids: list[int], tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    import edgeinfer

    ours = edgeinfer_run(args.package, args.prompt, args.tokens)
    model = edgeinfer.load(args.package, verify=False)
    prompt_ids = model.encode_prompt(args.prompt)
    theirs = transformers_greedy(args.gguf, prompt_ids, args.tokens)
    same = next((i for i, (a, b) in enumerate(zip(ours["token_ids"], theirs)) if a != b), min(len(ours["token_ids"]), len(theirs)))
    print("edgeinfer:    ", json.dumps(ours["text"]))
    print("transformers: ", json.dumps(model.tokenizer.decode(theirs)))
    print(f"first {same} of {args.tokens} tokens identical; edgeinfer TTFT {ours['timings']['ttft_s'] * 1000:.0f} ms, "
          f"decode {ours['timings']['decode_tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
