#!/usr/bin/env bash
# Issue 20 on real weights, on OpenVINO's CPU device, in one run (here: under /work/heavy, one job at a time):
#   /work/heavy bash bench/openvino_real_weights.sh
# 1. the openvino package of the GGUF (`export --target openvino`: int4 MatMulNBits b32, float zero points);
# 2. openvino-genai's IR of the same weights: the GGUF dequantized by transformers to a float32 HF folder, then
#    optimum-intel int4 (NNCF's data-free default: asymmetric groups of 128, int8 where its rules keep 8 bits);
# 3. `edgeinfer bench` --device cpu (the default cpu package) and --device openvino:cpu, then openvino-genai at its
#    default precision (bf16 on a CPU with AVX-512 BF16 / AMX) and at f32 (what edgeinfer asks of OpenVINO's CPU);
# 4. `edgeinfer eval` of the openvino package on OpenVINO against the fp32 cpu package (llama-perplexity chunks).
# Results in $S/results (summary.md: the table, ratios and eval figures); copy them to bench/results/openvino/.
set -x
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD EDGEINFER_CACHE=${EDGEINFER_CACHE:-/work/scratch/ov2/cache}
S=${S:-/work/scratch/ov2}; R=$S/results; mkdir -p $R
GGUF=${GGUF:-/work/weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
CPU=${CPU:-/work/scratch/gguf/q4km-exact}    # `edgeinfer export GGUF` (its own Q4_K/Q6_K blocks, context 4096)
FP32=${FP32:-/work/scratch/gguf/q4km-fp32}   # `edgeinfer export GGUF --precision fp32 --all-logits --context 1024`
TEXT=${TEXT:-/work/scratch/gguf/eval-text.txt}
VENV=${VENV:-/work/scratch/ov/venv-genai}    # openvino, openvino-genai, optimum-intel, nncf, torch, transformers, gguf
OV=$S/q15-ov; HF=$S/hf-q4km-f32; IR=$S/ir-q4km-int4
grep -m1 "model name" /proc/cpuinfo; nproc; uptime; date; git log --oneline -1

[ -f $OV/manifest.json ] || /usr/bin/time -f "export openvino: %e s wall, %M KiB peak" \
  python -m edgeinfer.cli export $GGUF -o $OV --target openvino --context 1024 --force 2>&1 | tail -3
[ -f $HF/config.json ] || /usr/bin/time -f "gguf -> hf: %e s wall, %M KiB peak" $VENV/bin/python -c "
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
g, out = Path(sys.argv[1]), sys.argv[2]
AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32).save_pretrained(out)
AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(out)" $GGUF $HF 2>&1 | tail -2
[ -f $IR/openvino_model.xml ] || /usr/bin/time -f "optimum-cli int4: %e s wall, %M KiB peak" $VENV/bin/optimum-cli export \
  openvino --model $HF --task text-generation-with-past --weight-format int4 $IR 2>&1 | tail -14

B="python -m edgeinfer.cli bench --prompt-len 128 --gen-len 64 --repeat 3 --no-sweep"
$B --device cpu --model $CPU --json $R/bench-cpu.json 2>&1 | tail -4
$B --device openvino:cpu --model $OV --json $R/bench-openvino.json 2>&1 | tail -4
export OPENVINO_GENAI_PYTHON=$VENV/bin/python OPENVINO_GENAI_MODEL=$IR
P="python bench/run_peers.py --peers ov_genai --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 --workdir $S/peers"
$P --out $R/peer-openvino-genai.json 2>&1 | tail -6
OPENVINO_GENAI_PRECISION=f32 $P --out $R/peer-openvino-genai-f32.json 2>&1 | tail -6
uptime; date
/usr/bin/time -f "eval: %e s wall, %M KiB peak" python -m edgeinfer.cli eval $OV --device openvino:cpu --reference $FP32 \
  --text $TEXT --context 512 --chunks 5 --json $R/eval-openvino.json 2>&1 | tee $R/eval-openvino.log | tail -20
uptime; date
python bench/openvino_summary.py --edgeinfer $R/bench-cpu.json $R/bench-openvino.json \
  --peers $R/peer-openvino-genai.json $R/peer-openvino-genai-f32.json --eval $R/eval-openvino.json | tee $R/summary.md
