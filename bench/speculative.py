"""Speculative decoding on real prompts: edgeinfer with and without it, beside llama.cpp's plain and lookup decoding.

    python bench/speculative.py PKG GGUF [--device cpu|cuda] [--tokens 256] [--llama-bin DIR] [--out bench/results/speculative-cpu-DATE]

Twelve prompts of three kinds, all real text from this machine's Python standard library (no network):
- edit: a stdlib function's source with a request to change it and reply with the whole function (the reply quotes
  its input: prompt lookup's best case);
- quote: a stdlib module's documentation with a question to answer by quoting it;
- free: free generation (little to look up: speculation must not cost here).
Each runs greedy for exactly TOKENS new tokens (eos ignored, on every side), in one invocation, in turns per prompt
(edgeinfer plain, edgeinfer with speculation, llama.cpp plain, llama.cpp lookup) so that the machine's load falls
on all of them alike. Reported per kind: effective decode tok/s ((new tokens - 1) / time from the first to the last
new token, as `edgeinfer bench` counts), acceptance, tokens per forward pass, and whether the speculative reply is
token for token the plain one.

llama.cpp: `llama-completion` (plain) and `llama-lookup` (its prompt-lookup decoding: n-grams of the prompt and the
reply, --spec-draft-n-max drafted tokens) from DIR, fed the same chat-templated prompt text (llama.cpp parses its
special tokens). No smaller GGUF with this tokenizer is on the machine, so llama.cpp's draft-model decoding
(`llama-speculative`) is not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import edgeinfer  # noqa: E402
from edgeinfer.bench.machine import describe_machine  # noqa: E402
from edgeinfer.sampler import GREEDY  # noqa: E402

LLAMA_BIN = REPO.parent / "main" / "bench" / ".peers" / "llama.cpp" / "build" / "bin"


@dataclass
class Task:
    kind: str  # edit | quote | free
    name: str
    message: str


def _source(module: str, name: str) -> str:
    import importlib

    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return inspect.getsource(target)


def _doc(module: str, limit: int = 2400) -> str:
    import importlib

    text = inspect.getdoc(importlib.import_module(module)) or ""
    return text[:limit]


def tasks() -> list[Task]:
    edit = [
        ("textwrap.dedent", "Rename the variable `margin` to `common_indent` everywhere in this function and reply with "
                            "the whole function, unchanged otherwise."),
        ("heapq.nsmallest", "Add type hints to this function's signature and reply with the whole function, "
                            "unchanged otherwise."),
        ("difflib.get_close_matches", "Rename the parameter `possibilities` to `candidates` everywhere in this function "
                                      "and reply with the whole function, unchanged otherwise."),
        ("statistics.median_grouped", "Add a check that `interval` is positive (raise ValueError otherwise) at the start "
                                      "of this function and reply with the whole function, unchanged otherwise."),
    ]
    quote = [
        ("heapq", "Which sentences explain why heaps are useful for sorting on disk or tape? Quote them word for word, "
                  "then explain them in one sentence."),
        ("argparse", "Quote, word for word, the example program this text gives, then say what it does."),
        ("json", "Quote word for word how this text shows compact encoding and pretty printing, then summarize."),
        ("difflib", "Quote word for word what this text says about each class and function it lists."),
    ]
    free = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain the difference between TCP and UDP to a new programmer, with examples of when to use each.",
        "Give practical advice for someone learning to cook at home for the first time.",
        "Describe how a city could reduce traffic congestion over the next ten years.",
    ]
    out = []
    for name, ask in edit:
        module, _, attr = name.partition(".")
        out.append(Task("edit", name, f"{ask}\n\n```python\n{_source(module, attr)}```"))
    for module, ask in quote:
        out.append(Task("quote", module, f"Here is the documentation of Python's `{module}` module:\n\n{_doc(module)}\n\n{ask}"))
    for k, ask in enumerate(free):
        out.append(Task("free", f"free{k + 1}", ask))
    # Kinds in turn (edit, quote, free, edit, ...): a run cut short still covers every kind.
    return [task for group in zip(out[0:4], out[4:8], out[8:12]) for task in group]


@dataclass
class Run:
    task: str
    kind: str
    side: str  # edgeinfer-plain | edgeinfer-spec | llama-plain | llama-lookup
    prompt_tokens: int
    new_tokens: int
    decode_tokens_per_s: float
    acceptance_rate: float | None = None
    tokens_per_pass: float | None = None
    identical_to_plain: bool | None = None
    extra: dict = field(default_factory=dict)


def edgeinfer_runs(model, task: Task, tokens: int, speculate: str) -> tuple[Run, Run]:
    ids = model.encode_prompt([{"role": "user", "content": task.message}])
    plain = model.generate([{"role": "user", "content": task.message}], tokens, GREEDY, ignore_eos=True, speculate="off")
    spec = model.generate([{"role": "user", "content": task.message}], tokens, GREEDY, ignore_eos=True, speculate=speculate)
    t0, t1 = plain.timings, spec.timings
    return (Run(task.name, task.kind, "edgeinfer-plain", len(ids), t0.new_tokens, t0.decode_tokens_per_s, extra={"text": plain.text}),
            Run(task.name, task.kind, f"edgeinfer-{speculate}", len(ids), t1.new_tokens, t1.decode_tokens_per_s,
                t1.acceptance_rate, t1.tokens_per_pass, spec.token_ids == plain.token_ids,
                {"forward_passes": t1.forward_passes, "verify_passes": t1.verify_passes, "proposed": t1.proposed_tokens,
                 "accepted": t1.accepted_tokens, "text": spec.text}))


def _llama(binary: Path, gguf: Path, prompt_file: Path, tokens: int, extra: list[str]) -> str:
    # -b 2048: llama-lookup aborts on a prompt longer than its batch (get_sub_batch at index 512 of argparse's 531)
    cmd = [str(binary), "-m", str(gguf), "-f", str(prompt_file), "-n", str(tokens), "--temp", "0", "--ignore-eos",
           "-t", "2", "-c", "4096", "-b", "2048", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{binary.name} failed ({done.returncode}): {done.stderr[-800:]}")
    return done.stdout + done.stderr


def llama_plain(bin_dir: Path, gguf: Path, prompt_file: Path, task: Task, tokens: int, prompt_tokens: int) -> Run:
    log = _llama(bin_dir / "llama-completion", gguf, prompt_file, tokens, ["-no-cnv", "--no-display-prompt"])
    match = re.search(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs.*?([\d.]+) tokens per second", log)
    if not match:
        raise RuntimeError(f"llama-completion printed no eval time: {log[-600:]}")
    return Run(task.name, task.kind, "llama-plain", prompt_tokens, int(match.group(2)) + 1, float(match.group(3)))


def llama_lookup(bin_dir: Path, gguf: Path, prompt_file: Path, task: Task, tokens: int, prompt_tokens: int, drafted: int) -> Run:
    log = _llama(bin_dir / "llama-lookup", gguf, prompt_file, tokens, ["--spec-draft-n-max", str(drafted)])
    speed = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", log)
    n_drafted = re.search(r"n_drafted\s+=\s+(\d+)", log)
    n_accept = re.search(r"n_accept\s+=\s+(\d+)", log)
    if not (speed and n_drafted and n_accept):
        raise RuntimeError(f"llama-lookup printed no timings: {log[-600:]}")
    drafted_n, accepted = int(n_drafted.group(1)), int(n_accept.group(1))
    return Run(task.name, task.kind, f"llama-lookup-d{drafted}", prompt_tokens, int(speed.group(1)), float(speed.group(3)),
               accepted / drafted_n if drafted_n else 0.0)


def summarize(runs: list[Run]) -> dict:
    table: dict = {}
    for kind in ("edit", "quote", "free"):
        for side in sorted({r.side for r in runs}):
            mine = [r for r in runs if r.kind == kind and r.side == side]
            if not mine:
                continue
            entry = {"decode_tokens_per_s": statistics.mean(r.decode_tokens_per_s for r in mine),
                     "per_prompt": [round(r.decode_tokens_per_s, 2) for r in mine]}
            if all(r.acceptance_rate is not None for r in mine):
                entry["acceptance_rate"] = statistics.mean(r.acceptance_rate for r in mine)
            if all(r.tokens_per_pass is not None for r in mine):
                entry["tokens_per_pass"] = statistics.mean(r.tokens_per_pass for r in mine)
            if all(r.identical_to_plain is not None for r in mine):
                entry["identical_to_plain"] = f"{sum(r.identical_to_plain for r in mine)}/{len(mine)}"
            table.setdefault(kind, {})[side] = entry
    return table


def markdown(result: dict) -> str:
    lines = [f"# Speculative decoding, {result['machine'].get('cpu', '')} ({result['timestamp']})", "",
             f"{len(result['prompts'])} prompts{'' if result['complete'] else ' (the run was cut short: partial)'}.", "",
             f"Package {result['package']}, GGUF {result['gguf']}; {result['tokens']} new tokens per prompt, greedy, "
             "eos ignored; effective decode tok/s = (new tokens - 1) / first-to-last token time, mean over the kind's prompts.",
             f"llama.cpp: {result['llama_build']}", "",
             "| kind | side | tok/s | x edgeinfer plain | acceptance | tokens/pass | identical |", "|---|---|---|---|---|---|---|"]
    for kind, sides in result["summary"].items():
        base = sides["edgeinfer-plain"]["decode_tokens_per_s"]
        for side, e in sides.items():
            acc = f"{e['acceptance_rate']:.0%}" if "acceptance_rate" in e else "-"
            tpp = f"{e['tokens_per_pass']:.2f}" if "tokens_per_pass" in e else "-"
            lines.append(f"| {kind} | {side} | {e['decode_tokens_per_s']:.1f} | {e['decode_tokens_per_s'] / base:.2f} | {acc} | "
                         f"{tpp} | {e.get('identical_to_plain', '-')} |")
    lines += ["", "Targets (issue 16, this CPU): edit and quote >= 2x edgeinfer plain and >= 1.5x the best llama.cpp "
              "figure; free >= 0.95x plain.", ""]
    for check in result["targets"]:
        lines.append(f"- {check}")
    return "\n".join(lines) + "\n"


def targets(summary: dict, spec_side: str) -> list[str]:
    out = []
    for kind, sides in summary.items():
        ours, plain = sides[spec_side]["decode_tokens_per_s"], sides["edgeinfer-plain"]["decode_tokens_per_s"]
        llama = [e["decode_tokens_per_s"] for s, e in sides.items() if s.startswith("llama")]
        if kind == "free":
            out.append(f"free: {ours:.1f} / {plain:.1f} = {ours / plain:.2f}x plain ({'holds' if ours >= 0.95 * plain else 'MISSED'}, target >= 0.95x)")
            continue
        line = f"{kind}: {ours / plain:.2f}x plain ({'holds' if ours >= 2 * plain else 'MISSED'}, target >= 2x)"
        if llama:
            best = max(llama)
            line += f"; {ours / best:.2f}x the best llama.cpp ({best:.1f} tok/s; {'holds' if ours >= 1.5 * best else 'MISSED'}, target >= 1.5x)"
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--device", default="cpu", help="edgeinfer's device (llama.cpp runs as its build does)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--speculate", default="auto", choices=["auto", "lookup"])
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_BIN)
    parser.add_argument("--draft-max", type=int, nargs="*", default=[3, 7], help="llama-lookup's --spec-draft-n-max values")
    parser.add_argument("--only", nargs="*", help="task names to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"speculative-cpu-{dt.date.today()}")
    args = parser.parse_args()

    model = edgeinfer.load(args.package, device=args.device)
    # The first generations pay one-time costs (a GPU captures its decode and verify graphs): kept out of every figure.
    for speculate in ("off", args.speculate):
        model.generate("def warm(up):\n    return up\n" * 4, 32, GREEDY, raw=True, ignore_eos=True, speculate=speculate)
    have_llama = (args.llama_bin / "llama-completion").exists() and (args.llama_bin / "llama-lookup").exists()
    runs: list[Run] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks():
            if args.only and task.name not in args.only:
                continue
            plain, spec = edgeinfer_runs(model, task, args.tokens, args.speculate)
            runs += [plain, spec]
            print(f"{task.kind:5} {task.name:24} plain {plain.decode_tokens_per_s:6.1f}  {spec.side} {spec.decode_tokens_per_s:6.1f} "
                  f"(acc {spec.acceptance_rate:.0%}, {spec.tokens_per_pass:.2f}/pass, identical {spec.identical_to_plain})", flush=True)
            if have_llama:
                messages = [{"role": "user", "content": task.message}]
                ids = model.encode_prompt(messages)
                prompt_file = Path(tmp) / f"{task.name}.txt"
                prompt_file.write_text(model.tokenizer.decode(ids, skip_special=False), encoding="utf-8")
                try:
                    llama_runs = [llama_plain(args.llama_bin, args.gguf, prompt_file, task, args.tokens, len(ids))]
                    llama_runs += [llama_lookup(args.llama_bin, args.gguf, prompt_file, task, args.tokens, len(ids), d)
                                   for d in args.draft_max]
                except RuntimeError as exc:  # a peer's failure costs its figure for this task, not the run
                    print(f"      llama.cpp failed on {task.name}: {str(exc)[:300]}", flush=True)
                    llama_runs = []
                runs += llama_runs
                print("      " + "  ".join(f"{r.side} {r.decode_tokens_per_s:6.1f}" +
                                           (f" (acc {r.acceptance_rate:.0%})" if r.acceptance_rate is not None else "")
                                           for r in llama_runs), flush=True)
            save(args, runs, started, complete=False)  # what has run so far, should the run be cut short
    save(args, runs, started, complete=True)


def save(args, runs: list[Run], started: float, complete: bool) -> None:
    info = args.llama_bin.parent.parent / "BUILD_INFO.txt"
    summary = summarize(runs)
    result = {
        "schema": "edgeinfer-speculative/1",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "device": args.device,
        "package": str(args.package), "gguf": str(args.gguf), "tokens": args.tokens, "speculate": args.speculate,
        "llama_build": info.read_text().replace("\n", "; ") if info.exists() else ("not run: no build in " + str(args.llama_bin)),
        "seconds": round(time.perf_counter() - started, 1), "complete": complete,
        "prompts": sorted({r.task for r in runs}),
        "summary": summary,
        "targets": targets(summary, f"edgeinfer-{args.speculate}"),
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    if complete:
        print(markdown(result))


if __name__ == "__main__":
    main()
