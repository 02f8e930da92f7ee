"""Timing one model: TTFT, prefill and decode speed over repeats, and decode speed as the context fills.

Prompts are random token ids (no tokenizer, no chat template) and generation ignores eos, so every run
does exactly the requested work and runs are comparable across machines and runtimes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..generator import Generator, StopCriteria, TokenLoop
from ..speculative import OFF, Speculation, speculative_loop
from .stats import summarize


@dataclass
class TestResult:
    """One llama-bench style test: a prompt of P tokens, then N generated tokens, repeated."""

    prompt_tokens: int
    new_tokens: int
    runs: list[dict] = field(default_factory=list)  # raw timings of each measured run (warm-up excluded)

    @property
    def name(self) -> str:
        return f"pp{self.prompt_tokens}+tg{self.new_tokens}"

    def summary(self) -> dict:
        pick = lambda key, scale=1.0: summarize([r[key] * scale for r in self.runs])  # noqa: E731
        return {
            "ttft_ms": pick("ttft_s", 1000.0),
            "prefill_tokens_per_s": pick("prefill_tokens_per_s"),
            "decode_tokens_per_s": pick("decode_tokens_per_s"),
            "acceptance_rate": pick("acceptance_rate"),
            "tokens_per_pass": pick("tokens_per_pass"),
        }

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "runs": self.runs, "summary": self.summary()}


def random_prompt(length: int, vocab_size: int, seed: int) -> list[int]:
    # Ids from the low 90% of the vocabulary: real text tokens, not reserved or special ones.
    return np.random.default_rng(seed).integers(0, int(vocab_size * 0.9), size=length).tolist()


def measure_run(generator: Generator, prompt: list[int], new_tokens: int, speculation: Speculation = OFF) -> dict:
    generator.reset()
    criteria = StopCriteria(max_new_tokens=new_tokens, ignore_eos=True)
    loop = speculative_loop(generator, prompt, criteria, speculation) or TokenLoop(generator, prompt, criteria)
    produced = sum(1 for _ in loop)
    t = loop.timings
    assert produced == new_tokens == t.new_tokens
    return t.to_dict()


def run_test(generator: Generator, prompt_tokens: int, new_tokens: int, repeat: int, warmup: int,
             progress: bool = True, speculation: Speculation = OFF) -> TestResult:
    result = TestResult(prompt_tokens, new_tokens)
    total = warmup + repeat
    for i in tqdm(range(total), desc=f"pp{prompt_tokens}+tg{new_tokens}", disable=not progress, leave=False):
        timings = measure_run(generator, random_prompt(prompt_tokens, generator.vocab_size, seed=i), new_tokens, speculation)
        if i >= warmup:
            result.runs.append(timings)
    return result


def decode_at_depth(generator: Generator, depth: int, steps: int, repeat: int) -> dict:
    """Decode tok/s when the cache already holds DEPTH tokens (see Generator.assume_filled): every cache page written
    first, as the prefill of a real conversation leaves them."""
    generator.runner.touch_cache()
    rates = []
    for _ in range(repeat):
        generator.assume_filled(depth)
        token = 0
        start = time.perf_counter()
        for _ in range(steps):
            generator.append([token])
            token = generator.next_token()
        rates.append(steps / (time.perf_counter() - start))
    return {"context": depth, "steps": steps, "decode_tokens_per_s": summarize(rates), "raw": rates}
