#!/bin/bash
# llama.cpp's own 4-bit from the F32 GGUF (the float path's source), scored against the F32 base logits
set -x
S=/work/scratch/gguf; L=/work/main/bench/.peers/llama.cpp/build/bin; Q=/work/scratch/q19/ll
grep -m1 "model name" /proc/cpuinfo; nproc; date
for T in Q4_K_M Q4_0 Q5_K_M; do
  [ -f $Q/f32-to-$T.gguf ] || $L/llama-quantize $S/q4km-dequant-f32.gguf $Q/f32-to-$T.gguf $T 2 2>&1 | grep -E "model size|quant size|total time"
  ls -l $Q/f32-to-$T.gguf
  $L/llama-perplexity -m $Q/f32-to-$T.gguf -f $S/eval-text.txt -c 512 --chunks 5 -t 2 --kl-divergence-base $S/kld-base-f32.bin --kl-divergence 2>&1 | tail -45
  date
done
