"""Proposers for speculative decoding: cheap guesses of the next tokens, which the model then checks in one run.

A proposer sees the whole text so far (prompt and reply, ending with the token about to be fed) and returns up to
COUNT tokens it expects next. Two kinds:

- PromptLookup: the continuation of the latest earlier occurrence of the text's last n tokens (no model). Code edits,
  quotes and summaries repeat their input, so the guess is often long and right; transformers'
  `prompt_lookup_num_tokens` and llama.cpp's lookup decoding do the same.
- DraftModel: a smaller package with the same tokenizer, run token by token on its own KV cache.

A proposal also carries the proposer's distribution of each token where it has one (a draft model sampling): the
verifier's accept rule needs it to keep sampled output exact. A deterministic proposal (lookup, greedy draft) has
none: each token is a point mass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import GenerationError
from .sampler import GREEDY, SamplingParams, logits_to_probs

if TYPE_CHECKING:
    from .generator import Generator


@dataclass
class Proposal:
    tokens: list[int]
    probs: list[np.ndarray] | None = None  # the proposer's distribution each token was drawn from; None: point masses
    # How strong the evidence behind the guess is, as a small class the budget keeps acceptance figures for
    # (lookup: the matched n-gram's length rounded down to a power of two; a draft model: 0)
    evidence: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def first(self, count: int) -> "Proposal":
        return Proposal(self.tokens[:count], None if self.probs is None else self.probs[:count], self.evidence)


class Proposer(Protocol):
    # Whether a proposal costs next to nothing to make (lookup): the loop then asks for all it may use and the budget
    # cuts it to size knowing the evidence; else (a draft model runs per token) the budget sizes the request first.
    free: bool

    def propose(self, context: Sequence[int], count: int) -> Proposal:
        """Up to COUNT tokens expected to follow CONTEXT (the prompt and the reply so far)."""
        ...

    def close(self) -> None:
        """The generation ended: give back what the proposer holds (a draft model's cache)."""
        ...


class PromptLookup:
    """The tokens that followed the latest earlier occurrence of the context's last n tokens, for n from MAX_NGRAM
    down to MIN_NGRAM (a longer match is a safer guess). llama.cpp's lookup uses n-grams of 1 to 4; matches of up to
    8 tell a copy in progress from a chance repeat better: replaying the 12 real prompts' greedy replies offline
    (bench/speculative.py's tasks, this CPU's measured verify costs) gives 2.80x plain on the edit kind against 2.65x
    with 4, the other kinds unchanged. The evidence is the match length rounded down to a power of two, so that the
    budget's acceptance figures per class each see enough steps."""

    free = True

    def __init__(self, max_ngram: int = 8, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise GenerationError(f"n-gram sizes {min_ngram}..{max_ngram} are not 1 <= min <= max: pass other sizes")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: Sequence[int], count: int) -> Proposal:
        ids = np.asarray(context, dtype=np.int64)
        if count < 1 or ids.size < self.min_ngram + 1:
            return Proposal([])
        # Candidate starts: every earlier place the last token occurs, then narrowed to longer matches.
        last = ids.size - 1
        starts = np.flatnonzero(ids[:last] == ids[last])  # positions p with ids[p] == last token, p < last
        best: np.ndarray | None = None
        matched = 0
        for n in range(1, self.max_ngram + 1):
            if n > 1:
                starts = starts[starts >= n - 1]
                starts = starts[ids[starts - (n - 1)] == ids[last - (n - 1)]] if last - (n - 1) >= 0 else starts[:0]
            if starts.size == 0:
                break
            if n >= self.min_ngram:
                best, matched = starts, n
        if best is None:
            return Proposal([])
        follow = int(best[-1]) + 1  # the latest occurrence: the text most like what comes next
        return Proposal([int(t) for t in ids[follow : follow + count]], evidence=1 << (matched.bit_length() - 1))

    def close(self) -> None:
        pass


class DraftModel:
    """Proposals from a smaller model sharing the target's tokenizer, one decode step per token on its own cache.

    GENERATOR: the draft model's generator (its own KV cache); RELEASE is called with it once the generation ends.
    SAMPLING: the target's; greedy targets get greedy drafts, sampling ones drafts drawn from the draft's own
    distribution (returned with the proposal for the accept rule)."""

    free = False

    def __init__(self, generator: "Generator", sampling: SamplingParams = GREEDY, release=None):
        self.generator, self.sampling, self._release = generator, sampling, release
        self.rng = np.random.default_rng(None if sampling.seed is None else sampling.seed + 1)

    def propose(self, context: Sequence[int], count: int) -> Proposal:
        gen = self.generator
        if count < 1 or len(context) + count > gen.capacity:
            return Proposal([])
        kept = gen.keep_common_prefix(context)
        gen.append(list(context[kept:]))
        tokens: list[int] = []
        probs: list[np.ndarray] | None = None if self.sampling.greedy else []
        for i in range(count):
            if probs is None:
                token = gen.next_token()
            else:
                p = logits_to_probs(gen.logits, self.sampling)
                token = int(self.rng.choice(p.size, p=p))
                probs.append(p)
            tokens.append(token)
            if i + 1 < count:
                gen.append([token])
        return Proposal(tokens, probs)

    def close(self) -> None:
        if self._release is not None:
            self._release(self.generator)
            self._release = None

