"""Bench results: one JSON document per run of `edgeinfer bench`, and the tables made from many of them.

The JSON keeps every raw timing and the machine it came from, so results measured on different devices
merge into one Performance Reference table (`edgeinfer table results/*.json`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import EdgeInferError

SCHEMA = "edgeinfer-bench/1"

DEFINITIONS = {
    "ttft": "prompt in -> first new token out (prefill + first sample), milliseconds",
    "prefill": "prompt tokens / prefill time, tokens per second",
    "decode": "(new tokens - 1) / time from first to last new token, tokens per second",
    "context_size": "the context length (KV cache size) the package was built for",
    "file_size": "bytes of the package on disk (graphs, weights, tokenizer, manifest)",
    "peak_rss": "largest resident set size of the process while loading and running (psutil)",
    "load": "session creation time, including any compile or cache step",
    "statistics": "median over repeats (warm-up runs excluded), with min, max and stddev",
}

def save_json(result: dict, path: str | Path) -> None:
    """Write atomically: a bench killed midway never leaves a half-written or clobbered result file."""
    write_atomic(path, json.dumps(result, indent=2, ensure_ascii=False))


def write_atomic(path: str | Path, text: str) -> None:
    """Write a temp file beside PATH, flush it to disk, then rename it over PATH: PATH is old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # else a power cut right after the rename can leave an empty file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)  # a full disk or a Ctrl-C must not leave the temp file behind
        raise


def load_results(paths: list[str | Path]) -> list[dict]:
    results = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeInferError(f"cannot read bench result {path}: {exc}") from None
        if data.get("schema") != SCHEMA:
            raise EdgeInferError(f"{path} is not an edgeinfer bench result (schema {data.get('schema')!r})")
        results.append(data)
    return results


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} tok/s"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _column(title: str, render=str, headline: bool = True):
    """A field shown in the Markdown table under TITLE (the reference table's own columns when HEADLINE)."""
    return field(metadata={"column": title, "render": render, "headline": headline})


@dataclass(frozen=True)
class BenchRecord:
    """One test of one system on one device: the row every printer renders (Markdown, CSV, peers).

    Field names carry their units; the Markdown columns are the Performance Reference table's, in order.
    """

    device: str = _column("Device")
    backend: str = _column("Backend")
    precision: str = _column("Precision")
    ttft_ms: float | None = _column("TTFT", _ms)
    prefill_tokens_per_s: float | None = _column("Prefill", _rate)
    decode_tokens_per_s: float | None = _column("Decode", _rate)
    context_size: int | None = _column("Context Size", lambda v: "-" if v is None else str(v))
    file_bytes: int | None = _column("File Size", format_bytes)
    model: str = _column("Model", headline=False)
    prompt_tokens: int = _column("Prompt", headline=False)
    new_tokens: int = _column("Generated", headline=False)
    test: str = ""  # llama-bench's name: pp128+tg128
    system: str = "edgeinfer"  # which runtime measured it (peer comparisons)
    random_weights: bool = False
    peak_rss_bytes: int | None = None
    load_s: float | None = None
    onnxruntime: str = ""

    @classmethod
    def from_result(cls, result: dict) -> list["BenchRecord"]:
        """One record per test of an `edgeinfer bench` JSON document."""
        model = result["model"]
        simulator = "simulator" in result["device_description"].lower()
        precision = model["precision"].upper() + (" (random weights, speed only)" if model.get("random_weights") else "")
        return [cls(
            device=result["device_description"], backend=result["backend"] + (" (simulator)" if simulator else ""),
            precision=precision, ttft_ms=test["summary"]["ttft_ms"]["median"],
            prefill_tokens_per_s=test["summary"]["prefill_tokens_per_s"]["median"],
            decode_tokens_per_s=test["summary"]["decode_tokens_per_s"]["median"], context_size=model["context_size"],
            file_bytes=model["file_bytes"], model=model["source"].removeprefix("preset:").rsplit("/", 1)[-1],
            prompt_tokens=test["prompt_tokens"], new_tokens=test["new_tokens"], test=test["name"],
            random_weights=bool(model.get("random_weights")), peak_rss_bytes=result.get("peak_rss_bytes"),
            load_s=result.get("load_s"), onnxruntime=result["versions"].get("onnxruntime", ""),
        ) for test in result["tests"]]


def records(results: list[dict]) -> list[BenchRecord]:
    return [record for result in results for record in BenchRecord.from_result(result)]


def markdown_table(results: list[dict], extra: bool = True) -> str:
    return render_markdown(records(results), extra)


def render_markdown(rows: list[BenchRecord], extra: bool = True, by_system: bool = False) -> str:
    """The reference table (plus model and test lengths unless EXTRA is off; the runtime first with BY_SYSTEM,
    for peer comparisons)."""
    shown = [f for f in fields(BenchRecord) if "column" in f.metadata and (extra or f.metadata["headline"])]
    titles = (["System"] if by_system else []) + [f.metadata["column"] for f in shown]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = ([row.system] if by_system else []) + [f.metadata["render"](getattr(row, f.name)) for f in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(results: list[dict]) -> str:
    return render_csv(records(results))


def render_csv(rows: list[BenchRecord]) -> str:
    """Machine-friendly rows: every field, numbers as numbers."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[f.name for f in fields(BenchRecord)])
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    return out.getvalue()


def detail_table(result: dict) -> str:
    """The on-screen view of one run: each test with spread, then the context sweep."""
    lines = ["| test | TTFT (ms) | prefill (tok/s) | decode (tok/s) |", "|---|---|---|---|"]
    spread = lambda s, d=1: f"{s['median']:.{d}f} ({s['min']:.{d}f}-{s['max']:.{d}f})" if s["median"] is not None else "-"  # noqa: E731
    for test in result["tests"]:
        s = test["summary"]
        lines.append(f"| {test['name']} | {spread(s['ttft_ms'], 0)} | {spread(s['prefill_tokens_per_s'])} | "
                     f"{spread(s['decode_tokens_per_s'])} |")
    if result.get("sweep"):
        lines += ["", "| context | decode (tok/s) |", "|---|---|"]
        lines += [f"| {p['context']} | {spread(p['decode_tokens_per_s'])} |" for p in result["sweep"]]
    return "\n".join(lines)
