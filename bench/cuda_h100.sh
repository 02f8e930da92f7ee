#!/usr/bin/env bash
# edgeinfer's CUDA backend vs onnxruntime-genai-cuda on the lent H100, in four back-to-back device calls.
#
# Here, once (all three folders are git-ignored):
#   bash bench/cuda_h100.sh pack          wheels -> .gpuwhl/pack.part00..03 (58 MB each at most)
# Then, with the machine kept warm between the calls (it is given back 30 s after each):
#   run(carry=[".carry"], "bash bench/cuda_h100.sh start")   .carry = part00 + the gguf wheel: starts the exports
#   run(carry=[".carry"], "mkdir -p /root/w && cp .carry/* /root/w/")      .carry = part01, then part02
#   run(carry=[".carry"], "bash bench/cuda_h100.sh run 2>&1 | tee $OUT/log.txt")   .carry = part03: the rest
#   or  families_start (part00), the two copies, then families (part03): each family's GPU parity, preset bench rows
#   or, after SWEEP=1 ... start:  run(carry=[".carry"], "bash bench/cuda_h100.sh sweep")   block sizes x kernel switches
#   or, after start (part03 carried):  run(carry=[".carry"], "bash bench/cuda_h100.sh speculate")   issue 16: verify-run
#   cost by width, greedy check, effective decode per kind estimated from bench/results/speculative-cpu-*.json
#   or, after start and the parts:  run(carry=[".carry"], "bash bench/cuda_h100.sh genai 2>&1 | tee $OUT/genai_log.txt")
#     (.carry = part03 if `run` has not unpacked it yet): edgeinfer's own 1.5B cuda package under onnxruntime-genai-cuda
#   or, issue 16 on real weights: the GGUF split into .gpuwhl/gguf/g.00..17 (`split -b 62100000 -d -a 2 GGUF g.`),
#     carried one piece a call after the four parts (`mkdir -p /root/g && cp .carry/g.* /root/g/`), then
#     run(carry=[".carry"], "bash bench/cuda_h100.sh speculate_real")   GPU tests, the real cuda package, 12 prompts
# Results land in $OUT (edgeinfer bench JSON with and without CUDA graphs, onnxruntime-genai JSON, the
# comparison table, GPU/CPU parity) and are copied into bench/results/ by hand.
set -uo pipefail

W=/root/w                 # carried pieces (kept while the machine stays warm)
LOG=/root/logs
SITE=/tmp/site
export EDGEINFER_CACHE=/root/cache PYTHONUNBUFFERED=1
# Export flags of the sweep's packages (the default package is block 128 with 8-bit lm_head, v and down where Q4_K_M keeps more bits).
declare -A VARIANTS=(
    [b32u]="--block-size 32 --uniform-bits --lm-head-bits 4" [b64u]="--block-size 64 --uniform-bits --lm-head-bits 4"
    [b128u]="--block-size 128 --uniform-bits --lm-head-bits 4" [b32m]="--block-size 32" [b64m]="--block-size 64"
)
PRESET_CUDA="import sys; from edgeinfer.bench.runner import resolve_package as r; print(r(None, sys.argv[1], 'w4a16', 4096, progress=False))"

