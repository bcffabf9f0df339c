#!/usr/bin/env bash
# scripts/get_llamacpp.sh — a llama.cpp build to measure qlab against (bench/run.sh, bench/cuda_8b.sh), on a machine
# that reaches the npm registry but not GitHub: node-llama-cpp's npm package carries llama.cpp's source as a git
# bundle (llama/gitRelease.bundle). Nothing in qlab needs llama.cpp; only the side-by-side benchmarks use it.
#
#   bash scripts/get_llamacpp.sh [DIR]          # CPU build of llama-quantize, llama-perplexity, llama-imatrix
#   CUDA=1 bash scripts/get_llamacpp.sh [DIR]   # the same with GGML_CUDA (sm_90: H100/H200), for bench/cuda_8b.sh
#
# Prints the bin folder; then e.g. `LLAMA_CPP=DIR/build/bin make bench` or
# `LLAMA_PERPLEXITY=DIR/build-cuda/bin/llama-perplexity bash scripts/gpu_checks.sh 8b`.
# NODE_LLAMA_CPP_VERSION picks the npm package version (default: the newest).
set -euo pipefail
DIR=${1:-${TMPDIR:-/tmp}/llamacpp}
VER=${NODE_LLAMA_CPP_VERSION:-latest}
for tool in npm git cmake c++; do
  command -v "$tool" >/dev/null || { echo "get_llamacpp: '$tool' is needed (apt-get install npm git cmake g++)" >&2; exit 1; }
done
if [ ! -d "$DIR/.git" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "node-llama-cpp@$VER" >/dev/null)
  tar xzf "$work"/node-llama-cpp-*.tgz -C "$work" package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
  git clone -q "$work/package/llama/gitRelease.bundle" "$DIR"
  cp "$work/package/llama/llama.cpp.info.json" "$DIR/qlab-source.json"
fi
if [ "${CUDA:-0}" = 1 ]; then
  B=$DIR/build-cuda
  cmake -S "$DIR" -B "$B" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
else
  B=$DIR/build
  cmake -S "$DIR" -B "$B" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF >/dev/null
fi
cmake --build "$B" -j"$(nproc)" --target llama-quantize llama-perplexity llama-imatrix >/dev/null
echo "$B/bin"
