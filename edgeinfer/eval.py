"""`edgeinfer eval`: a package's perplexity over a text and, against a reference, the figures llama.cpp's
`llama-perplexity --kl-divergence` prints (same top token, KL divergence, perplexity ratio), computed the same way so
the two tools can be read side by side on one file:

- the text is tokenized whole (no chat template; a BOS only where the tokenizer adds one) and cut into chunks of
  CONTEXT tokens (llama-perplexity -c, default 512), each run from an empty cache, as many whole chunks as asked;
- in each chunk only the second half is scored: the logits at positions CONTEXT/2 .. CONTEXT-2 against the next
  token (llama-perplexity's `first = n_ctx/2`), so every scored token has at least half a context before it;
- KL divergence is KL(reference || package) per scored position, as llama.cpp's (base = the reference);
- the standard errors are llama.cpp's too: same top token sqrt(p(1-p)/(n-1)), mean KLD and ln(PPL ratio) the standard
  error of the per-token mean (for the ratio: of nll - reference nll, i.e. with the covariance of the two).

The reference is another package (a `--precision fp32` export of the same source, say) or a source that transformers
reads (a GGUF file, which it dequantizes to float32, or a Hugging Face folder). A package exported without
`--all-logits` gives one row per run: its scored half then runs one token at a time (the decode path generation uses),
or with `batched` as one run that returns a row per token (the path speculation's verify runs take; packages exported
from 2026-12-01 on): same weights and kernels at another batch size, many times faster on a long text.
Packages run on the device asked for (`--device openvino` for an openvino package, say); the reference on the CPU EP.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import EvalError

DEFAULT_CONTEXT = 512  # llama-perplexity's default -c
DEFAULT_CHUNKS = 5  # 5 x 255 = 1,275 scored tokens
DEFAULT_TEXT_MODULES = ("textwrap", "argparse")  # real text every Python install has (as verify.py reads)


def default_text() -> tuple[str, str]:
    """(name, text): Python's own textwrap and argparse sources, offline and the same on every install of a version."""
    import importlib
    import inspect

    name = " + ".join(f"{m}.py" for m in DEFAULT_TEXT_MODULES) + f" (Python {sys.version.split()[0]})"
    return name, "\n".join(inspect.getsource(importlib.import_module(m)) for m in DEFAULT_TEXT_MODULES)


class LogitsSource(Protocol):
    description: str

    def tokenize(self, text: str) -> list[int]:
        """TEXT's ids as this model reads plain text (a BOS first only where its tokenizer adds one)."""

    def scored_logits(self, ids: list[int], first: int) -> np.ndarray:
        """float32 [len(IDS) - 1 - FIRST, vocab]: the logits at positions FIRST .. len(IDS)-2 of IDS run from an empty
        cache."""


