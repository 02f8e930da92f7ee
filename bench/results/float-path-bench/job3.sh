#!/bin/bash
# export today's default and the candidate from the F32 GGUF, eval both against the fp32 package, bench alternating
set -x
cd /work/wt-q19
export PYTHONPATH=$PWD
E="python -m edgeinfer.cli"
F=/work/scratch/gguf/q4km-dequant-f32.gguf; S=/work/scratch/gguf; Q=/work/scratch/q19
grep -m1 "model name" /proc/cpuinfo; nproc; date; git log -1 --oneline
[ -f $Q/f32-default/manifest.json ] || /usr/bin/time -f "export default: %e s, max RSS %M KB" $E export $F -o $Q/f32-default --eight-bit q4km --lm-head-bits 8 --force 2>&1 | grep -v "it/s\]" | tail -3
[ -f $Q/f32-attn-down-head4/manifest.json ] || /usr/bin/time -f "export candidate: %e s, max RSS %M KB" $E export $F -o $Q/f32-attn-down-head4 --eight-bit attention-down --lm-head-bits 4 --force 2>&1 | grep -v "it/s\]" | tail -3
du -sb $Q/f32-default $Q/f32-attn-down-head4
date
for r in 1 2; do
  $E bench --device cpu --model $Q/f32-default --prompt-len 128 --gen-len 64 --repeat 3 --no-sweep --json $Q/bench-default-$r.json 2>&1 | tail -4
  $E bench --device cpu --model $Q/f32-attn-down-head4 --prompt-len 128 --gen-len 64 --repeat 3 --no-sweep --json $Q/bench-candidate-$r.json 2>&1 | tail -4
done
date
/usr/bin/time -f "eval: %e s, max RSS %M KB" $E eval $Q/f32-default $Q/f32-attn-down-head4 --reference $S/q4km-fp32 --text $S/eval-text.txt --context 512 --chunks 5 --json $Q/eval-default-candidate.json 2>&1 | grep -v "it/s\]" | tail -40
date
