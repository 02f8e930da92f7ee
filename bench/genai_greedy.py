"""Greedy ids of one package under edgeinfer and under onnxruntime-genai (the package folder as genai's model folder).

    python bench/genai_greedy.py PKG [--device cpu|cuda] [--tokens 32]
Each chat prompt goes through genai's own chat template and tokenizer; the ids must equal edgeinfer's chat encoding,
then both generate TOKENS greedy ids (to the first eos). Prints one JSON line per prompt and a summary; exits 1 when
any prompt's ids differ. On cuda, genai runs with the package's provider options (CUDA graphs on). genai's max_length
is the package's context, so that its shared cache buffer has edgeinfer's length: on CUDA, GroupQueryAttention splits
its work by the buffer's length, and a shorter buffer changes the fp16 sums enough to flip near-ties on random weights.
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


def genai_greedy(model: og.Model, ids: list[int], tokens: int, max_length: int,
                 expected: list[int] | None = None) -> tuple[list[int], dict | None]:
    """genai's greedy ids, and where they first part from EXPECTED: genai's logits of both ids at that step (equal
    values mean a tie that the two argmax kernels break differently)."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out, parted = [], None
    while not generator.is_done() and len(out) < tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        step = len(out) - 1
        if parted is None and expected is not None and step < len(expected) and out[step] != expected[step]:
            logits = generator.get_output("logits")
            row = logits.reshape(-1, logits.shape[-1])[-1]
            parted = {"step": step, "genai_id": out[step], "edgeinfer_id": expected[step],
                      "genai_logit": float(row[out[step]]), "edgeinfer_logit": float(row[expected[step]]),
                      "logits_dtype": str(row.dtype)}
    return out, parted


def edgeinfer_greedy(model, ids: list[int], tokens: int) -> list[int]:
    gen = model.generator(GREEDY)
    gen.append(ids)
    out = gen.extend(tokens)
    ends = [i for i, t in enumerate(out) if t in model.eos_token_ids]
    return out[: ends[0] + 1] if ends else out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    ours, theirs = edgeinfer.load(args.package, device=args.device), genai_model(args.package, args.device)
    tokenizer = og.Tokenizer(theirs)
    same_prompts = same_tokens = total = same_runs = same_again = 0
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = [int(i) for i in tokenizer.encode(tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True))]
        prompt_equal = ids == ours.encode_prompt(messages)
        expected = edgeinfer_greedy(ours, ids, args.tokens)
        got, parted = genai_greedy(theirs, ids, args.tokens, ours.context_length, expected)
        equal = common_prefix(got, expected)
        # The yardstick: edgeinfer against itself (GPU kernels need not give the same bits run to run).
        again = common_prefix(edgeinfer_greedy(ours, ids, args.tokens), expected)
        same_prompts, same_again = same_prompts + prompt_equal, same_again + again
        same_tokens, total, same_runs = same_tokens + equal, total + len(expected), same_runs + (got == expected)
        print(json.dumps({"prompt": prompt[:40], "prompt_ids_equal": prompt_equal, "prompt_tokens": len(ids),
                          "equal_tokens": equal, "edgeinfer_tokens": len(expected), "genai_tokens": len(got), "parted": parted,
                          "edgeinfer_again_equal_tokens": again,
                          "text": ours.tokenizer.decode(got)[:80]}))
    ok = same_prompts == same_runs == len(PROMPTS)
    print(json.dumps({"package": args.package, "device": args.device, "onnxruntime_genai": og.__version__,
                      "prompts_with_equal_ids": f"{same_prompts}/{len(PROMPTS)}", "equal_tokens": f"{same_tokens}/{total}",
                      "edgeinfer_again_equal_tokens": f"{same_again}/{total}",
                      "identical": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
