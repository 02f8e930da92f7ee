#!/bin/bash
cd /work/wt-q19
export PYTHONPATH=$PWD
A="python bench/float_path_probe.py /work/scratch/gguf/q4km-dequant-f32.gguf --tokenizer /work/scratch/gguf/q4km-fp32/tokenizer.json --text /work/scratch/gguf/eval-text.txt --first-chunk 20 --chunks 4"
date
/usr/bin/time -f "probe rotated: %e s, max RSS %M KB" $A --rotate --configs "export default;export head 4, qkvo 8;export all4+head8;export default, head 4;export head 4, qkvo 8, down 8" --json /work/scratch/q19/probe2-rot.json
date
/usr/bin/time -f "probe: %e s, max RSS %M KB" $A --configs "export default;export head 4, qkvo 8;export default, head 4;export head 4, qkvo 8, down 8" --json /work/scratch/q19/probe2.json
date
