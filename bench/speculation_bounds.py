"""How far speculation can go on one device: real greedy replies replayed offline against measured verify costs.

    python bench/speculation_bounds.py PKG RESULT.json [--max-proposed 15] [--depth 600] [--repeat 5] [--out PREFIX]

RESULT.json is bench/speculative.py's output on real weights; its plain greedy replies are the text each kind's
replies really are (greedy output is what plain decoding makes, so an offline replay sees the same accept decisions
a live run does). On PKG's device this measures a verify run's time by width (1 .. MAX_PROPOSED + 1 rows), then per
kind (effective decode as a multiple of plain decoding, and tokens per forward pass):
- budget: prompt lookup under `auto`'s DraftBudget, each step costing its measured width: what a live run should get;
- oracle: prompt lookup proposing exactly the tokens that will be kept: no budget can beat it with lookup;
- a draft model's ceiling: for acceptance a per token and a draft step costing c of a target step, the best k of
  E(k) / (k c + t(k+1) / t(1)), E(k) = (1 - a^(k+1)) / (1 - a).
Replies are re-encoded from their text, so a few token boundaries may differ from the ids the run made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgeinfer  # noqa: E402
from edgeinfer.proposers import PromptLookup  # noqa: E402
from edgeinfer.speculative import DraftBudget  # noqa: E402
from speculative import tasks  # noqa: E402
from verify_cost import widths_cost  # noqa: E402

KINDS = ("edit", "quote", "free")
DRAFT_ACCEPTANCE = (0.6, 0.7, 0.8, 0.9, 1.0)
DRAFT_COST = (0.1, 0.2, 0.3)


class Oracle:
    """A budget that knows how many of the proposals will be kept (set by the replay before each step)."""

    def __init__(self):
        self.kept = 0

    def choose(self, available: int, evidence: int = 0) -> int:
        return min(available, self.kept)

    def record(self, proposed: int, kept: int, seconds: float, evidence: int = 0) -> None:
        pass


def replay(prompt: list[int], reply: list[int], budget, cost_s, max_proposed: int) -> tuple[int, float, int]:
    """New tokens after the first, their seconds, forward passes: REPLY decoded after PROMPT with lookup under BUDGET."""
    lookup, position, seconds, passes = PromptLookup(), 1, 0.0, 0
    while position < len(reply):
        offered = lookup.propose(prompt + reply[:position], min(max_proposed, len(reply) - position))
        if isinstance(budget, Oracle):
            budget.kept = next((i for i, t in enumerate(offered.tokens) if t != reply[position + i]), len(offered))
        proposal = offered.first(budget.choose(len(offered), offered.evidence))
        kept = next((i for i, t in enumerate(proposal.tokens) if t != reply[position + i]), len(proposal))
        step = cost_s(len(proposal) + 1)
        budget.record(len(proposal), kept, step, proposal.evidence)
        seconds, passes, position = seconds + step, passes + 1, position + kept + 1
    return len(reply) - 1, seconds, passes


def draft_ceiling(cost_s) -> dict[str, dict[str, float]]:
    table = {}
    for c in DRAFT_COST:
        row = {}
        for a in DRAFT_ACCEPTANCE:
            gains = [((1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1) / (k * c + cost_s(k + 1) / cost_s(1))
                     for k in range(16)]
            row[f"{a:.1f}"] = round(max(gains), 2)
        table[f"{c:.1f}"] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("result", type=Path, help="bench/speculative.py's JSON (real weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-proposed", type=int, default=15)
    parser.add_argument("--depth", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    model = edgeinfer.load(args.package, device=args.device)
    cost_ms, _ = widths_cost(model, args.depth, args.repeat, args.max_proposed + 1)
    widths = sorted(cost_ms)

    def cost_s(width: int) -> float:
        return float(np.interp(width, widths, [cost_ms[w] for w in widths])) / 1000

    runs = json.loads(args.result.read_text())["runs"]
    cases = [(r["kind"], model.encode_prompt([{"role": "user", "content": _message(r)}]),
              model.tokenizer.encode(r["extra"]["text"])) for r in runs if r["side"] == "edgeinfer-plain"]
    plain_rate = 1 / cost_s(1)
    rows = {}
    for name, make in (("budget", lambda: DraftBudget(args.max_proposed)), ("oracle", Oracle)):
        for kind in KINDS:
            totals = np.zeros(3)
            for case_kind, prompt, reply in cases:
                if case_kind == kind:
                    totals += replay(prompt, reply, make(), cost_s, args.max_proposed)
            if totals[2]:
                rows.setdefault(kind, {})[name] = {"x_plain": round(totals[0] / totals[1] / plain_rate, 2),
                                                   "tokens_per_pass": round(totals[0] / totals[2], 2)}
    result = {"package": str(args.package), "result": str(args.result), "device": args.device, "depth": args.depth,
              "verify_ms_by_width": cost_ms, "lookup": rows, "draft_ceiling_x_plain": draft_ceiling(cost_s)}
    text = markdown(result)
    print(text)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(text)


def _message(run: dict) -> str:
    """The prompt RUN was made from: bench/speculative.py's task of that name."""
    return next(t.message for t in tasks() if t.name == run["task"])


def markdown(result: dict) -> str:
    ms = result["verify_ms_by_width"]
    lines = [f"Verify run by width at {result['depth']} cached tokens (ms): "
             + ", ".join(f"{w}: {t:.0f}" for w, t in sorted(ms.items(), key=lambda kv: int(kv[0]))), "",
             "| kind | budget (auto) x plain | tokens/pass | oracle x plain | tokens/pass |", "|---|---|---|---|---|"]
    for kind, row in result["lookup"].items():
        b, o = row["budget"], row["oracle"]
        lines.append(f"| {kind} | {b['x_plain']} | {b['tokens_per_pass']} | {o['x_plain']} | {o['tokens_per_pass']} |")
    lines += ["", "A draft model's ceiling (x plain): acceptance per token across, draft step cost (x a target step) down",
              "", "| c \\ a | " + " | ".join(f"{a:.1f}" for a in DRAFT_ACCEPTANCE) + " |",
              "|---" * (len(DRAFT_ACCEPTANCE) + 1) + "|"]
    for c, row in result["draft_ceiling_x_plain"].items():
        lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
