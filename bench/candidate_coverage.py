"""How often a sampled token can be drawn from the 64 most likely tokens alone (what the GPU hands over,
edgeinfer/candidates.py), on real text: the share of steps that never read the whole logits row.

    python bench/candidate_coverage.py PACKAGE [--tokens 200] [--temperature 0.6] [--top-p 0.95] [--top-k 0]

Runs on the CPU (any package); each step samples as the app would and also asks sample_from_candidates
whether the 64 candidates would have served it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = (
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Explain why the sky is blue to a ten-year-old.",
    "What are three ways to reduce memory use in a web server? Be specific.",
    "Solve: a train leaves at 3 pm at 80 km/h; another at 4 pm at 100 km/h. When does the second catch up?",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--tokens", type=int, default=200, help="sampled tokens per prompt")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import edgeinfer
    from edgeinfer.candidates import CANDIDATES
    from edgeinfer.sampler import SamplingParams, sample_from_candidates

    model = edgeinfer.load(args.package, verify=False)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=0)
    served = total = 0
    for prompt in PROMPTS:
        gen = model.generator(params)
        gen.append(model.encode_prompt(prompt))
        for _ in range(args.tokens):
            scaled = gen.logits.astype(np.float64) / params.temperature
            top = np.argsort(-scaled)[:CANDIDATES]
            log_total = np.log(np.exp(scaled - scaled.max()).sum()) + scaled.max()
            served += sample_from_candidates(top, scaled[top], log_total, params, np.random.default_rng(total)) is not None
            total += 1
            token = gen.next_token()
            if token in model.eos_token_ids:
                break
            gen.append([token])
    result = {"package": args.package, "sampling": vars(params), "candidates": CANDIDATES, "steps": total,
              "served_by_candidates": served, "share": served / total}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