class PackageLogits:
    def __init__(self, path: Path, threads: int | None = None, device: str = "cpu", batched: bool = False):
        from .backends import BackendOptions
        from .model import load

        self.path = Path(path)
        self.model = load(self.path, device=device, verify=False, options=BackendOptions(threads=threads))
        options = self.model.manifest.export_options
        self.all_logits = bool(options.get("all_logits"))
        self.batched = batched and not self.all_logits
        if self.batched and self.model.engine.new_runner().verify_rows < 2:
            raise EvalError(f"{self.path} returns one row of logits per run, so --batched cannot score it: drop --batched "
                            "or re-export the package")
        on = "" if device == "cpu" else f", on {device}"
        scored = "" if self.all_logits else (", scored in one run per chunk" if self.batched else ", scored by decode steps")
        self.description = f"{self.path.name} ({self.model.manifest.precision}, {self._weights(options)}{on}{scored})"

    def _weights(self, options: dict) -> str:
        if self.model.manifest.precision != "w4a16":
            return "float"
        blocks = (self.model.manifest.graphs or {}).get("quantization") or {}
        if blocks.get("weights") == "MatMulNBits, float zero points":  # openvino: every linear requantized
            return f"requantized, block {blocks['block_size']}, float zero points"
        source = self.model.manifest.source
        kept = source.get("keeps_source_blocks")
        if kept is None:  # a package from before the field: a GGUF not requantized kept its blocks
            kept = not options.get("requantize", True) and source.get("description", "").startswith("gguf:")
        if kept:
            return "the GGUF's own blocks"
        rounding = "round to nearest" if not options.get("activation_aware", False) else (
            "activation-aware, GPTQ" if options.get("gptq") else "activation-aware search")
        return f"quantized, block {options.get('block_size')}, {rounding}"

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenizer.encode(text, parse_special=False)

    def scored_logits(self, ids: list[int], first: int) -> np.ndarray:
        if len(ids) > self.model.manifest.context_length:
            raise EvalError(f"{self.path}: chunks of {len(ids)} tokens exceed its context {self.model.manifest.context_length}: "
                            "pass a smaller --context or re-export with a larger one")
        runner = self.model.engine.new_runner()
        ids_array = np.asarray(ids, dtype=np.int64)
        if self.all_logits:
            rows = [np.array(runner.forward(ids_array[i : i + 256], i, all_rows=True)) for i in range(0, len(ids) - 1, 256)]
            return np.concatenate(rows)[first : len(ids) - 1].astype(np.float32)
        if self.batched:  # the unscored half, then the scored positions in one run returning a row each
            runner.run(ids_array[:first], 0)
            runner.run(ids_array[first : len(ids) - 1], first, rows=len(ids) - 1 - first)
            return np.array(runner.last_logits(all_rows=True), dtype=np.float32)
        # forward returns a view of the runner's output buffer, which the next run overwrites: copy each row.
        rows = [np.array(runner.forward(ids_array[: first + 1], 0))]  # the last position's row
        for position in range(first + 1, len(ids) - 1):
            rows.append(np.array(runner.forward(ids_array[position : position + 1], position)))
        return np.stack(rows).astype(np.float32)


class TransformersLogits:
    """A source that transformers reads, in float32: a GGUF (dequantized by transformers) or a Hugging Face folder."""

    def __init__(self, source: Path, threads: int | None = None):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise EvalError("a source as --reference needs torch and transformers: pip install torch transformers, "
                            "or pass an exported package") from None
        if threads:
            torch.set_num_threads(threads)
        source = Path(source)
        where = dict(pretrained_model_name_or_path=source.parent, gguf_file=source.name) if source.is_file() else \
            dict(pretrained_model_name_or_path=source)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(**where)
        except (OSError, ValueError) as exc:
            raise EvalError(f"transformers cannot read {source} ({exc}): pass a package or a GGUF / HF folder") from None
        self.description = f"{source.name} (transformers, float32)"

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def scored_logits(self, ids: list[int], first: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids]), use_cache=False).logits[0]
        return logits[first : len(ids) - 1].float().numpy()


def open_logits(path: str | Path, threads: int | None = None, device: str = "cpu", batched: bool = False) -> LogitsSource:
    """A package folder (it holds manifest.json) run on DEVICE (BATCHED: see PackageLogits), or a source transformers
    reads."""
    from .package import MANIFEST

    path = Path(path)
    if not path.exists():
        raise EvalError(f"{path} does not exist: pass a package folder, a GGUF file or a Hugging Face folder")
    if (path / MANIFEST).is_file():
        return PackageLogits(path, threads, device, batched)
    if device != "cpu":
        raise EvalError(f"{path} is not a package: --device {device} runs packages only, export it first")
    return TransformersLogits(path, threads)


