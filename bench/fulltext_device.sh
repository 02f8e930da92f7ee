#!/usr/bin/env bash
# Issue 19's float-path fidelity over the WHOLE eval text (46 chunks x 512, 11,730 scored tokens) on the device
# machine's CPU cores, with llama.cpp's yardstick on the same chunks: bench/results/float-path-fulltext-qwen2.5-coder-1.5b.md.
#
# What travels (one call carries at most 64 MiB with the session's checkout): the Q4_K_M GGUF cut into 19 pieces
# (piece 0 also holds the trimmed llama.cpp source of llama-cpp-python 0.3.36, the gguf wheel and eval-text.txt),
# then onnxruntime 1.32.0 (the version the earlier figures ran on here; the device has 1.30) and this branch's code.
# Here: each piece in turn in an ignored folder .ft/ of the checkout (with this script), and back to back:
#   run(carry=[".ft"], "bash .ft/fulltext_device.sh start")     piece 0: llama.cpp builds start (CPU and CUDA)
#   run(carry=[".ft"], "bash .ft/fulltext_device.sh piece")     pieces 1..17
#   run(carry=[".ft"], "bash .ft/fulltext_device.sh go")        piece 18 + wheels + code: checks, starts the pipeline
#   run(carry=[".ft"], "bash .ft/fulltext_device.sh wait")      until the pipeline ends; results in $OUT/fulltext.tgz
# The pipeline (background, its own session): F32 GGUF (llama-quantize), four packages exported side by side, then
# `edgeinfer eval` over all chunks (batched: three packages; decode steps: the cpu default, as far as time allows)
# while llama-perplexity computes the F32 base and the KL divergence of Q4_0 / Q4_K_M from the F32 and of the GGUF.
set -uo pipefail

G=/root/g             # carried pieces
W=/root/w             # GGUFs, packages, results
LOG=$W/logs
L=/root/llama         # llama.cpp source and builds
SITE=/root/site       # onnxruntime 1.32 + gguf
FT=/root/ft           # this branch's edgeinfer
SELF=/root/fulltext_device.sh
GGUF_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
PIECES=19
EVAL_THREADS_BATCHED=${EVAL_THREADS_BATCHED:-10}  # 10 + 2 + 4 = the 16 cores
EVAL_THREADS_DECODE=${EVAL_THREADS_DECODE:-2}
LLAMA_THREADS=${LLAMA_THREADS:-4}
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1 EDGEINFER_CACHE=/root/cache

stamp() { echo "$(date -u +%H:%M:%S) $*"; }

