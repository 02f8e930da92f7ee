#!/bin/bash
cd /work/wt-q19
export PYTHONPATH=$PWD
date
C="default;all4+head8;default, head float;default, embed float;default, down_proj float;default, v_proj float;default, attn float;default, mlp_in float;default, layers:0-3 float;default, layers:24-27 float;default, embed b32;default, embed 8-bit;all down 8"
/usr/bin/time -f "probe: %e s, max RSS %M KB" python bench/float_path_probe.py /work/scratch/gguf/q4km-dequant-f32.gguf --tokenizer /work/scratch/gguf/q4km-fp32/tokenizer.json --text /work/scratch/gguf/eval-text.txt --first-chunk 20 --chunks 4 --configs "$C" --json /work/scratch/q19/probe1.json
date
