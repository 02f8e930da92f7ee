"""A static (qnn) package's decode step fed to session.run, and bound in place (static_runner.CacheBuffers).

    python bench/static_binding.py PACKAGE [--device cpu qnn] [--steps 32] [--repeat 5] [--json out.json]

For each device and binding: milliseconds per decode step (mean +- stddev over repeats) and the bytes the process
allocates per step. The allocations are counted by a malloc shim preloaded into a child process (Linux with a C
compiler; "n/a" elsewhere): every malloc, calloc, realloc and aligned allocation, numpy's and onnxruntime's alike.
Then the same accounting for the DeepSeek-R1-Distill-Qwen-1.5B shape at a context of 4096, from the graph contract.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.graph_contract import static_io, static_step_bytes
from edgeinfer.package import load_package
from edgeinfer.static_runner import StaticEngine, StaticRunner

COUNTER = r"""
#include <stddef.h>
#include <stdint.h>
extern void *__libc_malloc(size_t); extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t); extern void *__libc_memalign(size_t, size_t);
static uint64_t bytes;
static void count(size_t n) { __atomic_fetch_add(&bytes, n, __ATOMIC_RELAXED); }
void *malloc(size_t n) { count(n); return __libc_malloc(n); }
void *calloc(size_t k, size_t n) { count(k * n); return __libc_calloc(k, n); }
void *realloc(void *p, size_t n) { count(n); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { count(n); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { count(n); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) { count(n); void *p = __libc_memalign(a, n); if (!p) return 12; *out = p; return 0; }
uint64_t counted_bytes(void) { return __atomic_load_n(&bytes, __ATOMIC_RELAXED); }
"""


def counted_bytes():
    """The preloaded shim's running total, or None when this process runs without it."""
    try:
        function = ctypes.CDLL(None).counted_bytes
    except AttributeError:
        return None
    function.restype = ctypes.c_uint64
    return function


def with_counter() -> None:
    """Run this script again with the malloc shim preloaded, where it can be built."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if sys.platform != "linux" or compiler is None or os.environ.get("STATIC_BINDING_COUNTER") == "off":
        return
    folder = Path(tempfile.mkdtemp(prefix="malloc-counter-"))
    (folder / "counter.c").write_text(COUNTER)
    if subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(folder / "counter.so"), str(folder / "counter.c")]).returncode:
        return
    env = {**os.environ, "LD_PRELOAD": str(folder / "counter.so"), "STATIC_BINDING_COUNTER": "off"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def runners(package, device: str) -> dict[str, StaticRunner]:
    backend = get_backend(device)
    engine = StaticEngine(backend, package, backend.package_options(package.manifest.precision, BackendOptions()))
    m = engine.manifest
    return {"session.run": StaticRunner(engine.sessions_for(m.context_length), m.graphs, m.spec, m.context_length, engine.embeddings),
            "bound (IOBinding)": engine.new_runner()}


def measure(runners: dict[str, StaticRunner], prompt: list[int], steps: int, repeat: int) -> dict[str, dict]:
    """Decode STEPS tokens REPEAT times per runner, the runners taking turns (the same machine load for each)."""
    counter = counted_bytes()
    seconds = {name: [] for name in runners}
    allocated = {name: [] for name in runners}
    for runner in runners.values():
        runner.forward(prompt, 0)
        for position in range(len(prompt), len(prompt) + 4):  # warm up
            runner.forward([position % 200], position)
    for k in range(repeat):
        start = len(prompt) + 4 + k * steps
        for name, runner in runners.items():
            before = counter() if counter else 0
            started = time.perf_counter()
            for position in range(start, start + steps):
                runner.forward([position % 200], position)
            seconds[name].append((time.perf_counter() - started) / steps)
            if counter:
                allocated[name].append((counter() - before) / steps)
    return {name: {"ms_per_step": 1e3 * float(np.mean(seconds[name])), "ms_stddev": 1e3 * float(np.std(seconds[name])),
                   "allocated_bytes_per_step": float(np.mean(allocated[name])) if counter else None} for name in runners}


class SkippedGraph:
    """A session whose bound runs do nothing: what is left to count is the runner's own work."""

    def run_with_iobinding(self, binding, run_options=None) -> None:
        pass


def runner_alone(runner: StaticRunner, prompt: list[int], steps: int) -> float | None:
    """Bytes a bound runner allocates per decode step outside onnxruntime's run."""
    counter = counted_bytes()
    if counter is None:
        return None
    runner.sessions = {role: [SkippedGraph() for _ in parts] for role, parts in runner.sessions.items()}
    runner.forward(prompt, 0)
    before = counter()
    for position in range(len(prompt), len(prompt) + steps):
        runner.forward([position % 200], position)
    return (counter() - before) / steps


def shape_of_1_5b(context: int = 4096) -> dict:
    from edgeinfer.export.presets import PRESETS
    from edgeinfer.export.static_graph import layer_parts

    spec = PRESETS["deepseek-r1-distill-qwen-1.5b"].spec
    parts = layer_parts(spec, "w4a16")
    graphs = {"decode": {"tokens": 1, "parts": [static_io(p, k == 0, k == len(parts) - 1) for k, p in enumerate(parts)]},
              "host": {"kv_cache": {"dtype": "uint16"}}}
    return static_step_bytes(graphs, spec, context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--device", nargs="+", default=["cpu", "qnn"])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    if counted_bytes() is None:
        with_counter()
    package = load_package(args.package)
    m = package.manifest
    prompt = list(range(40, 40 + m.graphs["prefill"]["tokens"] + 5))
    rows = []
    for device in args.device:
        status = get_backend(device).availability()
        if not status.ok:
            print(f"{device}: skipped ({status})", file=sys.stderr)
            continue
        for binding, result in measure(runners(package, device), prompt, args.steps, args.repeat).items():
            rows.append({"device": device, "binding": binding, **result})
    alone = runner_alone(runners(package, "cpu")["bound (IOBinding)"], prompt, args.steps)
    moved = static_step_bytes(m.graphs, m.spec, m.context_length)
    print(f"{args.package} (context {m.context_length}, {m.spec.num_layers} layers, kv {m.kv_cache['dtype']}): a decode step "
          f"moves {moved['total']:,} B, the cache {moved['cache']:,} B; session.run allocates {moved['outputs']:,} B of "
          f"outputs; the host copies {moved['new_rows']:,} B of new rows\n")
    print("| device | binding | decode ms/step | bytes allocated/step |\n|---|---|---|---|")
    for r in rows:
        allocated = "n/a" if r["allocated_bytes_per_step"] is None else f"{r['allocated_bytes_per_step']:,.0f}"
        print(f"| {r['device']} | {r['binding']} | {r['ms_per_step']:.3f} ± {r['ms_stddev']:.3f} | {allocated} |")
    if alone is not None:
        print(f"\nThe bound runner alone (graph runs skipped) allocates {alone:,.0f} B a step: small numpy temporaries")
    big = shape_of_1_5b()
    print(f"\n1.5B W4A16 at 4096: a decode step moves {big['total'] / 1e6:.1f} MB ({big['cache'] / 1e6:.1f} MB cache); "
          f"session.run allocates {big['outputs'] / 1e3:.1f} kB of outputs a step, bound buffers none; the host copies "
          f"{big['new_rows'] / 1e3:.1f} kB of new rows either way; an HTP without shared memory copies the "
          f"{big['total'] / 1e6:.1f} MB in and out each step, with it none")
    if args.json:
        Path(args.json).write_text(json.dumps({"package": args.package, "rows": rows, "runner_alone_bytes": alone, "tiny": moved, "1.5b_4096": big}, indent=2))


if __name__ == "__main__":
    main()
