"""Greedy ids of one package under edgeinfer and under onnxruntime-genai (the package folder as genai's model folder).

    python bench/genai_greedy.py PKG [--device cpu|cuda] [--tokens 32]
Each chat prompt goes through genai's own chat template and tokenizer; the ids must equal edgeinfer's chat encoding,
then both generate TOKENS greedy ids (to the first eos). Prints one JSON line per prompt and a summary; exits 1 when
any prompt's ids differ. On cuda, genai runs with the package's provider options (CUDA graphs on).
"""

from __future__ import annotations

import argparse
import json
import sys

import onnxruntime_genai as og

import edgeinfer
from edgeinfer.sampler import GREEDY

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a hash map is in two sentences.",
    "What is 17 * 23? Answer with the number only.",
    "Translate 'good morning' into French, Spanish and German.",
]


def genai_model(folder: str, device: str) -> og.Model:
    config = og.Config(folder)
    if device == "cpu":
        config.clear_providers()  # a cuda package's own options name the GPU
    return og.Model(config)


def genai_greedy(model: og.Model, ids: list[int], tokens: int) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    ours, theirs = edgeinfer.load(args.package, device=args.device), genai_model(args.package, args.device)
    tokenizer = og.Tokenizer(theirs)
    same_prompts = same_tokens = total = same_runs = 0
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = [int(i) for i in tokenizer.encode(tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True))]
        prompt_equal = ids == ours.encode_prompt(messages)
        gen = ours.generator(GREEDY)
        gen.append(ids)
        expected = gen.extend(args.tokens)
        ends = [i for i, t in enumerate(expected) if t in ours.eos_token_ids]
        expected = expected[: ends[0] + 1] if ends else expected
        got = genai_greedy(theirs, ids, args.tokens)
        equal = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        same_prompts += prompt_equal
        same_tokens, total, same_runs = same_tokens + equal, total + len(expected), same_runs + (got == expected)
        print(json.dumps({"prompt": prompt[:40], "prompt_ids_equal": prompt_equal, "prompt_tokens": len(ids),
                          "equal_tokens": equal, "edgeinfer_tokens": len(expected), "genai_tokens": len(got),
                          "text": ours.tokenizer.decode(got)[:80]}))
    ok = same_prompts == same_runs == len(PROMPTS)
    print(json.dumps({"package": args.package, "device": args.device, "onnxruntime_genai": og.__version__,
                      "prompts_with_equal_ids": f"{same_prompts}/{len(PROMPTS)}", "equal_tokens": f"{same_tokens}/{total}",
                      "identical": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
