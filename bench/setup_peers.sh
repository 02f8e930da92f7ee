#!/usr/bin/env bash
# Prepare the benchmark peers under bench/.peers/. Idempotent: each step skips what is already there.
#   bash bench/setup_peers.sh [llama_cpp] [ort_genai] [optimum]     (default: all three)
# Env: JOBS (build parallelism, default 2), LLAMA_CPP_PYTHON_VERSION, ORT_GENAI_VERSION.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
PEERS=$BENCH/.peers
JOBS=${JOBS:-2}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
ORT_GENAI_VERSION=${ORT_GENAI_VERSION:-0.18.0}
mkdir -p "$PEERS"

log() { echo "[setup_peers] $*" >&2; }

# llama.cpp, from the source vendored in the llama-cpp-python sdist (PyPI is the one registry we reach).
llama_cpp() {
    local dir=$PEERS/llama.cpp src build
    src=$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
    build=$dir/build
    if [[ -x $build/bin/llama-bench && -x $build/bin/llama-quantize ]]; then
        log "llama.cpp: already built in $build/bin"; return
    fi
    mkdir -p "$dir"
    if [[ ! -d $src ]]; then
        pip download --quiet --no-deps --no-binary :all: -d "$dir" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
        tar -xzf "$dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$dir"
    fi
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
        grep -h -o -- '-march=[a-z0-9-]*' "$build/compile_commands.json" 2>/dev/null | sort -u || true
    } > "$dir/BUILD_INFO.txt"
    log "llama.cpp: built in $((SECONDS - t0)) s; flags in $dir/BUILD_INFO.txt"
}

for peer in "${@:-llama_cpp ort_genai optimum}"; do
    for p in $peer; do "$p"; done
done