@dataclass
class Scores:
    """Running sums over scored tokens."""

    nll: list[float] = field(default_factory=list)
    ref_nll: list[float] = field(default_factory=list)
    kld: list[float] = field(default_factory=list)
    same_top: list[bool] = field(default_factory=list)
    delta_p: list[float] = field(default_factory=list)
    chunk_ends: list[int] = field(default_factory=list)  # tokens scored by the end of each chunk


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def score_chunk(scores: Scores, logits: np.ndarray, targets: np.ndarray, ref_logits: np.ndarray | None) -> None:
    logp = _log_softmax(logits.astype(np.float64))
    rows = np.arange(len(targets))
    scores.nll.extend((-logp[rows, targets]).tolist())
    if ref_logits is None:
        return
    ref_logp = _log_softmax(ref_logits.astype(np.float64))
    scores.ref_nll.extend((-ref_logp[rows, targets]).tolist())
    scores.kld.extend((np.exp(ref_logp) * (ref_logp - logp)).sum(-1).tolist())
    scores.same_top.extend((logits.argmax(-1) == ref_logits.argmax(-1)).tolist())
    scores.delta_p.extend((np.exp(logp[rows, targets]) - np.exp(ref_logp[rows, targets])).tolist())


@dataclass
class ChunkFigures:
    """One chunk's own figures (not running ones): how much the whole text's figures vary along it."""

    chunk: int  # 0-based: tokens chunk*context .. (chunk+1)*context - 1 of the text
    perplexity: float
    reference_perplexity: float | None = None
    kld_mean: float | None = None
    same_top_pct: float | None = None


@dataclass
class EvalReport:
    package: str
    reference: str | None
    text: str
    text_tokens: int
    context: int
    chunks: int
    scored_tokens: int
    perplexity: float
    perplexity_stderr_pct: float
    seconds: float
    reference_perplexity: float | None = None
    perplexity_ratio: float | None = None  # PPL(package) / PPL(reference), as llama.cpp's "Mean PPL(Q)/PPL(base)"
    perplexity_delta_pct: float | None = None
    kld_mean: float | None = None
    kld_stderr: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top_pct: float | None = None  # llama.cpp's "Same top p"
    same_top_stderr_pct: float | None = None  # per token, llama.cpp's
    # between chunks (std of the chunks' own figures / sqrt(chunks)): tokens of one chunk are not independent, so this
    # one is the wider, honest error bar (46 chunks of the eval text: 0.38 points against 0.22 per token)
    same_top_chunk_stderr_pct: float | None = None
    delta_p_mean_pct: float | None = None  # mean of p(next token) minus the reference's, llama.cpp's "Mean Δp"
    ln_perplexity_ratio: float | None = None  # llama.cpp's "Mean ln(PPL(Q)/PPL(base))", with its standard error
    ln_perplexity_ratio_stderr: float | None = None
    per_chunk: list[ChunkFigures] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        rows = [("package", self.package), ("text", f"{self.text} ({self.text_tokens} tokens)"),
                ("chunks x context", f"{self.chunks} x {self.context} ({self.scored_tokens} tokens scored: second halves)"),
                ("perplexity", f"{self.perplexity:.4f} ± {self.perplexity_stderr_pct:.2f}%")]
        if self.reference is not None:
            rows += [("reference", self.reference), ("reference perplexity", f"{self.reference_perplexity:.4f}"),
                     ("PPL ratio", f"{self.perplexity_ratio:.5f} ({self.perplexity_delta_pct:+.2f}%)"),
                     ("ln(PPL ratio)", f"{self.ln_perplexity_ratio:.5f} ± {self.ln_perplexity_ratio_stderr:.5f}"),
                     ("mean KLD", f"{self.kld_mean:.6f} ± {self.kld_stderr:.6f}"),
                     ("median / 99% / max KLD", f"{self.kld_median:.6f} / {self.kld_p99:.6f} / {self.kld_max:.6f}"),
                     ("same top token", f"{self.same_top_pct:.2f} ± {self.same_top_stderr_pct:.2f}%"),
                     ("mean Δp", f"{self.delta_p_mean_pct:+.3f}%")]
            if len(self.per_chunk) > 1:
                tops = [c.same_top_pct for c in self.per_chunk]
                rows.append(("same top token by chunk (min / median / max; ± between chunks)",
                             f"{min(tops):.2f} / {float(np.median(tops)):.2f} / {max(tops):.2f}%; "
                             f"± {self.same_top_chunk_stderr_pct:.2f}"))
        rows.append(("time", f"{self.seconds:.0f} s"))
        return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def evaluate(package: str | Path, text: str | None = None, text_name: str | None = None,
             reference: str | Path | None = None, context: int = DEFAULT_CONTEXT, chunks: int | None = DEFAULT_CHUNKS,
             threads: int | None = None, progress: bool = True, device: str = "cpu", batched: bool = False) -> EvalReport:
    """PACKAGE's perplexity on DEVICE over TEXT (default: default_text()) in chunks of CONTEXT tokens (CHUNKS of them,
    None: all whole chunks), and its agreement with REFERENCE (on the CPU EP) when given. BATCHED: see PackageLogits."""
    return compare([package], text, text_name, reference, context, chunks, threads, progress, [device], batched)[0]


