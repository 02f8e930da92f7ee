"""Greedy answers on real weights through `edgeinfer run`, and their first tokens against transformers.

    python bench/real_greedy.py GGUF PACKAGE [--prompt "..." ...] [--tokens 32] [--device cpu]

PACKAGE is an export of GGUF (any precision or target; a qnn package runs its QDQ graphs on the CPU EP by default);
transformers runs the same GGUF dequantized to fp32 with the same chat-templated prompt ids (loaded once), and the
script prints both continuations of each prompt and where they first differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a hash map is and when to use one.",
    "What is the difference between a list and a tuple in Python?",
)


def edgeinfer_run(package: Path, prompt: str, tokens: int, device: str) -> dict:
    command = [sys.executable, "-m", "edgeinfer.cli", "run", str(package), prompt, "--temperature", "0",
               "--max-new-tokens", str(tokens), "--json", "--device", device, "--ignore-eos"]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def transformers_model(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def transformers_greedy(model, prompt_ids: list[int], tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=tokens, do_sample=False,
                             min_new_tokens=tokens)
    return out[0, len(prompt_ids):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("package", type=Path)
    parser.add_argument("--prompt", action="append", help="repeatable (default: three short programming questions)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from edgeinfer.chat import ChatFormat
    from edgeinfer.package import load_package
    from edgeinfer.tokenizer import TextTokenizer

    loaded = load_package(args.package, verify=False)  # the tokenizer and chat format only: no sessions here
    tok = loaded.manifest.tokenizer
    tokenizer = TextTokenizer.from_package(loaded, tok["bos_token_id"], tok["add_bos_token"])
    chat = ChatFormat(tokenizer, tok["chat_template"], tok["chat_format"], loaded.manifest.context_length)
    runs = [(prompt, edgeinfer_run(args.package, prompt, args.tokens, args.device)) for prompt in args.prompt or PROMPTS]
    reference = transformers_model(args.gguf)
    for prompt, ours in runs:
        theirs = transformers_greedy(reference, chat.encode(prompt), args.tokens)
        same = next((i for i, (a, b) in enumerate(zip(ours["token_ids"], theirs)) if a != b),
                    min(len(ours["token_ids"]), len(theirs)))
        print(f"prompt:        {json.dumps(prompt)}")
        print("edgeinfer:    ", json.dumps(ours["text"]))
        print("transformers: ", json.dumps(tokenizer.decode(theirs)))
        print(f"first {same} of {args.tokens} tokens identical; edgeinfer TTFT {ours['timings']['ttft_s'] * 1000:.0f} ms, "
              f"decode {ours['timings']['decode_tokens_per_s']:.1f} tok/s\n")


if __name__ == "__main__":
    main()
