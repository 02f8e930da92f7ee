"""Speculative decoding: a proposer guesses the next tokens, the model checks them all in one run.

Decode at batch 1 reads every weight once per token; a run over k+1 tokens reads them once too, so each accepted
guess is a token nearly for free. A step feeds the pending token and k proposed ones in one run that returns logits
for those k+1 rows (Generator.verify), keeps the longest run of proposals the model agrees with plus one token of its
own (the correction, or a bonus after k accepted), and rewinds the cache past the rest.

Exact output:
- greedy: a proposal is kept where it equals the row's argmax, so the text is the one plain greedy decoding makes;
- sampling: the standard rule (Leviathan et al. 2023, Chen et al. 2023): keep proposal d with probability
  min(1, p(d) / q(d)), else draw from max(p - q, 0) renormalized; after k kept, draw the bonus from p. p is the
  model's filtered distribution (sampler.logits_to_probs), q the proposer's (a point mass for lookup).

`auto` (the default for greedy decoding) runs prompt lookup under DraftBudget, which chooses each step's proposal
length from measurement: the time of a run at each width and the share of proposals accepted, both as moving
averages; where proposing does not pay (free text), it stops proposing and probes now and then.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import GenerationError
from .generator import Generator, StopCriteria, Timings
from .proposers import DraftModel, PromptLookup, Proposal, Proposer
from .sampler import SamplingParams, logits_to_probs, sample

MODES = ("auto", "off", "lookup", "draft")
MAX_PROPOSED = 7  # proposals per step where verify runs have 8 rows (a GPU's captured graph, qnn's prefill graph)
# cpu, where a verify run takes any width: replaying the H200's greedy replies to the 12 real prompts offline, lookup
# capped at 15 rather than 7 passes 7.9 rather than 5.3 tokens per run on the edit kind, and the same on the others
MAX_PROPOSED_ANY_WIDTH = 15
PROPOSED_LIMIT = 64  # the most a caller may ask for (Speculation.max_proposed, --draft-max)


@dataclass(frozen=True)
class Speculation:
    """How a generation speculates. MODE: auto (adaptive prompt lookup for greedy decoding, off for sampling), off,
    lookup (prompt lookup, every match proposed), draft (DRAFT, a loaded Model sharing the target's tokenizer)."""

    mode: str = "auto"
    draft: object | None = None  # a model.Model (not imported here: model.py imports this module)
    max_proposed: int | None = None  # None: the runner's (proposals_per_step)

    def __post_init__(self):
        if self.mode not in MODES:
            raise GenerationError(f"speculate must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.mode == "draft") != (self.draft is not None):
            raise GenerationError("speculate=draft needs a draft model (and only draft takes one): pass draft=load(PKG)")
        if self.max_proposed is None:
            return
        if isinstance(self.max_proposed, bool) or not isinstance(self.max_proposed, int) or not 1 <= self.max_proposed <= PROPOSED_LIMIT:
            raise GenerationError(f"max_proposed must be a whole number in [1, {PROPOSED_LIMIT}], got {self.max_proposed!r}")


OFF = Speculation("off")


def as_speculation(value) -> Speculation:
    """A Speculation from itself, a mode name, or None (auto)."""
    if value is None:
        return Speculation()
    if isinstance(value, Speculation):
        return value
    if isinstance(value, str):
        return Speculation(value)
    raise GenerationError(f"speculate must be a mode name ({', '.join(MODES)}) or a Speculation, got {value!r}")


# -- the accept rules ---------------------------------------------------------------------------------------------
def accept_greedy(proposed: list[int], targets: np.ndarray) -> list[int]:
    """The new tokens of a greedy step: TARGETS[i] is the model's token after the pending one and PROPOSED[:i]. The
    proposals up to the first disagreement, then the model's own token there."""
    kept = 0
    while kept < len(proposed) and proposed[kept] == int(targets[kept]):
        kept += 1
    return [*proposed[:kept], int(targets[kept])]


def accept_sampled(proposal: Proposal, rows: np.ndarray, sampling: SamplingParams, rng: np.random.Generator,
                   history: list[int]) -> list[int]:
    """The new tokens of a sampled step (the standard speculative sampling rule; see the module's text). ROWS[i]: the
    model's logits after the pending token and the first i proposals; HISTORY: every token before ROWS[0]'s, for the
    repetition penalty."""
    out: list[int] = []
    for i, token in enumerate(proposal.tokens):
        p = logits_to_probs(rows[i], sampling, _history(history, out, sampling))
        q = proposal.probs[i] if proposal.probs is not None else None
        q_token = 1.0 if q is None else float(q[token])
        if q_token > 0 and rng.random() * q_token < p[token]:  # u < p/q, without dividing by zero
            out.append(token)
            continue
        residual = p.copy()
        if q is None:
            residual[token] = 0.0
        else:
            residual = np.maximum(residual - q, 0.0)
        total = residual.sum()
        if total <= 0:  # p == q to rounding: any draw from p is right
            residual, total = p, p.sum()
        out.append(_draw(residual / total, rng))
        return out
    row = rows[len(proposal.tokens)]
    out.append(sample(row, sampling, rng, _history(history, out, sampling)))
    return out


def _history(history: list[int], new: list[int], sampling: SamplingParams):
    return np.asarray([*history, *new], dtype=np.int64) if sampling.repetition_penalty != 1.0 else None


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


# -- how many tokens to propose ------------------------------------------------------------------------------------
class DraftBudget:
    """Chooses each step's proposal length from measurement (`auto`).

    A step with k proposals yields E(k) = (1 - a^(k+1)) / (1 - a) tokens on average, where a is the chance that the
    next proposal is kept given the ones before it were (estimated from recent steps with proposals of the same
    evidence: lookup's 4-token matches are kept far more often than its 1-token ones), and costs t(k), the measured
    time of such a step (moving averages per k; a straight line through the measured ones for the others). A runner
    that pads every verify run to one width (FIXED_WIDTH: a GPU replaying one captured graph) pays one t for every
    k > 0, so it proposes all it can or nothing. The budget is the k <= ROOM with the most tokens per second (the
    proposer may offer fewer); 0 is plain decoding. Where no k > 0 pays, a proposal is still tried now and then so that
    a reply that starts quoting is noticed: every PROBE_EVERY steps, or as many more as keep a failed probe's extra
    time under PROBE_SHARE of the plain steps' (a verify run costs 1.1x a decode step on the CPU, 1.8x on the H200).
    """

    DECAY = 0.9  # moving averages over roughly the last 10 steps
    PROBE_EVERY = 16
    PROBE_SHARE = 0.02
    SHORT_PROBE = 2

    def __init__(self, max_proposed: int, adaptive: bool = True, fixed_width: bool = False):
        self.max_proposed, self.adaptive, self.fixed_width = max_proposed, adaptive, fixed_width
        # Per evidence class: kept and missed proposals, decayed. Prior a = 2/3: optimistic enough to try at the start.
        self.kept: dict[int, float] = {}
        self.missed: dict[int, float] = {}
        self.times: dict[int, float] = {}
        self.since_proposed = 0

    def acceptance(self, evidence: int = 0) -> float:
        kept, missed = self.kept.get(evidence, 1.0), self.missed.get(evidence, 0.5)
        return kept / (kept + missed)

    def cost(self, k: int) -> float:
        key = min(k, 1) if self.fixed_width else k
        if key in self.times:
            return self.times[key]
        base = self.times.get(0)
        wider = {n: t for n, t in self.times.items() if n > 0}
        if base is None or not wider:  # unmeasured: a run of k+1 rows costs a little more than one row
            return (base or 1.0) * (1.0 + 0.1 * k)
        slope = max(sum((t - base) * n for n, t in wider.items()) / sum(n * n for n in wider), 0.0)
        return base + slope * k

    def probe_every(self, k: int) -> int:
        """Plain steps between probes of K proposals: PROBE_EVERY, or more where a probe costs more."""
        base = self.times.get(0)
        if base is None or base <= 0:
            return self.PROBE_EVERY
        return max(self.PROBE_EVERY, int(np.ceil((self.cost(k) - base) / (self.PROBE_SHARE * base))))

    def choose(self, available: int, evidence: int = 0) -> int:
        """Proposals to use this step, at most AVAILABLE, for a proposal of EVIDENCE's class."""
        available = min(available, self.max_proposed)
        if not self.adaptive or available == 0:
            return available
        a = min(self.acceptance(evidence), 0.999)
        rate = [(1 - a ** (k + 1)) / (1 - a) / self.cost(k) for k in range(available + 1)]
        best = int(np.argmax(rate))
        if best == 0:
            probe = available if self.fixed_width else min(available, self.SHORT_PROBE)
            if self.since_proposed >= self.probe_every(probe):
                best = probe
        return best

    def record(self, proposed: int, kept: int, seconds: float, evidence: int = 0) -> None:
        d, key = self.DECAY, min(proposed, 1) if self.fixed_width else proposed
        self.times[key] = seconds if key not in self.times else d * self.times[key] + (1 - d) * seconds
        if proposed:
            self.kept[evidence] = d * self.kept.get(evidence, 1.0) + kept
            self.missed[evidence] = d * self.missed.get(evidence, 0.5) + (1.0 if kept < proposed else 0.0)
            self.since_proposed = 0
        else:
            self.since_proposed += 1


# -- the loop -----------------------------------------------------------------------------------------------------
class SpeculativeLoop:
    """TokenLoop's interface (iterate the kept ids; `timings`; `finish_reason`; `stop`) over speculative steps.

    When it ends the generator holds what plain decoding would: the prompt and every yielded token fed, except the last
    one unless the reply ended at eos; a chat's next turn reuses that cache."""

    def __init__(self, generator: Generator, prompt_ids: list[int], stop: StopCriteria, proposer: Proposer,
                 budget: DraftBudget, name: str):
        self.generator, self.prompt_ids, self.criteria = generator, prompt_ids, stop
        self.proposer, self.budget = proposer, budget
        self.timings = Timings(prompt_tokens=len(prompt_ids), speculate=name)
        self.finish_reason: str | None = None

    def stop(self, reason: str) -> None:
        self.finish_reason = reason

    def __iter__(self) -> Iterator[int]:
        gen, timings = self.generator, self.timings
        try:
            start = time.perf_counter()
            gen.append(self.prompt_ids)
            timings.prefill_s = time.perf_counter() - start
            base = gen.position  # the first new token goes here
            pending = gen.next_token()
            timings.ttft_s = time.perf_counter() - start
            first_token_at = time.perf_counter()
            new = [pending]
            while True:
                for token in new:
                    timings.decode_s = time.perf_counter() - first_token_at
                    if self.criteria.is_eos(token):
                        self.finish_reason = "eos"
                        gen.rewind(min(base + timings.new_tokens, gen.position))
                        return
                    timings.new_tokens += 1
                    yield token
                    if self.finish_reason is None:
                        self.finish_reason = self.criteria.after_token(timings.new_tokens, base + timings.new_tokens - 1,
                                                                       gen.capacity)
                    if self.finish_reason is not None:
                        gen.rewind(min(base + timings.new_tokens - 1, gen.position))
                        return
                new = self._step(new[-1], base)
        finally:
            self.proposer.close()

    def _step(self, pending: int, base: int) -> list[int]:
        """Feed PENDING with what the proposer offers; returns the new tokens (at least one)."""
        gen, timings = self.generator, self.timings
        started = time.perf_counter()
        position = gen.position
        room = min(gen.capacity - position - 1, self.criteria.max_new_tokens - timings.new_tokens - 1,
                   gen.runner.verify_rows - 1, self.budget.max_proposed)
        context = [*gen.tokens, pending]
        if room <= 0:
            proposal = Proposal([])
        elif self.proposer.free:  # see all it offers, then keep what its evidence is worth
            offered = self.proposer.propose(context, room)
            proposal = offered.first(self.budget.choose(len(offered), offered.evidence))
        else:
            wanted = self.budget.choose(room)
            proposal = self.proposer.propose(context, wanted) if wanted else Proposal([])
        k = len(proposal)
        ids = [pending, *proposal.tokens]
        width = gen.runner.verify_width
        if k and width is not None and k + 1 < width and position + width <= gen.capacity:
            ids += [pending] * (width - k - 1)  # a GPU replays one captured graph of this width; the pad is rewound
        gen.verify(ids, rows=len(ids))
        sampling = gen.sampling
        if sampling.greedy and sampling.repetition_penalty == 1.0:
            new = accept_greedy(proposal.tokens, gen.row_greedy()[: k + 1])
        else:
            new = accept_sampled(proposal, gen.row_logits()[: k + 1], sampling, gen.rng, gen.tokens[: position + 1])
        gen.rewind(position + len(new))  # the pending token and the kept proposals; the last new token is pending
        timings.forward_passes += 1
        timings.proposed_tokens += k
        timings.verify_passes += k > 0
        timings.accepted_tokens += len(new) - 1
        self.budget.record(k, len(new) - 1, time.perf_counter() - started, proposal.evidence)
        return new


def proposals_per_step(runner, speculation: Speculation) -> int:
    """The most tokens one step proposes: the Speculation's, else what the runner's verify runs hold best."""
    if speculation.max_proposed is not None:
        return speculation.max_proposed
    return MAX_PROPOSED if runner.verify_width is not None or runner.verify_rows <= MAX_PROPOSED + 1 else MAX_PROPOSED_ANY_WIDTH


def speculative_loop(generator: Generator, prompt_ids: list[int], stop: StopCriteria, speculation: Speculation,
                     release_draft=None):
    """The loop a generation runs: SpeculativeLoop where SPECULATION and the package allow, else None (plain
    TokenLoop). RELEASE_DRAFT(generator) gives a draft model's generator back when the generation ends."""
    mode, runner = speculation.mode, generator.runner
    if mode == "off" or runner.verify_rows < 2 or not runner.verifies_exactly:
        if mode in ("lookup", "draft") and runner.verify_rows < 2:
            raise GenerationError("this package returns one row of logits per run and cannot check proposed tokens: "
                                  "re-export it with this edgeinfer, or pass speculate='off'")
        if mode in ("lookup", "draft"):
            raise GenerationError("this package's prefill and decode graphs quantize on different grids, so checking "
                                  "proposed tokens could change its output: re-export it with shared_role_ranges=True, "
                                  "or pass speculate='off'")
        return None
    if mode == "auto" and not (generator.sampling.greedy and generator.sampling.repetition_penalty == 1.0):
        return None  # sampled verification costs a vocabulary-wide softmax per row on the host: not measured to win
    if mode == "draft":
        draft = speculation.draft
        if draft.spec.vocab_size != generator.vocab_size:
            raise GenerationError(f"the draft model's vocabulary ({draft.spec.vocab_size}) is not the target's "
                                  f"({generator.vocab_size}): pick a draft with the same tokenizer")
        proposer: Proposer = DraftModel(draft.generator(generator.sampling), generator.sampling, release_draft or draft.recycle)
        budget = DraftBudget(proposals_per_step(runner, speculation), fixed_width=runner.verify_width is not None)
        return SpeculativeLoop(generator, prompt_ids, stop, proposer, budget, "draft")
    budget = DraftBudget(proposals_per_step(runner, speculation), adaptive=mode == "auto",
                         fixed_width=runner.verify_width is not None)
    return SpeculativeLoop(generator, prompt_ids, stop, PromptLookup(), budget, "lookup")
