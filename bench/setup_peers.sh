#!/usr/bin/env bash
# Prepare the benchmark peers under bench/.peers/. Idempotent: each step skips what is already there.
#   bash bench/setup_peers.sh [llama_cpp] [weights] [ort_genai] [optimum] [ov_genai]     (default: all five)
# Env: JOBS (build parallelism, default 2), LLAMA_CPP_PYTHON_VERSION, ORT_GENAI_VERSION, OPTIMUM_ONNX_VERSION,
# EDGEINFER_QWEN_GGUF (the real GGUF the llama.cpp peer times; default weights/ in the repository, git-ignored),
# CPUINFO (default /proc/cpuinfo: where the llama.cpp build reads the CPU's flags).
# A step that fails is reported and the others still run; the exit status says whether any failed.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
PEERS=${PEERS:-$BENCH/.peers}  # env: build elsewhere (e.g. the main checkout's peers from a worktree)
JOBS=${JOBS:-2}
CPUINFO=${CPUINFO:-/proc/cpuinfo}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ORT_GENAI_VERSION=${ORT_GENAI_VERSION:-0.18.0}
OPTIMUM_ONNX_VERSION=${OPTIMUM_ONNX_VERSION:-0.1.0}
mkdir -p "$PEERS"

log() { echo "[setup_peers] $*" >&2; }

# llama.cpp's source, vendored in the llama-cpp-python sdist (PyPI is the one registry we reach).
LLAMA_SRC=$PEERS/llama.cpp/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
llama_src() {
    [[ -d $LLAMA_SRC ]] && return
    local dir=$PEERS/llama.cpp
    mkdir -p "$dir"
    pip download --quiet --no-deps --no-binary :all: -d "$dir" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$dir"
}

llama_cpp() {
    local dir=$PEERS/llama.cpp src=$LLAMA_SRC build=$PEERS/llama.cpp/build
    if [[ -x $build/bin/llama-bench && -x $build/bin/llama-lookup ]]; then
        log "llama.cpp: already built in $build/bin"; return
    fi
    llama_src
    # CPU only; nothing that downloads at configure time (web UI, OpenMP fetch, SSL).
    local flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF
                 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF
                 -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
                 $(cpu_switches))
    # lookup/speculative: llama.cpp's own speculative decoding, the peer of edgeinfer --speculate (issue 16);
    # completion: its plain decoding of the same prompts (bench/speculative.py).
    local targets=(llama-bench llama-quantize llama-perplexity llama-lookup llama-speculative llama-completion)
    local t0=$SECONDS
    cmake -S "$src" -B "$build" -G Ninja "${flags[@]}" > "$dir/configure.log"
    cmake --build "$build" -j "$JOBS" --target "${targets[@]}" > "$dir/build.log"
    {
        echo "source: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, vendor/llama.cpp"
        echo "cpu: $(grep -m1 '^model name' "$CPUINFO" | cut -d: -f2- | xargs)"
        echo "cmake flags: ${flags[*]}"
        echo "targets: ${targets[*]}"
        echo "compiler: $(c++ --version | head -1)"
        echo "build seconds (-j$JOBS): $((SECONDS - t0))"
        grep -m1 -o 'CMAKE_C_FLAGS_RELEASE:STRING=.*' "$build/CMakeCache.txt" || true
        echo "-march=native here means: $(c++ -march=native -Q --help=target | awk '$1 == "-march=" {print $2}')," \
             "avx512f $(c++ -march=native -Q --help=target | awk '$1 == "-mavx512f" {print $2}')"
    } > "$dir/BUILD_INFO.txt"
    log "llama.cpp: built in $((SECONDS - t0)) s; flags in $dir/BUILD_INFO.txt"
}

