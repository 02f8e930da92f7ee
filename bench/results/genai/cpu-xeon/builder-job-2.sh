#!/bin/bash
# after CI: genai on its builder's package vs on ours, alternating (issue 18), then decode at depth (issue 16)
set -x
S=/work/scratch/lead/genai; cd /work/main; export PYTHONPATH=/work/main
date; uptime
D="python bench/peers/ort_genai_driver.py"
for round in 3 4; do
  $D $S/pkg --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-ours-b$round.json
  $D $S/builder-int4 --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 > $S/genai-builder-b$round.json
done
python bench/genai_speed.py --genai ours-3=$S/genai-ours-b3.json builder-3=$S/genai-builder-b3.json ours-4=$S/genai-ours-b4.json builder-4=$S/genai-builder-b4.json | tee $S/speed-builder-2.md
date; uptime
bash /work/scratch/lead/i16/job.sh > /work/scratch/lead/i16/job.log 2>&1
date
