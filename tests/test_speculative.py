"""Speculative decoding: proposers, one-run verification, and output that plain decoding would give (greedy: the same
tokens; sampling: the same distribution, checked by chi-square on a toy Markov-chain runner)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import edgeinfer
from edgeinfer.backends import get_backend
from edgeinfer.errors import GenerationError
from edgeinfer.generator import Generator, StopCriteria, TokenLoop
from edgeinfer.proposers import Proposal, PromptLookup
from edgeinfer.runner import Runner
from edgeinfer.sampler import GREEDY, SamplingParams, logits_to_probs
from edgeinfer.speculative import DraftBudget, Speculation, SpeculativeLoop, accept_sampled, speculative_loop

from .conftest import STATIC_CHUNK, decode_and_verify_rows, export_tiny

CODE = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def tiny_cpu(preset_pkg) -> Path:
    return preset_pkg


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory) -> Path:
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("spec") / "fp32", precision="fp32")


# -- proposers --------------------------------------------------------------------------------------------------
def test_prompt_lookup_continues_the_latest_longest_match():
    lookup = PromptLookup(max_ngram=3)
    #            0  1  2  3  4  5  6  7  8  9 10 11
    context = [5, 1, 2, 3, 9, 9, 1, 2, 4, 7, 1, 2]
    # "1 2" occurs at 1-2 (then 3) and 6-7 (then 4): the latest wins; "9 1 2" no, "x 1 2" longest is 2 tokens.
    assert lookup.propose(context, 3).tokens == [4, 7, 1]
    # A longer match beats a later shorter one: "3 1 2" at 0-2 (then 8 8) over "1 2" at 6-7 (then 6).
    context = [3, 1, 2, 8, 8, 0, 1, 2, 6, 3, 1, 2]
    assert lookup.propose(context, 2).tokens == [8, 8]
    assert lookup.propose([1, 2, 3], 4).tokens == []  # the last token never occurred before
    assert lookup.propose(context, 0).tokens == []


# -- greedy: the plain tokens ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["lookup", "auto"])
def test_greedy_with_speculation_is_plain_greedy_on_cpu(tiny_cpu, mode):
    model = edgeinfer.load(tiny_cpu)
    rng = np.random.default_rng(0)
    prompts = [CODE * 2, "".join(chr(c) for c in rng.integers(97, 110, size=24)) * 3, "Hello there"]
    for prompt in prompts:
        plain = model.generate(prompt, 48, GREEDY, raw=True, ignore_eos=True, speculate="off")
        fast = model.generate(prompt, 48, GREEDY, raw=True, ignore_eos=True, speculate=mode)
        assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason
        assert fast.timings.new_tokens == 48 and fast.timings.speculate == "lookup"
    assert plain.timings.tokens_per_pass == 1.0 and plain.timings.acceptance_rate == 0.0
    repeated = model.generate(CODE * 2, 48, GREEDY, raw=True, ignore_eos=True, speculate="lookup").timings
    assert repeated.forward_passes < 47 and repeated.tokens_per_pass > 1.5 and repeated.accepted_tokens > 0


def test_speculation_leaves_the_cache_plain_decoding_leaves(tiny_cpu):
    """Length, stop string and eos ends: the generator holds the same tokens afterwards (a chat's next turn reuses it),
    and the same text comes out."""
    model = edgeinfer.load(tiny_cpu)
    for kwargs in ({"max_new_tokens": 37, "ignore_eos": True}, {"max_new_tokens": 40, "stop": ("b",)}, {"max_new_tokens": 200}):
        held = {}
        for mode in ("off", "lookup"):
            generator = model.generator(GREEDY)
            result = model.generate(CODE * 2, sampling=GREEDY, raw=True, generator=generator, speculate=mode, **kwargs)
            held[mode] = (list(generator.tokens), result.text, result.finish_reason)
        assert held["lookup"] == held["off"], kwargs


def test_draft_model_proposals_give_the_plain_tokens(tiny_cpu, tiny_fp32):
    """A draft package with the same tokenizer (the fp32 export of the same weights: close, not equal)."""
    model, draft = edgeinfer.load(tiny_cpu), edgeinfer.load(tiny_fp32)
    plain = model.generate("Write a story", 40, GREEDY, raw=True, ignore_eos=True, speculate="off")
    fast = model.generate("Write a story", 40, GREEDY, raw=True, ignore_eos=True, speculate=Speculation("draft", draft=draft))
    assert fast.token_ids == plain.token_ids
    assert fast.timings.speculate == "draft" and fast.timings.acceptance_rate > 0.5


def test_verify_returns_the_rows_asked_for(tiny_cpu):
    model = edgeinfer.load(tiny_cpu)
    prompt = model.tokenizer.encode(CODE)
    one = model.generator(GREEDY)
    one.append(prompt)
    steps = []
    for token in prompt[:5]:  # decode steps one token at a time: the reference rows
        steps.append(one.logits.copy())
        one.append([token])
    rows = model.generator(GREEDY)
    rows.append(prompt)
    rows.verify(prompt[:5], rows=5)
    assert rows.row_logits().shape == (5, model.spec.vocab_size)
    np.testing.assert_allclose(rows.row_logits()[:4], np.array(steps[1:]), atol=2e-3)  # row i: after token i
    with pytest.raises(GenerationError, match="logits for 3 of 2"):
        rows.runner.run(np.array(prompt[:2]), 0, rows=3)


@pytest.fixture(scope="module")
def tiny_b32(tmp_path_factory) -> Path:
    """4-bit blocks of 32, the blocks a GGUF import keeps (Q4_K): MatMulNBits is batch invariant there."""
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("spec") / "b32", block_size=32)


def test_decode_steps_and_verify_rows_agree_bit_for_bit(tiny_b32):
    """Decode's attention runs with a padding row, so MLAS computes it with the kernels a verify run uses: row i of a
    verify run is the decode step's logits to the bit (without the padding row they differ in the last bits), also
    where the context is full and the padding row lands in the cache's spare row."""
    model = edgeinfer.load(tiny_b32)
    assert model.manifest.kv_cache["spare_rows"] == 1
    capacity = model.manifest.context_length
    for start in (37, capacity):  # capacity: the last decode step writes its padding row into the spare row
        rows, steps = decode_and_verify_rows(model, [3 + (7 * i) % 90 for i in range(start)], 6)
        assert np.array_equal(rows, steps), start


def test_greedy_speculation_fills_the_context_with_the_plain_tokens(tiny_b32):
    model = edgeinfer.load(tiny_b32)
    prompt = CODE * 2
    kept = model.manifest.context_length - len(model.tokenizer.encode(prompt))
    plain = model.generate(prompt, kept + 10, GREEDY, raw=True, ignore_eos=True, speculate="off")
    fast = model.generate(prompt, kept + 10, GREEDY, raw=True, ignore_eos=True, speculate="lookup")
    assert plain.finish_reason == fast.finish_reason == "context"
    assert fast.token_ids == plain.token_ids and fast.timings.accepted_tokens > 0


def test_old_packages_without_logits_start_decode_plainly(tiny_cpu, tmp_path):
    """A package whose graph picks no rows (exported before speculation) runs auto as plain decoding; lookup says why
    not."""
    model = edgeinfer.load(tiny_cpu)
    generator = model.generator(GREEDY)
    generator.runner.verify_rows = 1  # what such a package's runner reports
    assert speculative_loop(generator, [1, 2], StopCriteria(4), Speculation("auto")) is None
    with pytest.raises(GenerationError, match="re-export"):
        speculative_loop(generator, [1, 2], StopCriteria(4), Speculation("lookup"))


def test_packages_that_take_the_row_count_still_speculate(tiny_fp32, tmp_path):
    """cpu packages of 2026-12-01 took logits_rows (the row count, negated in the graph) where packages now take
    logits_start: the runner feeds each its own, and speculation gives the plain tokens on both."""
    import json
    import shutil

    import onnx
    from onnx import helper

    from edgeinfer.package import MANIFEST, describe_files

    old = Path(shutil.copytree(tiny_fp32, tmp_path / "old"))
    model = onnx.load(str(old / "model.onnx"))
    graph = model.graph
    start = next(i for i in graph.input if i.name == "logits_start")
    start.name = "logits_rows"
    graph.node.insert(0, helper.make_node("Neg", ["logits_rows"], ["logits_start"], name="last_rows/start"))
    onnx.save(model, str(old / "model.onnx"))
    manifest = json.loads((old / MANIFEST).read_text())
    inputs = manifest["graphs"]["decoder"]["inputs"]
    inputs[inputs.index("logits_start")] = "logits_rows"
    manifest["files"] = describe_files(old, sorted(manifest["files"]))
    (old / MANIFEST).write_text(json.dumps(manifest))

    plain = edgeinfer.load(tiny_fp32).generate(CODE * 2, 40, GREEDY, raw=True, ignore_eos=True, speculate="off")
    for folder in (tiny_fp32, old):
        result = edgeinfer.load(folder).generate(CODE * 2, 40, GREEDY, raw=True, ignore_eos=True, speculate="lookup")
        assert result.token_ids == plain.token_ids and result.timings.accepted_tokens > 0


def test_exact_speculation_is_for_cpu_group_query_attention():
    from edgeinfer.errors import ExportError
    from edgeinfer.export.options import ExportOptions

    for target, attention in (("cuda", None), ("cpu", "grouped"), ("qnn", None)):
        with pytest.raises(ExportError, match="exact speculation pads GroupQueryAttention on the cpu"):
            ExportOptions(target=target, attention=attention, exact_speculation=True)
    assert ExportOptions(target="cuda", exact_speculation=False).exact_speculation is False


def test_speculation_settings_are_checked():
    with pytest.raises(GenerationError, match="one of"):
        Speculation("sometimes")
    with pytest.raises(GenerationError, match="draft model"):
        Speculation("draft")


# -- the draft budget -----------------------------------------------------------------------------------------
def test_budget_stops_proposing_where_proposals_fail_and_probes_now_and_then():
    budget = DraftBudget(7)
    for _ in range(20):
        budget.record(0, 0, 0.030)
        budget.record(3, 0, 0.045)  # every proposal rejected at its first token, a wider run costing more
    picks = [budget.choose(7) for _ in range(3)]
    assert picks == [0, 0, 0]
    assert budget.probe_every(2) == 17  # a probe of 2 costs a third of a step more: 2% of 17 steps
    for _ in range(budget.probe_every(2)):
        budget.record(0, 0, 0.030)
    assert budget.choose(7) == 2  # a short probe


def test_budget_of_a_fixed_width_runner_proposes_all_or_nothing_and_probes_less_often():
    """A GPU pads every verify run to one captured width: any k > 0 costs the same (the H200's figures: 1.83 ms a
    decode step, 3.28 ms a verify run), so a probe proposes all it can, and as rarely as keeps its cost at ~2%."""
    budget = DraftBudget(7, fixed_width=True)
    for _ in range(20):
        budget.record(0, 0, 0.00183)
        budget.record(2, 0, 0.00328)  # rejected at once
    assert budget.cost(7) == budget.cost(1) == pytest.approx(0.00328, rel=1e-6)
    assert budget.choose(7) == 0
    every = budget.probe_every(7)
    assert every == 40  # ceil((3.28 - 1.83) / (0.02 * 1.83))
    for _ in range(every - 1):
        budget.record(0, 0, 0.00183)
    assert budget.choose(7) == 0
    budget.record(0, 0, 0.00183)
    assert budget.choose(7) == 7 and budget.choose(3) == 3
    for _ in range(10):
        budget.record(7, 7, 0.00328)  # now every proposal is kept
    assert budget.choose(7) == 7 and budget.choose(5) == 5


def test_budget_keeps_acceptance_per_evidence_and_lookup_says_its_match_length():
    """Lookup's long matches are kept where its one-token matches fail: the budget proposes on the first, not the second."""
    budget = DraftBudget(7)
    for _ in range(20):
        budget.record(0, 0, 0.030)
        budget.record(7, 7, 0.040, evidence=4)
        budget.record(7, 0, 0.040, evidence=1)
    assert budget.acceptance(4) > 0.9 > 0.1 > budget.acceptance(1)
    assert budget.choose(7, evidence=4) == 7 and budget.choose(7, evidence=1) == 0
    lookup = PromptLookup()
    # a 3-token match is class 2, a 5-token one class 4 (match lengths rounded down to powers of two)
    assert lookup.propose([5, 6, 7, 8, 9, 1, 6, 7, 8], 3) == Proposal([9, 1, 6], evidence=2)
    assert lookup.propose([1, 2, 3, 4, 5, 6, 0, 2, 3, 4, 5], 2) == Proposal([6, 0], evidence=4)
    copy = list(range(20, 40))
    assert lookup.propose(copy + [7] + copy[:12], 3) == Proposal(copy[12:15], evidence=8)  # 12 matched, at most 8 looked at
    assert lookup.propose([5, 6, 7, 1, 7], 2).evidence == 1 and lookup.propose([1, 2, 3], 2) == Proposal([])


def test_budget_proposes_long_where_proposals_are_kept():
    budget = DraftBudget(7)
    for _ in range(20):
        budget.record(0, 0, 0.030)
        budget.record(7, 7, 0.040)
    assert budget.choose(7) == 7 and budget.choose(3) == 3


# -- sampling: the same distribution ----------------------------------------------------------------------------
VOCAB = 5


class MarkovRunner(Runner):
    """A toy model: the next token's logits depend on the last token only. Verifies any number of rows."""

    def __init__(self, table: np.ndarray, capacity: int = 64):
        self.table, self.capacity, self.verify_rows = table, capacity, capacity
        self.rows = None

    def run(self, token_ids, position: int, rows: int = 1) -> None:
        self.rows = self.table[np.asarray(token_ids).reshape(-1)[-rows:]]

    def last_logits(self, all_rows: bool = False) -> np.ndarray:
        return self.rows if all_rows else self.rows[-1]

    def cache_arrays(self):
        return []


class FixedProposer:
    """Proposes draws from a fixed distribution Q of its own (q != p), returning Q with them."""

    free = False

    def __init__(self, q: np.ndarray, rng):
        self.q, self.rng = q, rng

    def propose(self, context, count: int) -> Proposal:
        tokens = [int(self.rng.choice(VOCAB, p=self.q)) for _ in range(count)]
        return Proposal(tokens, [self.q] * count)

    def close(self) -> None:
        pass


def test_accept_rule_draws_from_the_target_distribution():
    """One step's first token: whatever q proposes, the kept-or-resampled token follows p (chi-square)."""
    rng = np.random.default_rng(0)
    row = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=1.0)
    p = logits_to_probs(row, params)
    for q in (np.array([0.05, 0.1, 0.15, 0.2, 0.5]), None):  # a draft's distribution, and lookup's point mass
        counts = np.zeros(VOCAB)
        for _ in range(4000):
            token = int(rng.choice(VOCAB, p=q)) if q is not None else 3
            proposal = Proposal([token], None if q is None else [q])
            counts[accept_sampled(proposal, np.stack([row, row]), params, rng, [])[0]] += 1
        assert chisquare(counts, p * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize("proposer", ["lookup", "draft"])
def test_sampled_speculation_matches_plain_sampling_in_distribution(proposer):
    """Three sampled tokens after a prompt, over 3,000 seeds: the joint distribution of plain sampling (exact, from the
    chain) and of speculative sampling agree (chi-square), with top-p filtering and a temperature in play."""
    rng = np.random.default_rng(1)
    table = rng.normal(0, 1.5, size=(VOCAB, VOCAB))
    prompt = [0, 1, 2, 0, 1, 2, 0, 1]
    params = SamplingParams(temperature=0.8, top_p=0.9)
    # The exact joint distribution of three tokens from plain sampling.
    step = np.array([logits_to_probs(table[t], params) for t in range(VOCAB)])
    first = step[prompt[-1]]
    exact = first[:, None, None] * step[:, :, None] * step[None, :, :]
    counts = np.zeros((VOCAB,) * 3)
    draws = 3000
    for seed in range(draws):
        generator = Generator(MarkovRunner(table), VOCAB, SamplingParams(temperature=0.8, top_p=0.9, seed=seed))
        source = PromptLookup() if proposer == "lookup" else FixedProposer(np.full(VOCAB, 1 / VOCAB), np.random.default_rng(seed + 10**6))
        loop = SpeculativeLoop(generator, prompt, StopCriteria(3, ignore_eos=True), source, DraftBudget(3, adaptive=False), proposer)
        counts[tuple(loop)] += 1
        if seed == 0:
            assert loop.timings.new_tokens == 3
    mask = exact.reshape(-1) * draws >= 5  # chi-square needs expected counts of 5 or more
    observed, expected = counts.reshape(-1), exact.reshape(-1) * draws
    assert observed[~mask].sum() <= max(10, 3 * expected[~mask].sum())
    scale = observed[mask].sum() / expected[mask].sum()
    assert chisquare(observed[mask], expected[mask] * scale).pvalue > 1e-3


def test_sampled_plain_loop_and_chain_agree():
    """The chi-square test above can fail: plain TokenLoop on the same chain passes it (the reference is right)."""
    rng = np.random.default_rng(1)
    table = rng.normal(0, 1.5, size=(VOCAB, VOCAB))
    params = SamplingParams(temperature=0.8, top_p=0.9)
    step = np.array([logits_to_probs(table[t], params) for t in range(VOCAB)])
    counts = np.zeros((VOCAB, VOCAB))
    for seed in range(2000):
        generator = Generator(MarkovRunner(table), VOCAB, SamplingParams(temperature=0.8, top_p=0.9, seed=seed))
        counts[tuple(TokenLoop(generator, [0, 1], StopCriteria(2, ignore_eos=True)))] += 1
    exact = (step[1][:, None] * step).reshape(-1) * 2000
    mask = exact >= 5
    assert chisquare(counts.reshape(-1)[mask], exact[mask] * counts.reshape(-1)[mask].sum() / exact[mask].sum()).pvalue > 1e-3
    wrong = (np.full(VOCAB, 1 / VOCAB)[:, None] * step).reshape(-1) * 2000  # a wrong first-token distribution is caught
    assert chisquare(counts.reshape(-1)[mask], wrong[mask] * counts.reshape(-1)[mask].sum() / wrong[mask].sum()).pvalue < 1e-3


# -- qnn: the static graphs verify with their prefill graph -----------------------------------------------------
QNN = get_backend("qnn").availability()


@pytest.mark.qnn
@pytest.mark.skipif(not QNN.ok, reason=f"qnn backend not available: {QNN}")
def test_greedy_with_speculation_is_plain_greedy_on_qnn(static_packages, tmp_path):
    """A package whose prefill and decode graphs share their quantization grids speculates on the HTP and gives plain
    greedy's tokens; one with a grid per role (the default) does not speculate."""
    default = edgeinfer.load(static_packages["w4a16"], device="qnn")
    assert not default.generator(GREEDY).runner.verifies_exactly
    with pytest.raises(GenerationError, match="different grids"):
        default.generate(CODE, 4, GREEDY, raw=True, speculate="lookup")
    package = export_tiny("preset:tiny-qwen2", tmp_path / "shared", target="qnn", prefill_chunk=STATIC_CHUNK,
                          shared_role_ranges=True)
    model = edgeinfer.load(package, device="qnn")
    assert model.generator(GREEDY).runner.verify_rows == 8
    rng = np.random.default_rng(0)
    accepted = 0
    for prompt in (CODE, "".join(chr(c) for c in rng.integers(97, 110, size=12)) * 3):
        plain = model.generate(prompt, 20, GREEDY, raw=True, ignore_eos=True, speculate="off")
        fast = model.generate(prompt, 20, GREEDY, raw=True, ignore_eos=True, speculate="lookup")
        assert fast.token_ids == plain.token_ids
        accepted += fast.timings.accepted_tokens
    assert accepted > 0


def test_proposals_per_step_follow_the_runner(tiny_cpu, static_packages):
    """A cpu runner verifies any width (up to 15 proposals); fixed-width runners (a GPU's graph, qnn's prefill graph)
    8 rows; an explicit max_proposed wins."""
    from edgeinfer.dynamic_runner import DynamicRunner, binding_plan
    from edgeinfer.speculative import MAX_PROPOSED, MAX_PROPOSED_ANY_WIDTH, proposals_per_step

    model = edgeinfer.load(tiny_cpu)
    fixed = DynamicRunner(model.engine.session, model.manifest, plan=binding_plan(model.manifest, "cpu", fixed_decode_inputs=True))
    static = edgeinfer.load(static_packages["fp32"], device="qnn").generator(GREEDY).runner
    assert proposals_per_step(model.generator(GREEDY).runner, Speculation()) == MAX_PROPOSED_ANY_WIDTH == 15
    assert proposals_per_step(fixed, Speculation()) == proposals_per_step(static, Speculation()) == MAX_PROPOSED == 7
    assert proposals_per_step(fixed, Speculation(max_proposed=3)) == 3
    loop = speculative_loop(model.generator(GREEDY), [1, 2, 3], StopCriteria(4), Speculation("lookup"))
    assert loop.budget.max_proposed == MAX_PROPOSED_ANY_WIDTH


def test_fixed_width_verify_runs_give_the_plain_tokens(tiny_cpu):
    """The GPU path on the CPU: decode and verify read fixed buffers updated in place (what a captured CUDA graph
    replays), proposals padded to the verify width and the pad rewound; greedy output stays the plain one."""
    from edgeinfer.dynamic_runner import VERIFY_WIDTH, DynamicRunner, binding_plan

    model = edgeinfer.load(tiny_cpu)
    plan = binding_plan(model.manifest, "cpu", fixed_decode_inputs=True)
    assert plan.verify_width == VERIFY_WIDTH and plan.rows_input == "logits_start"
    prompt = model.tokenizer.encode(CODE * 2)
    plain = model.generate(CODE * 2, 40, GREEDY, raw=True, ignore_eos=True, speculate="off").token_ids
    runner = DynamicRunner(model.engine.session, model.manifest, plan=plan)
    loop = speculative_loop(Generator(runner, model.spec.vocab_size, GREEDY), prompt, StopCriteria(40, ignore_eos=True),
                            Speculation("lookup"))
    assert list(loop) == plain
    assert loop.timings.accepted_tokens > 0 and runner._verify is not None  # the fixed verify binding ran
