"""The generation loop: prefill, decode one token at a time, stop conditions, streaming text.

`Generator` is the low-level object an app drives token by token (append, next_token, rewind); `generate`
and `stream` in model.py are thin loops over it. Each generator owns its KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import GenerationError
from .sampler import GREEDY, SamplingParams, sample, sample_from_candidates

PREFILL_CHUNK = 512  # long prompts run in chunks: bounded activation memory, same result


@dataclass
class Timings:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # running the prompt through the model
    ttft_s: float = 0.0  # prompt in -> first new token out (prefill + first sample)
    decode_s: float = 0.0  # first new token -> last new token
    step_s: list[float] = field(default_factory=list)  # each decode step

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "prefill_s": self.prefill_s,
            "ttft_s": self.ttft_s, "decode_s": self.decode_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
        }


class Generator:
    def __init__(self, runner, vocab_size: int, sampling: SamplingParams = GREEDY, prefill_chunk: int = PREFILL_CHUNK):
        self.runner = runner
        self.vocab_size = vocab_size
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.prefill_chunk = prefill_chunk
        self.tokens: list[int] = []  # everything in the cache, in order
        self._logits: np.ndarray | None = None
        self._pending = False  # the runner holds results for the last appended token, not yet fetched

    @property
    def logits(self) -> np.ndarray | None:
        """Next-token logits after the last appended token (fetched from the runner when first asked)."""
        if self._logits is None and self._pending:
            self._logits, self._pending = self.runner.last_logits(), False
        return self._logits

    @logits.setter
    def logits(self, value: np.ndarray | None) -> None:
        self._logits, self._pending = value, False

    @property
    def capacity(self) -> int:
        return self.runner.capacity

    @property
    def position(self) -> int:
        return len(self.tokens)

    def append(self, token_ids) -> None:
        """Feed tokens (a prompt or a sampled token) through the model at the current position."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise GenerationError("no tokens to append: the prompt is empty")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise GenerationError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size}): check the ids")
        if self.position + ids.size > self.capacity:
            raise GenerationError(
                f"{self.position + ids.size} tokens do not fit the {self.capacity}-token context: "
                "shorten the prompt, or export the package with a larger --context"
            )
        for start in range(0, ids.size, self.prefill_chunk):
            chunk = ids[start : start + self.prefill_chunk]
            self._feed(chunk)
            self.tokens.extend(int(t) for t in chunk)

    def _feed(self, chunk: np.ndarray) -> None:
        try:
            if hasattr(self.runner, "run"):  # the results stay with the runner (on a GPU) until the sampler asks
                self.runner.run(chunk, self.position)
                self._logits, self._pending = None, True
            else:
                self.logits = self.runner.forward(chunk, self.position)
        except GenerationError:
            raise
        except Exception as exc:  # onnxruntime's own types: one line for the app, not a C++ trace
            raise GenerationError(f"the model failed to run ({_last_line(exc)}): the package may be damaged, re-export it") from None

    def next_token(self) -> int:
        """Sample the next token from the current logits (does not append it)."""
        if self._logits is None and not self._pending:
            raise GenerationError("nothing to sample from: append a prompt first")
        if self._pending and self.sampling.repetition_penalty == 1.0:
            # Where the runner prepares sampling on the device: the graph's argmax, or its most likely tokens.
            if self.sampling.greedy:
                token = self.runner.greedy_token()
            else:
                found = self.runner.candidates(self.sampling.temperature)
                token = None if found is None else sample_from_candidates(*found, self.sampling, self.rng)
            if token is not None:
                return token
        history = np.asarray(self.tokens, dtype=np.int64) if self.sampling.repetition_penalty != 1.0 else None
        return sample(self.logits, self.sampling, self.rng, history)

    def extend(self, count: int) -> list[int]:
        """Sample COUNT tokens one at a time, feeding each back in (no stop conditions); returns them."""
        tokens = []
        for _ in range(count):
            tokens.append(self.next_token())
            self.append(tokens[-1:])
        return tokens

    def rewind(self, position: int) -> None:
        """Forget everything after POSITION tokens; the cache beyond it is overwritten by later appends."""
        if not 0 <= position <= self.position:
            raise GenerationError(f"cannot rewind to {position}: the generator holds {self.position} tokens")
        del self.tokens[position:]
        self.logits = None

    def reset(self) -> None:
        self.rewind(0)

    def assume_filled(self, position: int) -> None:
        """Speed tests only: treat the first POSITION cache slots as filled without running the model.

        A decode step costs the same whatever the cache holds, so this measures decode at a deep context
        without paying for the prefill that would fill it. The text generated after it is meaningless.
        """
        if not 0 <= position < self.capacity:
            raise GenerationError(f"position {position} is outside the {self.capacity}-token context")
        self.tokens = [0] * position
        self.logits = None


def _last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1][:300] if lines else type(exc).__name__


@dataclass
class StopConditions:
    max_new_tokens: int = 256
    eos_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # benchmarks run to exactly max_new_tokens


def run_loop(generator: Generator, prompt_ids: list[int], stop: StopConditions):
    """Prefill PROMPT_IDS then decode until a stop condition; yields token ids, records timings.

    Returns (via StopIteration.value) the finish reason: "eos", "length" or "context". Stop strings are a
    matter of text, handled by the caller (model.TextStopper), which simply stops pulling tokens.
    """
    timings = Timings(prompt_tokens=len(prompt_ids))
    generator.timings = timings
    start = time.perf_counter()
    generator.append(prompt_ids)
    timings.prefill_s = time.perf_counter() - start
    first_token_at = None
    while True:
        token = generator.next_token()
        now = time.perf_counter()
        if first_token_at is None:
            first_token_at = now
            timings.ttft_s = now - start
        timings.new_tokens += 1
        timings.decode_s = now - first_token_at
        if not stop.ignore_eos and token in stop.eos_token_ids:
            timings.new_tokens -= 1  # eos is not part of the reply
            return "eos"
        yield token
        if timings.new_tokens >= stop.max_new_tokens:
            return "length"
        if generator.position + 1 > generator.capacity:
            return "context"
        step_start = time.perf_counter()
        generator.append([token])
        timings.step_s.append(time.perf_counter() - step_start)
