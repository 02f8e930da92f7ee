"""Where a CUDA decode step's GPU time goes: kernels of graph-replayed decode steps, by name.

    PYTHONPATH=$SITE:$PWD python3 bench/cuda_kernels.py PACKAGE [--steps 20] [--prefill N] [--provider-option KEY=VALUE ...]
With --prefill N it profiles prefills of N tokens (TTFT's GPU work) instead of decode steps.
Needs torch (its profiler reads CUPTI, which sees onnxruntime's kernels too, also inside CUDA graphs).
Also prints the host-side split of a step: updating the two input buffers, the run, reading the token back.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=0, help="profile prefills of this many tokens instead")
    ap.add_argument("--provider-option", action="append", default=[], help="KEY=VALUE for the CUDA provider")
    args = ap.parse_args()

    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.sampler import GREEDY

    options = BackendOptions(provider_options=dict(o.split("=", 1) for o in args.provider_option))
    model = edgeinfer.load(args.package, device="cuda", verify=False, options=options)
    if args.prefill:
        return profile_prefill(model, args.prefill, args.steps)
    gen = model.generator(GREEDY)
    gen.append(list(range(100, 228)))
    for _ in range(10):  # the first decode step captures the graph
        gen.append([gen.next_token()])

    runner, token, position = gen.runner, gen.next_token(), gen.position
    split = np.zeros(3)
    started = time.perf_counter()
    for i in range(300):
        t0 = time.perf_counter()
        runner._ids.update_inplace(np.array([[token]], dtype=np.int64))
        runner._seqlens.update_inplace(np.array([position + i], dtype=np.int32))
        t1 = time.perf_counter()
        runner.session.run_with_iobinding(runner._decode, runner._decode_options)
        t2 = time.perf_counter()
        token = runner.greedy_token()
        split += (t1 - t0, t2 - t1, time.perf_counter() - t2)
    step = (time.perf_counter() - started) / 300
    us = split / 300 * 1e6
    print(f"step {step * 1e6:.0f} us ({1 / step:.0f} tok/s): update inputs {us[0]:.0f}, run {us[1]:.0f}, read token {us[2]:.0f}")

    print_kernels(lambda: gen.append([gen.next_token()]), args.steps, "step")


def profile_prefill(model, length: int, runs: int) -> None:
    """Wall time of prompt -> first token id, then the GPU kernels of the same work."""
    from edgeinfer.sampler import GREEDY

    prompt = [int(t) for t in np.random.default_rng(0).integers(100, 100000, size=length)]

    def first_token():
        gen = model.generator(GREEDY)
        gen.append(prompt)
        gen.next_token()

    for _ in range(3):
        first_token()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        first_token()
        times.append(time.perf_counter() - t0)
    print(f"prefill {length}: TTFT median {np.median(times) * 1e3:.2f} ms (min {min(times) * 1e3:.2f})")
    print_kernels(first_token, runs, f"prefill{length}")


def print_kernels(work, repeat: int, unit: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            work()
    total, count = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.device_type.name == "CUDA":
            total[event.name[:100]] += event.device_time_total
            count[event.name[:100]] += 1
    print(f"GPU time {sum(total.values()) / repeat:.0f} us/{unit} in {sum(count.values()) / repeat:.0f} kernels/{unit}")
    for name, t in total.most_common(20):
        print(f"{t / repeat:8.1f} us/{unit} {count[name] / repeat:6.1f}/{unit}  {name}")


if __name__ == "__main__":
    main()
