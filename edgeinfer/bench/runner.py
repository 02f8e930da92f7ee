"""`edgeinfer bench`: resolve the model (exporting and caching it when needed), measure, and report."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..backends import BackendOptions, get_backend
from ..errors import EdgeInferError
from ..export.cached import resolve_package
from ..package import load_manifest
from ..sampler import GREEDY
from ..speculative import OFF, Speculation
from .machine import describe_machine
from .memory import PeakMemory
from .profiler import decode_at_depth, run_test
from .results import DEFINITIONS, SCHEMA

SWEEP_CONTEXTS = (128, 1024, 4096, 16384)


def bench(device: str, model: str | None = None, prompt_lens=(128, 1024), gen_len: int = 128, repeat: int = 5,
          warmup: int = 1, context: int = 4096, precision: str = "w4a16", sweep: bool = True,
          options: BackendOptions | None = None, progress: bool = True, speculation: Speculation = OFF) -> dict:
    """SPECULATION: off by default here: random prompts on random weights loop, and prompt lookup would time the loop
    (bench/speculative.py measures speculation on real prompts and weights)."""
    from ..model import load

    backend = get_backend(device)
    backend.require()
    options = options or BackendOptions()
    package = resolve_package(model, backend.target, precision, context, progress)
    fits = load_manifest(package, verify=False).context_length
    for p in prompt_lens:
        if p < 1 or p + gen_len > fits:
            raise EdgeInferError(f"prompt {p} + generation {gen_len} does not fit the context {fits}: lower them or raise --context")
    with PeakMemory(gpu=device == "cuda") as memory:
        loaded = load(package, device=device, options=options)
        generator = loaded.generator(GREEDY)
        tests = [run_test(generator, p, gen_len, repeat, warmup, progress, speculation) for p in prompt_lens]
        steps = min(32, gen_len)
        # The deepest point leaves room for the steps it times: 4096 becomes 4064 in a 4096-token package.
        depths = sorted({min(d, loaded.context_length - steps) for d in SWEEP_CONTEXTS if d <= loaded.context_length})
        depths = depths if sweep else []
        points = [decode_at_depth(generator, d, steps, max(1, min(repeat, 3))) for d in depths]
    manifest = loaded.manifest
    return {
        "schema": SCHEMA,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "edgeinfer_version": __version__,
        "device": device,
        "backend": backend.name,
        "device_description": backend.device_description(),
        "machine": describe_machine(),
        "versions": backend.versions(),
        "backend_options": asdict(options),
        "model": {
            "source": manifest.source["description"],
            "random_weights": manifest.source["random_weights"],
            "package": str(package),
            "precision": manifest.precision,
            "target": manifest.target,
            "context_size": manifest.context_length,
            "file_bytes": manifest.total_bytes,
            "architecture": manifest.architecture,
            "export_options": manifest.export_options,
        },
        "load_s": loaded.load_s,
        "session_s": loaded.session_s,
        "peak_rss_bytes": memory.peak_rss,
        "peak_gpu_mib": memory.peak_gpu_mib,
        "settings": {"prompt_lens": list(prompt_lens), "gen_len": gen_len, "repeat": repeat, "warmup": warmup,
                     "speculate": speculation.mode},
        "tests": [t.to_dict() for t in tests],
        "sweep": points,
        "definitions": DEFINITIONS,
    }
