#!/usr/bin/env bash
# bench/cuda_ppl.sh — part of `make bench-cuda`: tokens/s of `qlab ppl` on the CUDA backend (QL_BACKEND=cuda, which
# `--device cuda` selects) for synthetic F16 models of the llama-3.2-1b and llama-3-8b shapes at ctx 2048, with
# the GPU's peak memory (nvidia-smi, sampled every 100 ms), again with QL_CUDA_HALF_GEMM=1 (fp16 weights and
# activations on tensor cores, F32 accumulation), the 8B shape again in a 24 GiB budget (streamed
# layers), and each figure beside its reference: llama.cpp's CUDA perplexity tool on the same GGUF when
# $LLAMA_PERPLEXITY names its binary (built with -DGGML_CUDA=ON), else the CPU backend on one chunk of the 1B
# shape. Prints figures; asserts nothing (a benchmark, not a test). Without a GPU it says so and exits 0.
#   SHAPES="llama-3.2-1b llama-3-8b" CTX=2048 CHUNKS=4 BENCH_DIR=/tmp/qlab-bench-cuda
set -u
cd "$(dirname "$0")/.."
QLAB=${QLAB:-./qlab}
SHARED=${QL_SHARED:-../shared}
DIR=${BENCH_DIR:-/tmp/qlab-bench-cuda}
CTX=${CTX:-2048}
CHUNKS=${CHUNKS:-4}
SHAPES=${SHAPES:-"llama-3.2-1b llama-3-8b"}
THREADS=${THREADS:-$(nproc)}
jget() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU: not available on this machine (qlab ppl --device cuda needs one)"
  exit 0
fi
GPU=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
echo "qlab bench-cuda ($(date -u +%F), GPU: $GPU, ctx $CTX, $CHUNKS chunks)"
mkdir -p "$DIR"
TEXT="$SHARED/data/wikitext-2-test.raw"
if [ ! -f "$TEXT" ]; then # any text does for speed: the synthetic vocabulary is bytes
  TEXT="$DIR/text.txt"
  for i in $(seq 1 4000); do echo "The quick brown fox $i jumps over the lazy dog; qlab measures tokens per second."; done >"$TEXT"
fi

# peak GPU memory (MiB) while "$@" runs; the run's stdout goes to $DIR/out.json
peak_run() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$DIR/mem.log" 2>/dev/null &
  local mon=$!
  "$@" >"$DIR/out.json" 2>"$DIR/err.log"
  local rc=$?
  kill "$mon" 2>/dev/null; wait "$mon" 2>/dev/null
  PEAK=$(sort -n "$DIR/mem.log" | tail -1)
  return $rc
}

printf '%-52s %12s %10s %14s\n' "run" "tokens/s" "peak MiB" "reference t/s"
for shape in $SHAPES; do
  model="$DIR/$shape-f16.gguf"
  [ -f "$model" ] || $QLAB synth --shape "$shape" --type f16 --threads "$THREADS" -o "$model" >/dev/null || { echo "synth $shape failed"; continue; }
  ref="n/a"
  if [ -n "${LLAMA_PERPLEXITY:-}" ]; then
    ref=$("$LLAMA_PERPLEXITY" -m "$model" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -ngl 99 2>&1 |
          sed -n 's/.*prompt eval time.*, *\([0-9.]*\) tokens per second.*/\1/p' | tail -1)
    ref="${ref:-n/a} (llama.cpp)"
  elif [ "$shape" = llama-3.2-1b ]; then
    ref=$(QL_BACKEND=cpu $QLAB ppl "$model" --text "$TEXT" --ctx "$CTX" --chunks 1 --threads "$THREADS" --json 2>/dev/null | jget tokens_per_s)
    ref="${ref:-n/a} (cpu)"
  fi
  for mode in f32 half 24g; do
    budget=; half=0
    [ $mode = half ] && half=1
    if [ $mode = 24g ]; then [ "$shape" = llama-3-8b ] || continue; budget=24576; fi
    label="ppl $shape f16 ctx $CTX$([ $half = 1 ] && echo ' (QL_CUDA_HALF_GEMM)')${budget:+ (24 GiB budget, streamed)}"
    if QL_CUDA_HALF_GEMM=$half QL_CUDA_MEM_MB=$budget QL_BACKEND=cuda peak_run $QLAB ppl "$model" --text "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" \
         --threads "$THREADS" --json; then
      tps=$(jget tokens_per_s <"$DIR/out.json"); ppl=$(jget ppl <"$DIR/out.json")
      printf '%-52s %12.0f %10s %14s   PPL %s\n' "$label" "$tps" "$PEAK" "$ref" "$ppl"
    else
      printf '%-52s %12s %10s %14s   %s\n' "$label" failed "$PEAK" "$ref" "$(tail -1 "$DIR/err.log")"
    fi
  done
done
