#!/bin/bash
# issue 18: genai on its own builder's package (same GGUF, dequantized) against genai on edgeinfer's package, alternating
set -x
S=/work/scratch/lead/genai; cd /work/main; export PYTHONPATH=/work/main
date; uptime
[ -f $S/builder-int4/genai_config.json ] || /usr/bin/time -f "builder: %e s, %M KB" python -m onnxruntime_genai.models.builder -i $S/hf -o $S/builder-int4 -p int4 -e cpu -c $S/hf-cache > $S/builder.log 2>&1
tail -3 $S/builder.log; du -sh $S/pkg $S/builder-int4; ls $S/builder-int4
D="python bench/peers/ort_genai_driver.py"
for round in 1 2; do
  $D $S/pkg --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-ours-b$round.json
  $D $S/builder-int4 --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-builder-b$round.json
done
python bench/genai_speed.py --genai ours-1=$S/genai-ours-b1.json builder-1=$S/genai-builder-b1.json ours-2=$S/genai-ours-b2.json builder-2=$S/genai-builder-b2.json | tee $S/speed-builder.md
date
