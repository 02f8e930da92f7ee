"""The generation loop: prefill, decode one token at a time, stop conditions, streaming text.

`Generator` is the low-level object an app drives token by token (append, next_token, rewind); `generate`
and `stream` in model.py are thin loops over it. Each generator owns its KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import GenerationError, check_fits, last_line
from .runner import Runner
from .sampler import GREEDY, SamplingParams, sample, sample_from_candidates

PREFILL_CHUNK = 512  # long prompts run in chunks: bounded activation memory, same result


@dataclass
class Timings:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # running the prompt through the model
    ttft_s: float = 0.0  # prompt in -> first new token out (prefill + first sample)
    decode_s: float = 0.0  # first new token -> last new token
    forward_passes: int = 0  # decode runs after the prompt (one per token without speculation)
    proposed_tokens: int = 0  # speculative decoding: proposed tokens the model checked
    accepted_tokens: int = 0  # ... and kept
    verify_passes: int = 0  # forward passes that checked at least one proposed token
    speculate: str = "off"  # the proposer that ran: off, lookup, draft (auto names the one it chose)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0

    @property
    def acceptance_rate(self) -> float:
        """The share of proposed tokens the model kept (0 without speculation)."""
        return self.accepted_tokens / self.proposed_tokens if self.proposed_tokens else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """New tokens per decode run (1 without speculation; the first token comes from the prompt's run)."""
        return (self.new_tokens - 1) / self.forward_passes if self.forward_passes else (1.0 if self.new_tokens > 1 else 0.0)

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "prefill_s": self.prefill_s,
            "ttft_s": self.ttft_s, "decode_s": self.decode_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
            "speculate": self.speculate, "forward_passes": self.forward_passes, "proposed_tokens": self.proposed_tokens,
            "accepted_tokens": self.accepted_tokens, "verify_passes": self.verify_passes, "acceptance_rate": self.acceptance_rate,
            "tokens_per_pass": self.tokens_per_pass,
        }