def compare(packages: list[str | Path], text: str | None = None, text_name: str | None = None,
            reference: str | Path | None = None, context: int = DEFAULT_CONTEXT, chunks: int | None = DEFAULT_CHUNKS,
            threads: int | None = None, progress: bool = True, devices: list[str] | None = None,
            batched: bool = False) -> list[EvalReport]:
    """evaluate() for several PACKAGES on the same chunks: the reference runs once per chunk for all of them.
    DEVICES: one for all packages or one per package (default cpu); a package may be listed twice to compare two
    devices on the same weights."""
    if context < 16 or context % 2:
        raise EvalError(f"--context {context}: use an even number of at least 16 tokens")
    devices = devices or ["cpu"]
    if len(devices) == 1:
        devices = devices * len(packages)
    if len(devices) != len(packages):
        raise EvalError(f"{len(devices)} devices for {len(packages)} packages: pass one --device for all, or one per package")
    if text is None:
        text_name, text = default_text()
    started = time.perf_counter()
    candidates = [open_logits(p, threads, d, batched) for p, d in zip(packages, devices)]
    ids = candidates[0].tokenize(text)
    ref = open_logits(reference, threads) if reference is not None else None
    for other in candidates[1:] + ([ref] if ref is not None else []):
        if other.tokenize(text) != ids:
            raise EvalError(f"{other.description} tokenizes the text differently from {candidates[0].description}: "
                            "compare models that share a tokenizer")
    available = len(ids) // context
    count = available if chunks is None else min(chunks, available)
    if count < 1 or (chunks is not None and available < chunks):
        raise EvalError(f"the text gives {len(ids)} tokens, {context * (chunks or 1)} are needed for {chunks or 1} chunk(s) "
                        f"of {context}: pass a longer --text, fewer --chunks or a smaller --context")
    first = context // 2
    scores = [Scores() for _ in candidates]
    seconds = [0.0] * len(candidates)
    for c in range(count):
        chunk = ids[c * context : (c + 1) * context]
        targets = np.asarray(chunk[first + 1 :])
        ref_logits = ref.scored_logits(chunk, first) if ref is not None else None
        for i, candidate in enumerate(candidates):
            chunk_started = time.perf_counter()
            score_chunk(scores[i], candidate.scored_logits(chunk, first), targets, ref_logits)
            scores[i].chunk_ends.append(len(scores[i].nll))
            seconds[i] += time.perf_counter() - chunk_started
        if progress:  # this chunk's and the running figures: a long evaluation stopped early still says how it stood
            print(f"[{c + 1}/{count}] {_progress_line(scores, ref is not None)}", file=sys.stderr, flush=True)
    total = time.perf_counter() - started
    return [_report(candidate, ref, text_name or "text", len(ids), context, count, s, seconds[i] if len(candidates) > 1 else total)
            for i, (candidate, s) in enumerate(zip(candidates, scores))]


