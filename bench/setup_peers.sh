#!/usr/bin/env bash
# Prepare the benchmark peers under bench/.peers/. Idempotent: each step skips what is already there.
#   bash bench/setup_peers.sh [llama_cpp] [ort_genai] [optimum]     (default: all three)
# Env: JOBS (build parallelism, default 2), LLAMA_CPP_PYTHON_VERSION, ORT_GENAI_VERSION, OPTIMUM_ONNX_VERSION.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
PEERS=$BENCH/.peers
JOBS=${JOBS:-2}
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
    if [[ -x $build/bin/llama-bench && -x $build/bin/llama-quantize ]]; then
        log "llama.cpp: already built in $build/bin"; return
    fi
    llama_src
    # CPU only, tuned for this CPU; nothing that downloads at configure time (web UI, OpenMP fetch, SSL).
    local flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF
                 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
                 -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF)
    local targets=(llama-bench llama-quantize llama-perplexity)
    local t0=$SECONDS
    cmake -S "$src" -B "$build" -G Ninja "${flags[@]}" > "$dir/configure.log"
    cmake --build "$build" -j "$JOBS" --target "${targets[@]}" > "$dir/build.log"
    {
        echo "source: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, vendor/llama.cpp"
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

# onnxruntime-genai (CPU). Its builder needs onnx, onnx-ir, torch, transformers from the system; gguf reads the vocab.
ort_genai() {
    vocab
    venv venv-genai "onnxruntime-genai==$ORT_GENAI_VERSION" gguf
    log "onnxruntime-genai: $PEERS/venv-genai"
}

# optimum's ORTModelForCausalLM: optimum-onnx pins optimum ~2.1 and transformers < 4.58, which this venv
# installs over the system's transformers 5 (torch and onnxruntime still come from the system).
optimum() {
    vocab
    venv venv-optimum "optimum-onnx[onnxruntime]==$OPTIMUM_ONNX_VERSION" gguf
    log "optimum: $PEERS/venv-optimum"
}

peers=("$@")
[[ $# -gt 0 ]] || peers=(llama_cpp ort_genai optimum)
for peer in "${peers[@]}"; do "$peer"; done
