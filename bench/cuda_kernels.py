"""Where a CUDA decode step's GPU time goes: kernels of graph-replayed decode steps, by name.

    PYTHONPATH=$SITE:$PWD python3 bench/cuda_kernels.py PACKAGE [--steps 20] [--provider-option KEY=VALUE ...]
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
    ap.add_argument("--provider-option", action="append", default=[], help="KEY=VALUE for the CUDA provider")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import edgeinfer
    from edgeinfer.backends import BackendOptions
    from edgeinfer.sampler import GREEDY

    options = BackendOptions(provider_options=dict(o.split("=", 1) for o in args.provider_option))
    model = edgeinfer.load(args.package, device="cuda", verify=False, options=options)
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

    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            gen.append([gen.next_token()])
    total, count = collections.Counter(), collections.Counter()
    for event in prof.events():
        if event.device_type.name == "CUDA":
            total[event.name[:100]] += event.device_time_total
            count[event.name[:100]] += 1
    print(f"GPU time {sum(total.values()) / args.steps:.0f} us/step in {sum(count.values()) / args.steps:.0f} kernels/step")
    for name, t in total.most_common(20):
        print(f"{t / args.steps:8.1f} us/step {count[name] / args.steps:6.1f}/step  {name}")


if __name__ == "__main__":
    main()
