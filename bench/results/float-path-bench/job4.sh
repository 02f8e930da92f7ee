#!/bin/bash
# decode/prefill, default vs candidate, alternated, 5 repeats each (job3's 3-repeat runs swung 5.6-8.1 tok/s)
set -x
cd /work/wt-q19
export PYTHONPATH=$PWD
Q=/work/scratch/q19; E="python -m edgeinfer.cli"
date; uptime
for r in 3 4; do
  $E bench --device cpu --model $Q/f32-default --prompt-len 128 --gen-len 64 --repeat 5 --no-sweep --json $Q/bench-default-$r.json 2>&1 | tail -4
  $E bench --device cpu --model $Q/f32-attn-down-head4 --prompt-len 128 --gen-len 64 --repeat 5 --no-sweep --json $Q/bench-candidate-$r.json 2>&1 | tail -4
done
date; uptime