pack() {
    mkdir -p .gpuwhl .whl .carry
    [[ -f .gpuwhl/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl ]] ||
        pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 -d .gpuwhl onnxruntime-gpu==1.31.1
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
        onnxruntime-genai-cuda==0.18.0 onnx-ir==1.1.0 gguf==0.19.0
    local tree cuda=onnxruntime/capi/libonnxruntime_providers_cuda.so
    tree=$(mktemp -d)
    for w in .gpuwhl/*.whl .whl/*.whl; do unzip -q -o "$w" -d "$tree"; done
    # xz: 378 MB of packages in 216 MB (the wheels' zip: 273 MB), i.e. 4 pieces a call can carry.
    xz -T0 -6 -c "$tree/$cuda" > .gpuwhl/cudaprov.xz
    tar -C "$tree" --exclude="./$cuda" -cf - . | xz -T0 -6 > .gpuwhl/rest.tar.xz
    tar -C .gpuwhl -cf - cudaprov.xz rest.tar.xz | split -b 58000000 -d - .gpuwhl/pack.part
    rm -rf "$tree"; ls -la .gpuwhl
}

start() {
    mkdir -p $W $LOG $EDGEINFER_CACHE && cp .carry/* $W/
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site0 $W/gguf-*.whl || exit 1
    export PYTHONPATH=/tmp/site0:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    # Background jobs in their own sessions outlive this call: the 1.5B packages (cuda for the bench,
    # cpu for parity) and the Hugging Face folder onnxruntime-genai's builder reads.
    setsid nohup bash -c "python3 -c \"$PRESET_CUDA\" cuda > $LOG/export_cuda.log 2>&1; touch $LOG/export_cuda.done" > /dev/null 2>&1 &
    setsid nohup bash -c "python3 -c \"$PRESET_CUDA\" cpu > $LOG/export_cpu.log 2>&1; touch $LOG/export_cpu.done" > /dev/null 2>&1 &
    # The same preset with uniform 4-bit weights (no 8-bit lm_head/v/down): what the mixed default costs in speed.
    setsid nohup bash -c "python3 -m edgeinfer.cli export preset:deepseek-r1-distill-qwen-1.5b -o /root/pkg-u4 --target cuda --uniform-bits --lm-head-bits 4 > $LOG/export_u4.log 2>&1; touch $LOG/export_u4.done" > /dev/null 2>&1 &
    setsid nohup bash -c "python3 bench/cuda_compare.py hf-checkpoint /root/hf15 > $LOG/hf.log 2>&1; touch $LOG/hf.done" > /dev/null 2>&1 &
    # Quantization layouts for the sweep (SWEEP=1): which block size and bit mix onnxruntime's CUDA kernels read fastest.
    local name
    [[ ${SWEEP:-0} == 1 ]] && for name in "${!VARIANTS[@]}"; do
        setsid nohup bash -c "python3 -m edgeinfer.cli export preset:deepseek-r1-distill-qwen-1.5b -o /root/pkg-$name --target cuda ${VARIANTS[$name]} > $LOG/export_$name.log 2>&1; touch $LOG/export_$name.done" > /dev/null 2>&1 &
    done
    # Meanwhile, the tests that need no GPU against the machine's own (CPU) onnxruntime.
    timeout 120 python3 -m pytest tests/test_cuda.py -q -x -rs -p no:cacheprovider 2>&1 | tail -5
}

wait_for() {  # NAME SECONDS
    local i
    for ((i = 0; i < $2; i++)); do [[ -f $LOG/$1.done ]] && return 0; sleep 1; done
    echo "timed out waiting for $1"; tail -5 $LOG/$1.log; return 1
}

run() {
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    python3 -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())"
    echo "== GPU tests"
    timeout 240 python3 -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tail -15
    echo "== waiting for the background exports"
    wait_for export_cuda 300 && wait_for hf 200 && wait_for export_cpu 200
    cat $LOG/export_cuda.log $LOG/hf.log | tail -4
    local cuda_pkg cpu_pkg
    cuda_pkg=$(tail -1 $LOG/export_cuda.log); cpu_pkg=$(tail -1 $LOG/export_cpu.log)
    echo "== onnxruntime-genai builder"
    (time python3 -m onnxruntime_genai.models.builder -i /root/hf15 -o /root/genai15 -p int4 -e cuda -c /root/hfcache) \
        > $LOG/builder.log 2>&1 || tail -20 $LOG/builder.log
    echo "== edgeinfer bench --device cuda"
    python3 -m edgeinfer.cli bench --device cuda --prompt-len 128,1024 --gen-len 256 --repeat 5 \
        --json $OUT/edgeinfer_cuda_h100.json 2>&1 | grep -v "it/s\]" | tail -20
    echo "== edgeinfer, uniform 4-bit"
    wait_for export_u4 200 && python3 -m edgeinfer.cli bench --device cuda --model /root/pkg-u4 --prompt-len 128,1024 \
        --gen-len 256 --repeat 5 --json $OUT/edgeinfer_cuda_h100_u4.json 2>&1 | grep -v "it/s\]" | tail -8
    echo "== edgeinfer, CUDA graphs off"
    python3 bench/cuda_compare.py edge-eager $OUT/edgeinfer_cuda_h100_nograph.json 2>&1 | tail -4
    echo "== onnxruntime-genai-cuda"
    timeout 120 python3 bench/cuda_compare.py genai /root/genai15 $OUT/genai_cuda_h100.json 2>&1 | tail -4
    timeout 120 python3 bench/cuda_compare.py genai /root/genai15 $OUT/genai_cuda_graph_h100.json --cuda-graph 2>&1 | tail -4
    echo "== comparison"
    python3 bench/cuda_compare.py compare $OUT/compare_h100.md $OUT/edgeinfer_cuda_h100.json $(ls $OUT/edgeinfer_cuda_h100_u4.json 2>/dev/null) \
        $OUT/edgeinfer_cuda_h100_nograph.json $OUT/genai_cuda_h100.json $(ls $OUT/genai_cuda_graph_h100.json 2>/dev/null)
    echo "== parity: GPU vs CPU tokens"
    timeout 200 python3 bench/cuda_compare.py parity $OUT/parity_h100.json --large-cpu "$cpu_pkg" --large-cuda "$cuda_pkg" 2>&1 | tail -12
}

speculate() {  # issue 16 on the GPU: verify-run cost by width (captured graphs), greedy check, edit-kind estimate
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    wait_for export_cuda 300 || exit 1
    local cuda_pkg trace
    cuda_pkg=$(tail -1 $LOG/export_cuda.log)
    trace=$(ls bench/results/speculative-cpu-*.json 2>/dev/null | tail -1)
    echo "== GPU tests (speculative ones included)"
    timeout 240 python3 -m pytest tests/test_cuda.py tests/test_speculative.py -q -rs -p no:cacheprovider -k "not qnn" 2>&1 | tail -6
    echo "== verify cost by width on cuda (captured decode and verify graphs), greedy check, estimate from $trace"
    python3 bench/verify_cost.py "$cuda_pkg" --device cuda --depth 600 --repeat 50 ${trace:+--trace "$trace"} \
        --json $OUT/speculative_cuda_h100.json 2>&1 | tail -40
    echo "== edgeinfer bench --device cuda, lookup vs off (random weights: acceptance means nothing, the path runs)"
    for mode in off lookup; do
        python3 -m edgeinfer.cli bench --device cuda --prompt-len 128 --gen-len 256 --repeat 3 --no-sweep \
            --speculate $mode --json $OUT/edgeinfer_cuda_h100_spec_$mode.json 2>&1 | grep "^| " | tail -2
    done
}

GGUF_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  # qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

speculate_real() {  # issue 16 on the GPU: speculation on the real Qwen2.5-Coder GGUF (carried in pieces), 12 prompts
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    local gguf=/root/g/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf pkg=/root/pkg-real-cuda
    [[ -f $gguf ]] || cat /root/g/g.* > $gguf
    echo "$GGUF_SHA256  $gguf" | sha256sum -c --quiet || { echo "the GGUF pieces do not add up"; exit 1; }
    echo "== GPU tests: the CUDA backend (speculation's verify graph included)"
    timeout 200 python3 -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider 2>&1 | tail -6
    [[ -f $pkg/manifest.json ]] || python3 -m edgeinfer.cli export $gguf -o $pkg --target cuda --force 2>&1 | tail -1
    echo "== 12 real prompts, plain against lookup speculation (llama.cpp CUDA: 673 tok/s plain, ../shared/BASELINES.md)"
    timeout 400 python3 bench/speculative.py $pkg $gguf --device cuda --llama-bin /nonexistent \
        --out $OUT/speculative-cuda-h200 2>&1 | tail -30
    echo "== issue 18 on real weights: the same package under onnxruntime-genai-cuda (greedy ids, then decode)"
    timeout 200 python3 bench/genai_greedy.py $pkg --device cuda --tokens 128 2>/dev/null > $OUT/genai_greedy_real.jsonl; tail -1 $OUT/genai_greedy_real.jsonl
    local bench=(--prompt-len 128,1024 --gen-len 256 --repeat 5 --no-sweep)
    python3 -m edgeinfer.cli bench --device cuda --model $pkg "${bench[@]}" --json $OUT/genai_real_edge.json 2>&1 | grep "^| " | tail -2
    timeout 200 python3 bench/peers/ort_genai_driver.py $pkg --device cuda --prompt-lens 128 1024 --gen-len 256 --repeat 5 > $OUT/genai_real_genai.json
    python3 bench/genai_speed.py --edgeinfer edgeinfer=$OUT/genai_real_edge.json --genai genai-on-edgeinfer-pkg=$OUT/genai_real_genai.json --within 0.05
}

setup() {  # the last carried piece: unpack onnxruntime-gpu and onnxruntime-genai into $SITE
    cp .carry/* $W/ 2>/dev/null
    local cuda=$SITE/onnxruntime/capi/libonnxruntime_providers_cuda.so
    [[ -f $cuda ]] && return 0
    cat $W/pack.part* | tar -C $W -xf - && mkdir -p $SITE && xz -d -T0 < $W/rest.tar.xz | tar -C $SITE -xf - &&
        xz -d -T0 < $W/cudaprov.xz > $cuda && chmod +x $cuda
}

FAMILY_PRESETS=${FAMILY_PRESETS:-llama-3.2-1b qwen3-1.7b gemma-3-1b}

families_start() {  # the first carried piece: export the family presets in the background while the rest travels
    mkdir -p $W $LOG $EDGEINFER_CACHE && cp .carry/* $W/
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site0 $W/gguf-*.whl || exit 1
    local name
    for name in $FAMILY_PRESETS; do
        setsid nohup bash -c "PYTHONPATH=/tmp/site0:$PWD python3 -c \"import sys; from edgeinfer.export.cached import resolve_package as r; print(r(sys.argv[1], 'cuda', 'w4a16', 4096, progress=False))\" preset:$name > $LOG/family_$name.log 2>&1; touch $LOG/family_$name.done" > /dev/null 2>&1 &
    done
}

families() {  # issue 15: each family on the GPU's own kernels against transformers, then each real-shape preset's bench
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    echo "== GPU tests: the CUDA backend and each family against transformers"
    timeout 300 python3 -m pytest tests/test_cuda.py tests/test_families.py -k "cuda" -q -rs -p no:cacheprovider \
        > $OUT/families-pytest.log 2>&1; grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" $OUT/families-pytest.log
    local name
    for name in $FAMILY_PRESETS; do
        wait_for family_$name 120 || continue
        echo "== edgeinfer bench --device cuda --model preset:$name"
        timeout 240 python3 -m edgeinfer.cli bench --device cuda --model preset:$name --prompt-len 128,1024 --gen-len 128 \
            --repeat 3 --no-sweep --json $OUT/family-$name.json 2>&1 | grep "^| " | tail -2
    done
}

sweep() {  # decode/TTFT of each layout under each MatMulNBits kernel choice, then where the best one's step goes
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    local name env pkg cuda_pkg
    wait_for export_cuda 300 || exit 1
    cuda_pkg=$(tail -1 $LOG/export_cuda.log)
    for name in default "${!VARIANTS[@]}"; do
        [[ $name == default ]] && pkg=$cuda_pkg || { wait_for export_$name 300 || continue; pkg=/root/pkg-$name; }
        for env in "" ORT_FPA_INTB_GEMM=1 ORT_ENABLE_XQA=1; do
            echo "== $name ${env:-(kernels as shipped)}"
            env $env python3 -m edgeinfer.cli bench --device cuda --model $pkg --prompt-len 128,1024 --gen-len 256 \
                --repeat 5 --no-sweep --json $OUT/sweep-$name${env:+-${env%%=*}}.json 2>&1 | grep "^| " | tail -2
        done
    done
}

genai() {  # issue 18: the edgeinfer cuda package as an onnxruntime-genai model folder, against edgeinfer's own runtime
    setup || exit 1
    export PYTHONPATH=$SITE:$PWD
    python3 -c "import onnxruntime as o; o.preload_dlls(); import onnxruntime_genai as g; print('onnxruntime', o.__version__, 'genai', g.__version__)"
    wait_for export_cuda 300 || exit 1
    local pkg
    pkg=$(tail -1 $LOG/export_cuda.log)
    echo "== greedy ids: edgeinfer vs onnxruntime-genai-cuda (genai_config.json as exported: CUDA graphs on)"
    timeout 300 python3 bench/genai_greedy.py "$pkg" --device cuda --tokens 64 | tee $OUT/genai_greedy_h100.jsonl | tail -1
    echo "== decode and prefill, the same package, edgeinfer then genai then edgeinfer again (drift check)"
    local bench=(--prompt-len 128,1024 --gen-len 256 --repeat 5 --no-sweep)
    python3 -m edgeinfer.cli bench --device cuda --model "$pkg" "${bench[@]}" --json $OUT/genai_edge_a.json 2>&1 | grep "^| " | tail -2
    timeout 300 python3 bench/peers/ort_genai_driver.py "$pkg" --device cuda --prompt-lens 128 1024 --gen-len 256 --repeat 5 \
        > $OUT/genai_on_pkg.json || echo "onnxruntime-genai-cuda failed on the package"
    python3 -m edgeinfer.cli bench --device cuda --model "$pkg" "${bench[@]}" --json $OUT/genai_edge_b.json 2>&1 | grep "^| " | tail -2
    python3 bench/genai_speed.py --edgeinfer edgeinfer=$OUT/genai_edge_a.json edgeinfer-again=$OUT/genai_edge_b.json \
        --genai genai-on-edgeinfer-pkg=$OUT/genai_on_pkg.json --within 0.05 | tee $OUT/genai_speed_h100.md
}

"$@"
