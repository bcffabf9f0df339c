#!/usr/bin/env bash
# bench/cuda_8b.sh — `make bench-cuda-8b`: issue 16's 8B timing goals on one GPU, each beside its goal and with the
# GPU's peak memory (nvidia-smi, sampled every 100 ms):
#   1. GPTQ of every linear of the llama-3.1-8b shape into int4_g128 on the GPU (build/bench/gptq_8b_cuda: the
#      method's device path per tensor; goal < 5 min on one H100, peers 12-16 min on A100-class GPUs);
#   2. a KLD-level sensitivity sweep of the synthetic 8B model with 6 candidates through the CUDA backend
#      (qlab sense --device cuda; goal < 10 min), resident;
#   2b. the sweep with one candidate per pass (--cand-batch 1), cut at SENSE1_S: KLD cells/s against batched;
#   3. the same sweep in a 24 GiB budget (QL_CUDA_MEM_MB=24576: layers streamed), cut at SENSE_BUDGET_S.
# Each step runs under `timeout` so the whole script stays inside ~10 minutes on an H100 (STEP_S, SENSE_S);
# a step cut off prints how far it got. Prints figures; asserts nothing. Without a GPU it says so and exits 0.
#   LAYERS=32 FORMAT=int4_g128 CANDS=q8_0,q6_k,q5_k,q4_k,q4_0,q3_k CTX=256 CHUNKS=2 BENCH_DIR=/tmp/qlab-bench-cuda
set -u
cd "$(dirname "$0")/.."
QLAB=${QLAB:-./qlab}
BUILD=${BUILD:-build}
SHARED=${QL_SHARED:-../shared}
DIR=${BENCH_DIR:-/tmp/qlab-bench-cuda}
LAYERS=${LAYERS:-32}
FORMAT=${FORMAT:-int4_g128}
CANDS=${CANDS:-q8_0,q6_k,q5_k,q4_k,q4_0,q3_k}
CTX=${CTX:-256}
CHUNKS=${CHUNKS:-2}
STEP_S=${STEP_S:-240}
SENSE_S=${SENSE_S:-240}
SENSE_BUDGET_S=${SENSE_BUDGET_S:-90}
SENSE1_S=${SENSE1_S:-90}
THREADS=${THREADS:-$(nproc)}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "GPU: not available on this machine (the 8B goals need one)"
  exit 0
fi
GPU=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
echo "qlab bench-cuda-8b ($(date -u +%F), GPU: $GPU)"
mkdir -p "$DIR"

# peak GPU memory (MiB) while "$@" runs (stdout to $DIR/out.log, stderr to $DIR/err.log); seconds in $SECS
peak_run() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$DIR/mem.log" 2>/dev/null &
  local mon=$! t0 rc
  t0=$(date +%s.%N)
  "$@" >"$DIR/out.log" 2>"$DIR/err.log"
  rc=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  kill "$mon" 2>/dev/null; wait "$mon" 2>/dev/null
  PEAK=$(sort -n "$DIR/mem.log" | tail -1)
  return $rc
}

echo
echo "=== 1. GPTQ $FORMAT of the llama-3.1-8b shape ($LAYERS layers), goal < 300 s on one H100"
peak_run timeout "$STEP_S" "$BUILD/bench/gptq_8b_cuda" "$LAYERS" "$FORMAT"
rc=$?
cat "$DIR/out.log"
[ $rc = 0 ] || { echo "gptq_8b_cuda: exit $rc (124: cut at $STEP_S s)"; tail -2 "$DIR/err.log"; }
echo "peak GPU memory ${PEAK:-?} MiB, wall ${SECS} s (inputs included)"

model="$DIR/llama-3-8b-f16.gguf" # bench/cuda_ppl.sh makes the same file; made here when absent
if [ ! -f "$model" ]; then
  t0=$(date +%s)
  $QLAB synth --shape llama-3-8b --type f16 --threads "$THREADS" -o "$model" >/dev/null ||
    { echo "synth llama-3-8b failed"; exit 1; }
  echo "(synth llama-3-8b f16: $(( $(date +%s) - t0 )) s)"
fi
TEXT="$SHARED/data/wikitext-2-test.raw"
if [ ! -f "$TEXT" ]; then
  TEXT="$DIR/text.txt"
  for i in $(seq 1 4000); do echo "The quick brown fox $i jumps over the lazy dog; qlab measures tokens per second."; done >"$TEXT"
fi
sense_args=(sense "$model" --text "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" --candidates "$CANDS" --level kld
            --device cuda --threads "$THREADS" --force)
ncand=$(echo "$CANDS" | tr ',' '\n' | wc -l)

echo
echo "=== 2. sense --level kld, $ncand candidates ($CANDS), ctx $CTX x $CHUNKS chunks, resident; goal < 600 s"
peak_run timeout "$SENSE_S" $QLAB "${sense_args[@]}" -o "$DIR/sense8b.qss"
rc=$?
tail -3 "$DIR/out.log"; tail -2 "$DIR/err.log"
[ $rc = 124 ] && echo "cut at $SENSE_S s: the .qss checkpoint holds the cells finished (qlab sense resumes it)"
cells() { awk -F'\t' '$1 == "m" && $5 == 2' "$1" 2>/dev/null | wc -l; }
n_b=$(cells "$DIR/sense8b.qss"); s_b=$SECS
echo "sense 8B resident: exit $rc, ${SECS} s, peak GPU memory ${PEAK:-?} MiB, $n_b KLD cells (batched passes)"

echo
echo "=== 2b. the same sweep, one candidate per pass (--cand-batch 1), cut at $SENSE1_S s: what batching buys"
peak_run timeout "$SENSE1_S" $QLAB "${sense_args[@]}" --cand-batch 1 -o "$DIR/sense8b-1.qss"
rc=$?
n_1=$(cells "$DIR/sense8b-1.qss")
awk -v nb="$n_b" -v sb="$s_b" -v n1="$n_1" -v s1="$SECS" 'BEGIN {
  rb = sb > 0 ? nb / sb : 0; r1 = s1 > 0 ? n1 / s1 : 0
  printf "KLD cells/s: batched %.3f, one per pass %.3f (exit %s), ratio %.2fx\n", rb, r1, "'$rc'", r1 > 0 ? rb / r1 : 0 }'

echo
echo "=== 3. the same sweep in a 24 GiB budget (streamed layers), cut at $SENSE_BUDGET_S s"
QL_CUDA_MEM_MB=24576 peak_run timeout "$SENSE_BUDGET_S" $QLAB "${sense_args[@]}" -o "$DIR/sense8b-24g.qss"
rc=$?
tail -3 "$DIR/out.log"; tail -2 "$DIR/err.log"
echo "sense 8B 24 GiB budget: exit $rc (124: cut at $SENSE_BUDGET_S s), ${SECS} s, peak GPU memory ${PEAK:-?} MiB (must stay < 24576)"