class Generator:
    def __init__(self, runner: Runner, vocab_size: int, sampling: SamplingParams = GREEDY):
        self.runner = runner
        self.vocab_size = vocab_size
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.prefill_chunk = runner.prefill_chunk or PREFILL_CHUNK
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
        check_fits(self.position + ids.size, self.capacity)
        for start in range(0, ids.size, self.prefill_chunk):
            chunk = ids[start : start + self.prefill_chunk]
            self._feed(chunk)
            self.tokens.extend(int(t) for t in chunk)

    def verify(self, token_ids, rows: int) -> None:
        """Feed TOKEN_IDS in ONE run that keeps the logits of their last ROWS (speculative decoding checks proposed
        tokens this way); read them with `row_logits` / `row_greedy`, then `rewind` past the rejected ones."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.vocab_size:
            raise GenerationError(f"proposed ids {ids[:8].tolist()} are not tokens of the [0, {self.vocab_size}) vocabulary")
        check_fits(self.position + ids.size, self.capacity)
        self._feed(ids, rows)
        self.tokens.extend(int(t) for t in ids)

    def row_logits(self) -> np.ndarray:
        """[rows, vocab] float32 logits of the last `verify` run (a view the next run overwrites)."""
        return self.runner.last_logits(all_rows=True)

    def row_greedy(self) -> np.ndarray:
        """The argmax of each row of the last `verify` run (from the graph where it computes them)."""
        ids = self.runner.greedy_tokens()
        return ids if ids is not None else np.argmax(self.row_logits(), axis=-1)

    def _feed(self, chunk: np.ndarray, rows: int = 1) -> None:
        try:
            # The results stay with the runner (on a GPU) until the sampler asks; ROWS only where verifying, so a runner
            # written before verification (run(ids, position)) still drives plain decoding.
            if rows == 1:
                self.runner.run(chunk, self.position)
            else:
                self.runner.run(chunk, self.position, rows)
            self._logits, self._pending = None, True
        except GenerationError:
            raise
        except Exception as exc:  # onnxruntime's own types: one line for the app, not a C++ trace
            raise GenerationError(f"the model failed to run ({last_line(exc)}): the package may be damaged, re-export it") from None

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

    def keep_common_prefix(self, token_ids) -> int:
        """Rewind to the longest start the cache shares with TOKEN_IDS, short of all of them; returns its length.

        A caller then appends only TOKEN_IDS[kept:]: a chat's earlier turns are not run again. The last id is
        always run, because its logits give the next token.
        """
        kept = reusable_prefix(self.tokens, token_ids)
        self.rewind(kept)
        return kept

    def use_sampling(self, sampling: SamplingParams) -> None:
        """Sample with SAMPLING from now on, its seed restarting the random stream (a new request on a kept cache)."""
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def assume_filled(self, position: int) -> None:
        """Speed tests only: treat the first POSITION cache slots as filled without running the model.

        A decode step costs the same whatever the cache holds, so this measures decode at a deep context
        without paying for the prefill that would fill it (once the runner's pages are written: Runner.touch_cache).
        The text generated after it is meaningless.
        """
        if not 0 <= position < self.capacity:
            raise GenerationError(f"position {position} is outside the {self.capacity}-token context")
        self.tokens = [0] * position
        self.logits = None


def reusable_prefix(held, prompt) -> int:
    """How many of PROMPT's tokens a cache holding HELD need not run: their common start, short of the whole
    prompt (its last token always runs, for the next token's logits)."""
    limit = min(len(held), len(prompt) - 1)
    if limit <= 0:
        return 0
    differ = np.flatnonzero(np.asarray(held[:limit], dtype=np.int64) != np.asarray(prompt[:limit], dtype=np.int64))
    return int(differ[0]) if differ.size else limit


@dataclass(frozen=True)
class StopCriteria:
    """Everything that ends a generation: eos, the token budget, the context, a stop string in the text."""

    max_new_tokens: int = 256
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # matched on the text (tokenizer.TextStopper), never let out
    ignore_eos: bool = False  # benchmarks run to exactly max_new_tokens

    def is_eos(self, token: int) -> bool:
        return not self.ignore_eos and token in self.eos_token_ids

    def after_token(self, new_tokens: int, position: int, capacity: int) -> str | None:
        """Why to stop once a token was kept (the NEW_TOKENS-th, not yet fed at POSITION); None: go on."""
        if new_tokens >= self.max_new_tokens:
            return "length"
        if position + 1 > capacity:
            return "context"
        return None


class TokenLoop:
    """Prefill a prompt, then sample and feed tokens until STOP says otherwise.

    Iterating yields the kept token ids; `timings` fill in as it runs and `finish_reason` is set when it ends
    ("eos", "length", "context", or "stop_string" when the caller stops it for one with `stop`).
    """

    def __init__(self, generator: Generator, prompt_ids: list[int], stop: StopCriteria):
        self.generator, self.prompt_ids, self.criteria = generator, prompt_ids, stop
        self.timings = Timings(prompt_tokens=len(prompt_ids))
        self.finish_reason: str | None = None

    def stop(self, reason: str) -> None:
        self.finish_reason = reason

    def __iter__(self) -> Iterator[int]:
        generator, timings = self.generator, self.timings
        start = time.perf_counter()
        generator.append(self.prompt_ids)
        timings.prefill_s = time.perf_counter() - start
        first_token_at = None
        while self.finish_reason is None:
            token = generator.next_token()
            now = time.perf_counter()
            if first_token_at is None:
                first_token_at = now
                timings.ttft_s = now - start
            timings.decode_s = now - first_token_at
            if self.criteria.is_eos(token):  # eos is not part of the reply
                self.finish_reason = "eos"
                return
            timings.new_tokens += 1
            yield token
            if self.finish_reason is None:
                self.finish_reason = self.criteria.after_token(timings.new_tokens, generator.position, generator.capacity)
            if self.finish_reason is None:
                generator.append([token])
                timings.forward_passes += 1