def _progress_line(scores: list[Scores], against_reference: bool) -> str:
    """Chunk c's own figures then the running ones, one value per package: enough to rebuild each chunk's row from a
    log when a long evaluation is stopped."""
    def figures(s: Scores, start: int) -> str:
        nll = np.asarray(s.nll[start:])
        line = f"perplexity {np.exp(nll.mean()):.4f}"
        if against_reference:
            line += f", same top {100 * np.mean(s.same_top[start:]):.2f}%, mean KLD {np.mean(s.kld[start:]):.5f}"
        return line

    ends = scores[0].chunk_ends  # the same chunks for every package
    start = ends[-2] if len(ends) > 1 else 0
    return ("this chunk: " + " | ".join(figures(s, start) for s in scores) + "; running: "
            + " | ".join(figures(s, 0) for s in scores))


def _report(ours, ref, text_name, text_tokens, context, count, s: Scores, seconds) -> EvalReport:
    nll = np.asarray(s.nll)
    ppl = float(np.exp(nll.mean()))
    report = EvalReport(package=ours.description, reference=None if ref is None else ref.description, text=text_name,
                        text_tokens=text_tokens, context=context, chunks=count, scored_tokens=len(nll), perplexity=ppl,
                        perplexity_stderr_pct=float(100 * nll.std() / np.sqrt(len(nll))), seconds=seconds)
    # seconds: this package's own scoring time when several are compared, else the whole evaluation
    spans = list(zip([0] + s.chunk_ends[:-1], s.chunk_ends))  # each chunk's scored tokens
    if ref is None:
        report.per_chunk = [ChunkFigures(c, float(np.exp(nll[a:b].mean()))) for c, (a, b) in enumerate(spans)]
        return report
    kld, ref_nll, same = np.asarray(s.kld), np.asarray(s.ref_nll), np.asarray(s.same_top, dtype=np.float64)
    ref_ppl = float(np.exp(ref_nll.mean()))
    report.reference_perplexity = ref_ppl
    report.perplexity_ratio = ppl / ref_ppl
    report.perplexity_delta_pct = 100 * (ppl / ref_ppl - 1)
    report.ln_perplexity_ratio = float((nll - ref_nll).mean())
    report.ln_perplexity_ratio_stderr = _stderr(nll - ref_nll)
    report.kld_mean, report.kld_stderr = float(kld.mean()), _stderr(kld)
    report.kld_median, report.kld_p99, report.kld_max = (float(np.percentile(kld, q)) for q in (50, 99, 100))
    report.same_top_pct = float(100 * same.mean())
    report.same_top_stderr_pct = _stderr(same) * 100
    report.delta_p_mean_pct = float(100 * np.mean(s.delta_p))
    report.per_chunk = [ChunkFigures(c, float(np.exp(nll[a:b].mean())), float(np.exp(ref_nll[a:b].mean())),
                                     float(kld[a:b].mean()), float(100 * same[a:b].mean()))
                        for c, (a, b) in enumerate(spans)]
    if len(spans) > 1:
        report.same_top_chunk_stderr_pct = float(np.std([c.same_top_pct for c in report.per_chunk], ddof=1) / np.sqrt(len(spans)))
    return report


def _stderr(values: np.ndarray) -> float:
    """Standard error of VALUES' mean as llama-perplexity computes it: sqrt(variance / (n - 1))."""
    return float(np.sqrt(values.var() / (len(values) - 1))) if len(values) > 1 else 0.0


def read_text(path: str | Path) -> tuple[str, str]:
    path = Path(path)
    try:
        return path.name, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read --text {path} ({exc}): pass a UTF-8 text file") from None


def write_json(reports: list[EvalReport], path: str | Path) -> None:
    """One object for one report, a list for several."""
    payload = reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports]
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