start() {
    mkdir -p $G $W $LOG && cp .ft/* $G/ && cp .ft/fulltext_device.sh $SELF
    grep -m1 "model name" /proc/cpuinfo; nproc; free -g | head -2; df -h /root | tail -1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    cp /proc/cpuinfo $LOG/cpuinfo.txt
    grep -m1 -o -w 'avx512f\|amx_int8\|avx512_vnni\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
    tar -xzf $G/llama.tgz -C /root && mv /root/llama.cpp $L || exit 1
    setsid nohup bash $SELF build cpu > $LOG/build-cpu.log 2>&1 < /dev/null &
    setsid nohup bash $SELF build cuda > $LOG/build-cuda.log 2>&1 < /dev/null &
    sleep 5; tail -n 3 $LOG/build-*.log
}

build() {  # cpu | cuda: llama-quantize and llama-perplexity
    local kind=$1 t0=$SECONDS
    local flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF
                 -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF
                 -DLLAMA_OPENSSL=OFF)
    if [[ $kind == cuda ]]; then flags+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90); else flags+=(-DGGML_CUDA=OFF); fi
    cmake -S $L -B $L/build-$kind -G Ninja "${flags[@]}" || exit 1
    # 6 + 10 jobs: both builds share the 16 cores while the pieces travel
    cmake --build $L/build-$kind -j $([[ $kind == cuda ]] && echo 10 || echo 6) --target llama-quantize llama-perplexity || exit 1
    echo "build $kind: $((SECONDS - t0)) s"
    touch $LOG/build-$kind.done
}

status() {
    echo "pieces: $(ls $G | grep -c '^g\.') of $PIECES; builds done: $(cd $LOG && ls build-*.done 2>/dev/null | tr '\n' ' ')"
    local f
    for f in $LOG/build-cpu.log $LOG/build-cuda.log; do [[ -f $f ]] && echo "$(basename $f): $(tail -1 $f | cut -c1-150)"; done
}

piece() {
    cp .ft/g.* $G/ && ls -la .ft | tail -n +4
    status
}

go() {
    cp .ft/* $G/ && cp .ft/fulltext_device.sh $SELF
    status
    local build; build=$(pgrep -f "fulltext_device.sh build cuda" | head -1)
    [[ -f $LOG/build-cuda.done || -z $build ]] || { kill -- -$build; echo "stopped the CUDA build (session $build)"; }
    local n; n=$(ls $G | grep -c '^g\.')
    [[ $n == "$PIECES" ]] || { echo "only $n of $PIECES pieces: carry the missing ones first"; exit 1; }
    cat $(ls $G/g.* | sort) > $W/G.gguf && rm -f $G/g.*
    echo "$GGUF_SHA256  $W/G.gguf" | sha256sum -c - || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE $G/*.whl || exit 1
    mkdir -p $FT && tar -xzf $G/code.tgz -C $FT || exit 1
    (cd $FT && PYTHONPATH=$SITE:$FT python3 -c "import onnxruntime, gguf, edgeinfer.eval as e; print('onnxruntime', onnxruntime.__version__, e.__file__)") || exit 1
    setsid nohup bash $SELF pipeline > $LOG/pipeline.log 2>&1 < /dev/null &
    watch_pipeline 520
}

wait_() { watch_pipeline ${1:-540}; }

watch_pipeline() {  # SECONDS: print the pipeline's state every 30 s until it ends or SECONDS pass; then collect
    local until=$((SECONDS + $1))
    while ((SECONDS < until)) && [[ ! -f $LOG/pipeline.done ]]; do
        sleep 30
        stamp "$(tail -1 $LOG/pipeline.log)"
        local f
        for f in $LOG/eval-*.log; do [[ -f $f ]] && echo "  $(basename $f): $(grep '^\[' $f | tail -1 | cut -c1-230)"; done
    done
    collect
}

collect() {
    [[ -f $LOG/pipeline.done ]] && echo "pipeline done" || echo "pipeline still running"
    cat $LOG/pipeline.log
    du -sb $W/*/ 2>/dev/null
    ls -la $W/*.gguf $W/*.json 2>/dev/null
    local f
    for f in $LOG/kld-*.log $LOG/ppl-base.log; do
        [[ -f $f ]] && { echo "== $f"; grep -A30 "====== Perplexity statistics" $f | head -45; }
    done
    [[ -n ${OUT:-} ]] || return 0
    mkdir -p $W/manifests
    for f in $W/*/manifest.json; do cp $f $W/manifests/$(basename $(dirname $f)).json; done
    tar -czf $OUT/fulltext.tgz -C $W logs manifests $(cd $W && ls *.json 2>/dev/null)
    ls -la $OUT
}

bg() {  # NAME CMD...: run in the background, log to $LOG/NAME.log, seconds and exit status in the pipeline log
    local name=$1; shift
    (local t0=$SECONDS; "$@" > $LOG/$name.log 2>&1; local rc=$?
     stamp "$name: rc $rc, $((SECONDS - t0)) s"; touch $LOG/$name.done) &
}

wait_for() {  # FILE SECONDS
    local i
    for ((i = 0; i < $2; i++)); do [[ -f $1 ]] && return 0; sleep 1; done
    stamp "timed out waiting for $1"; return 1
}

