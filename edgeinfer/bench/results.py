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

TABLE_COLUMNS = ["Device", "Backend", "Precision", "TTFT", "Prefill", "Decode", "Context Size", "File Size"]


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


def _fmt_bytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt(stat: dict, unit: str, digits: int = 1) -> str:
    if not stat or stat.get("median") is None:
        return "-"
    return f"{stat['median']:.{digits}f} {unit}"


def table_rows(results: list[dict]) -> list[dict]:
    """One row per (result, test): the reference table's columns plus the prompt and generation lengths."""
    rows = []
    for r in results:
        model = r["model"]
        precision = model["precision"].upper() + (" (random weights, speed only)" if model.get("random_weights") else "")
        for test in r["tests"]:
            s = test["summary"]
            ttft = s["ttft_ms"]["median"]
            rows.append({
                "Device": r["device_description"],
                "Backend": r["backend"] + (" (simulator)" if "simulator" in r["device_description"].lower() else ""),
                "Precision": precision,
                "TTFT": f"{ttft / 1000:.2f} s" if ttft >= 1000 else f"{ttft:.0f} ms",
                "Prefill": _fmt(s["prefill_tokens_per_s"], "tok/s"),
                "Decode": _fmt(s["decode_tokens_per_s"], "tok/s"),
                "Context Size": str(model["context_size"]),
                "File Size": _fmt_bytes(model["file_bytes"]),
                "Model": model["source"].removeprefix("preset:").rsplit("/", 1)[-1],
                "Prompt": test["prompt_tokens"],
                "Generated": test["new_tokens"],
            })
    return rows


def markdown_table(results: list[dict], extra: tuple[str, ...] = ("Model", "Prompt", "Generated")) -> str:
    columns = TABLE_COLUMNS + list(extra)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table_rows(results):
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def csv_text(results: list[dict]) -> str:
    """Machine-friendly rows: numbers, not formatted strings."""
    out = io.StringIO()
    fields = ["device", "backend", "precision", "random_weights", "prompt_tokens", "new_tokens", "ttft_ms",
              "prefill_tokens_per_s", "decode_tokens_per_s", "context_size", "file_bytes", "peak_rss_bytes", "load_s",
              "onnxruntime"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for r in results:
        for test in r["tests"]:
            s = test["summary"]
            writer.writerow({
                "device": r["device_description"], "backend": r["backend"], "precision": r["model"]["precision"],
                "random_weights": r["model"].get("random_weights"), "prompt_tokens": test["prompt_tokens"],
                "new_tokens": test["new_tokens"], "ttft_ms": s["ttft_ms"]["median"],
                "prefill_tokens_per_s": s["prefill_tokens_per_s"]["median"],
                "decode_tokens_per_s": s["decode_tokens_per_s"]["median"], "context_size": r["model"]["context_size"],
                "file_bytes": r["model"]["file_bytes"], "peak_rss_bytes": r.get("peak_rss_bytes"),
                "load_s": r.get("load_s"), "onnxruntime": r["versions"].get("onnxruntime"),
            })
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
