"""bench/speculation_bounds.py: the offline replay behind the note's ceilings must count passes and time right."""

from __future__ import annotations

from bench.speculation_bounds import Oracle, draft_ceiling, replay
from edgeinfer.speculative import DraftBudget


def cost_s(width: int) -> float:
    return 0.100 + 0.020 * (width - 1)  # a decode step, and each verified row a fifth more


def test_oracle_bounds_the_budget_and_plain_decoding_takes_a_pass_a_token():
    prompt = list(range(100, 180))
    reply = prompt[10:50] + [7, 8, 9] + prompt[20:45]  # a long copy, three new tokens, another copy
    new, plain_s, plain_passes = replay(prompt, reply, DraftBudget(15, adaptive=False), lambda w: cost_s(1), 0)
    assert new == len(reply) - 1 and plain_passes == new
    _, oracle_s, oracle_passes = replay(prompt, reply, Oracle(), cost_s, 15)
    _, budget_s, budget_passes = replay(prompt, reply, DraftBudget(15), cost_s, 15)
    assert oracle_s <= budget_s < plain_s
    assert oracle_passes <= budget_passes < plain_passes
    assert oracle_passes < len(reply) / 4  # copies of 40 and 25 tokens, 15 at a time


def test_a_draft_models_ceiling_grows_with_acceptance_and_shrinks_with_its_cost():
    table = draft_ceiling(cost_s)
    for row in table.values():
        values = list(row.values())
        assert values == sorted(values) and values[0] >= 1.0
    assert table["0.1"]["0.9"] > table["0.3"]["0.9"]
