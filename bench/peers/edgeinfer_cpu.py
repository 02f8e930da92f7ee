"""edgeinfer itself, as one more row of the side-by-side table: the same prompt and generation lengths,
timed by `edgeinfer bench` on the DeepSeek-R1-Distill-Qwen-1.5B preset (random weights, exact shape)."""

from __future__ import annotations

import os
from pathlib import Path

from . import PeerResult, result

FIX = "pip install -e . (from the repository root)"
BLOCK_SIZE = int(os.environ.get("EDGEINFER_BLOCK_SIZE", "128"))


def available() -> tuple[bool, str]:
    import edgeinfer

    return True, f"edgeinfer {edgeinfer.__version__}"


def package(workdir: Path) -> Path:
    from edgeinfer.export.exporter import export
    from edgeinfer.export.options import ExportOptions
    from edgeinfer.package import MANIFEST

    out = workdir / f"edgeinfer-w4a16-b{BLOCK_SIZE}-cpu"
    if not (out / MANIFEST).exists():
        export("preset:deepseek-r1-distill-qwen-1.5b", out, ExportOptions(block_size=BLOCK_SIZE), force=True)
    return out


def run(prompt_lens: list[int], gen_len: int, repeat: int, threads: int, workdir: Path) -> list[PeerResult]:
    from edgeinfer.backends import BackendOptions
    from edgeinfer.bench.runner import bench

    pkg = package(workdir.resolve())
    report = bench("cpu", str(pkg), tuple(prompt_lens), gen_len, repeat, 1, sweep=False,
                   options=BackendOptions(threads=threads), progress=False)
    weights = f"W4A16 b{BLOCK_SIZE} (4-bit, 8-bit lm_head/v/down in 13 layers)"
    size = report["model"]["file_bytes"]
    notes = f"edgeinfer {report['edgeinfer_version']}, onnxruntime {report['versions']['onnxruntime']}, peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB"
    rows = []
    for test in report["tests"]:
        runs = test["runs"]
        p = test["prompt_tokens"]
        rows.append(result("edgeinfer", weights, size, f"pp{p}", [r["prefill_tokens_per_s"] for r in runs],
                           [r["ttft_s"] * 1000 for r in runs], notes + "; pp = prompt / TTFT"))
        rows.append(result("edgeinfer", weights, size, f"tg{gen_len} @ d{p}", [r["decode_tokens_per_s"] for r in runs], notes=notes))
    return rows