llama_side() {  # llama-perplexity's KL divergence against the F32 GGUF, on the GPU when the CUDA build is there
    local Q=$L/build-cpu/bin/llama-quantize P=$L/build-cpu/bin/llama-perplexity where="-t $LLAMA_THREADS" t
    $Q $W/F32.gguf $W/q4_0-from-f32.gguf Q4_0 4 > $LOG/quant-q4_0.log 2>&1
    $Q $W/F32.gguf $W/q4_k_m-from-f32.gguf Q4_K_M 4 > $LOG/quant-q4_k_m.log 2>&1
    # 2026-12-01: the CUDA build (283 steps) had done 101 when the pieces were in (fattn template instances):
    # stopped, llama.cpp ran on the CPU cores beside the eval
    if [[ -f $LOG/build-cuda.done && -x $L/build-cuda/bin/llama-perplexity ]]; then
        P=$L/build-cuda/bin/llama-perplexity where="-ngl 99 -t 4"
    fi
    stamp "llama-perplexity: $P $where"
    $P -m $W/F32.gguf -f $G/eval-text.txt -c 512 $where --kl-divergence-base $W/kld-base-f32.bin > $LOG/ppl-base.log 2>&1
    for t in q4_0-from-f32 q4_k_m-from-f32 G; do
        $P -m $W/$t.gguf -f $G/eval-text.txt -c 512 $where --kl-divergence-base $W/kld-base-f32.bin --kl-divergence \
            > $LOG/kld-$t.log 2>&1
        stamp "kld $t: rc $?"
    done
}

pipeline() {
    # python puts the working directory ahead of PYTHONPATH: from the checkout it imports the checkout's edgeinfer
    # (on 2026-12-01 the batched eval failed so, on main's eval.py, and was started again by hand from $FT)
    cd $FT || exit 1
    export PYTHONPATH=$SITE:$FT
    local E="python3 -m edgeinfer.cli" text=$G/eval-text.txt
    stamp "pipeline starts; $(grep -m1 'model name' /proc/cpuinfo)"
    wait_for $LOG/build-cpu.done 600 || exit 1
    local t0=$SECONDS
    $L/build-cpu/bin/llama-quantize --allow-requantize $W/G.gguf $W/F32.gguf F32 16 > $LOG/quant-f32.log 2>&1 || exit 1
    stamp "F32 GGUF: $((SECONDS - t0)) s, $(stat -c %s $W/F32.gguf) B"
    bg llama llama_side
    # the reference as /work/scratch/gguf/exports.sh made it; the float path from the F32 file
    bg export-fp32 $E export $W/G.gguf -o $W/fp32 --precision fp32 --all-logits --context 1024 --force
    bg export-lossless $E export $W/G.gguf -o $W/lossless --force
    bg export-cpu-default $E export $W/F32.gguf -o $W/cpu-default --force
    bg export-old-default $E export $W/F32.gguf -o $W/old-default --eight-bit q4km --lm-head-bits 8 --force
    local p
    for p in fp32 lossless cpu-default old-default; do wait_for $LOG/export-$p.done 900 || exit 1; done
    # decode steps (as generation runs) for the cpu default, as many chunks as time allows: its log has each chunk's
    # figures; batched (one verify run per chunk's scored half) for all three over all chunks
    bg eval-decode $E eval $W/cpu-default --reference $W/fp32 --text $text --context 512 --chunks 0 \
        --threads $EVAL_THREADS_DECODE --json $W/eval-decode-cpu-default.json
    bg eval-batched $E eval $W/cpu-default $W/old-default $W/lossless --reference $W/fp32 --text $text --context 512 \
        --chunks 0 --batched --threads $EVAL_THREADS_BATCHED --json $W/eval-batched.json
    wait_for $LOG/eval-batched.done 3000
    wait_for $LOG/llama.done 600
    stamp "pipeline done"
    touch $LOG/pipeline.done
}

case ${1:-} in
    start) start ;;
    piece) piece ;;
    go) go ;;
    wait) wait_ "${2:-540}" ;;
    build) build "$2" ;;
    pipeline) pipeline ;;
    llama_side) llama_side ;;
    *) echo "usage: $0 start | piece | go | wait [SECONDS]"; exit 2 ;;
esac
