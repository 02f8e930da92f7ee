#!/bin/bash
# issue 18 on this CPU, one run under /work/heavy: the real 1.5B default package under edgeinfer and onnxruntime-genai,
# genai on its own builder's package, and edgeinfer's graph before/after the genai files.
set -x
S=/work/scratch/lead/genai; G=/work/weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
cd /work/main; export PYTHONPATH=/work/main
grep -m1 "model name" /proc/cpuinfo; date; uptime; git log --oneline -1
python -m edgeinfer.cli export $G -o $S/pkg --force 2>&1 | tail -1
# before = the same GGUF exported by commit 25462bf (before the genai files): is edgeinfer's graph the same bytes?
sha256sum $S/pkg/model.onnx /work/scratch/lead/qw-lossless/model.onnx $S/pkg/model.onnx.data /work/scratch/lead/qw-lossless/model.onnx.data
ls -la $S/pkg
python bench/genai_greedy.py $S/pkg --tokens 64 > $S/greedy-cpu.jsonl; tail -1 $S/greedy-cpu.jsonl
[ -f $S/hf/model.safetensors ] || python bench/hf_from_gguf.py $G $S/hf 2>&1 | grep -v Converting | tail -3
[ -f $S/builder-int4/genai_config.json ] || python -m onnxruntime_genai.models.builder -i $S/hf -o $S/builder-int4 -p int4 -e cpu -c $S/hf-cache > $S/builder.log 2>&1
tail -3 $S/builder.log; du -sh $S/pkg $S/builder-int4; date; uptime
B="python -m edgeinfer.cli bench --device cpu --prompt-len 128 --gen-len 64 --repeat 3 --no-sweep"
D="python bench/peers/ort_genai_driver.py"
for round in 1 2; do
  $B --model /work/scratch/lead/qw-lossless --json $S/edge-before-$round.json 2>&1 | grep "^| " | tail -1
  $B --model $S/pkg --json $S/edge-after-$round.json 2>&1 | grep "^| " | tail -1
  $D $S/pkg --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-ours-$round.json
  $D $S/builder-int4 --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-builder-$round.json
done
python bench/genai_speed.py --edgeinfer edge-after-1=$S/edge-after-1.json edge-before-1=$S/edge-before-1.json edge-after-2=$S/edge-after-2.json edge-before-2=$S/edge-before-2.json \
  --genai genai-ours-1=$S/genai-ours-1.json genai-builder-1=$S/genai-builder-1.json genai-ours-2=$S/genai-ours-2.json genai-builder-2=$S/genai-builder-2.json | tee $S/speed.md
date; uptime