# GGML_NATIVE=OFF and each instruction-set switch set from the flags $CPUINFO lists. Not -march=native: on an
# Intel VM whose cpuid lists AMX that the hypervisor does not grant, the native build dies at its first matmul
# (ldtilecfg, general protection fault). AMX stays off whatever cpuinfo says.
cpu_switches() {
    local have
    have=" $(grep -m1 '^flags' "$CPUINFO" | cut -d: -f2) "
    echo -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    local pair flag switch
    for pair in sse4_2:SSE42 avx:AVX avx2:AVX2 bmi2:BMI2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 \
                avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        flag=${pair%%:*} switch=${pair#*:}
        if [[ $have == *" $flag "* ]]; then echo "-DGGML_$switch=ON"; else echo "-DGGML_$switch=OFF"; fi
    done
}

# The real Qwen2 GGUF the llama.cpp peer times (made once by bench/fetch_real_weights.sh, pip only).
GGUF=${EDGEINFER_QWEN_GGUF:-$REPO/weights/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf}
weights() {
    [[ -f $GGUF ]] && { log "weights: $GGUF is there"; return; }
    bash "$BENCH/fetch_real_weights.sh" "$(dirname "$GGUF")"
    [[ -f $GGUF ]] || { log "weights: fetch_real_weights.sh wrote $(dirname "$GGUF") but $GGUF is not there"; return 1; }
}

# A venv that sees the system packages (torch, transformers, onnx, onnxruntime 1.32) but installs into itself,
# so nothing a peer pulls in can replace the system onnxruntime. Prints the onnxruntime the venv imports.
venv() {
    local venv=$PEERS/$1; shift
    [[ -x $venv/bin/python ]] || python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install --quiet "$@"
    "$venv/bin/python" -c 'import onnxruntime as o; print(f"onnxruntime {o.__version__} from {o.__file__}")' >&2
}

# The tokenizer of the random-weight checkpoint (no model hub here): llama.cpp's Qwen2 vocab file.
vocab() {
    [[ -f $PEERS/ggml-vocab-qwen2.gguf ]] && return
    llama_src
    cp "$LLAMA_SRC/models/ggml-vocab-qwen2.gguf" "$PEERS/"
}

# onnxruntime-genai (CPU). Its builder imports onnx, onnx_ir, torch and transformers, and so does the random
# checkpoint step; gguf reads the vocab. Named here so a system without them still gets them (pip keeps the
# system's copies where they are there; torch from PyPI is a large download).
ort_genai() {
    vocab
    venv venv-genai "onnxruntime-genai==$ORT_GENAI_VERSION" gguf onnx onnx-ir torch transformers
    log "onnxruntime-genai: $PEERS/venv-genai"
}

# optimum's ORTModelForCausalLM: optimum-onnx pins optimum ~2.1 and transformers < 4.58, which this venv
# installs over the system's transformers 5 (torch and onnxruntime still come from the system). onnxruntime's
# 4-bit quantizer (onnx_int4.py) imports onnx_ir.
optimum() {
    vocab
    venv venv-optimum "optimum-onnx[onnxruntime]==$OPTIMUM_ONNX_VERSION" gguf onnx-ir
    log "optimum: $PEERS/venv-optimum"
}

# openvino-genai, and optimum-intel for its int4 IR export: optimum-intel pins transformers (5.5 today), installed in
# this venv over the system's; torch stays the system's CPU build (PyPI's would be the CUDA one), and torchvision,
# which optimum pulls in and whose PyPI wheel does not load with the system's torch, goes again.
ov_genai() {
    vocab
    local torch_version
    torch_version=$(python3 -c 'import torch; print(torch.__version__.split("+")[0])')
    venv venv-openvino "optimum-intel[openvino]" openvino-genai gguf -c <(echo "torch==$torch_version")
    "$PEERS/venv-openvino/bin/pip" uninstall --quiet -y torchvision || true
    log "openvino-genai: $PEERS/venv-openvino"
}

[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0  # sourced (tests/test_bench_peers.py): the functions only

steps=("$@")
[[ $# -gt 0 ]] || steps=(llama_cpp weights ort_genai optimum ov_genai)
failed=()
for step in "${steps[@]}"; do
    # In a subshell with errexit, so that a failing step stops itself, is reported, and the next step still runs
    # (not `( step ) || ...`: bash ignores errexit inside a || list).
    set +e
    ( set -e; "$step" )
    rc=$?
    set -e
    [[ $rc -eq 0 ]] || { failed+=("$step"); log "$step: FAILED (exit $rc); bench/run_peers.py will skip what needs it"; }
done
[[ ${#failed[@]} -eq 0 ]] || { log "failed steps: ${failed[*]}"; exit 1; }
