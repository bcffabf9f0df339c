#!/usr/bin/env bash
# bench/run.sh — `make bench`: qlab's speed beside the reference figures measured with llama.cpp on
# this kind of machine (2 cores). Prints ratios; asserts nothing (speed goals live here, not in tests).
set -u
cd "$(dirname "$0")/.."
QLAB=${QLAB:-./qlab}
SHARED=${QL_SHARED:-../shared}
OUT=bench/out
mkdir -p "$OUT"
THREADS=${THREADS:-2}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
jget() { sed -n "s/.*\"$1\": \([0-9.e+-]*\).*/\1/p"; }

echo "qlab bench ($(date -u +%F), $(nproc) cores, $THREADS threads)"
echo
printf '%-58s %14s %14s %8s\n' "run" "qlab" "reference" "ratio"

# 1. perplexity of stories260K over TinyStories validation, ctx 256 (llama.cpp: 43 s, ~9,100 tokens/s)
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  j=$($QLAB ppl "$SHARED/models/stories260K.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 \
        --threads "$THREADS" --json 2>/dev/null)
  tps=$(echo "$j" | jget tokens_per_s); sec=$(echo "$j" | jget seconds); ppl=$(echo "$j" | jget ppl)
  printf '%-58s %12.0f/s %12s/s %8s\n' "ppl stories260K ctx256 (tokens/s, PPL $ppl)" "$tps" 9100 "$(ratio "$tps" 9100)"
  printf '%-58s %13.1fs %13ss %8s\n' "  same run, seconds (lower is better)" "$sec" 43 "$(ratio 43 "$sec")"
else
  echo "SKIP: $SHARED/models/stories260K.gguf not found"
fi

# 2. perplexity on a synthetic llama-3.2-1b (F16), ctx 512, 4 chunks. No llama.cpp figure was measured
#    for this model here; the 9,100 tokens/s of run 1 is the issue's yardstick.
M1B=$OUT/synth-llama-3.2-1b.gguf
[ -f "$M1B" ] || $QLAB synth --shape llama-3.2-1b -o "$M1B" --threads "$THREADS" 2>/dev/null
TEXT=$SHARED/data/tinystories-valid.txt
[ -f "$TEXT" ] || TEXT=README.md
if [ -f "$M1B" ]; then
  j=$($QLAB ppl "$M1B" --text "$TEXT" --ctx 512 --chunks 4 --threads "$THREADS" --json 2>/dev/null)
  tps=$(echo "$j" | jget tokens_per_s)
  printf '%-58s %12.1f/s %14s %8s\n' "ppl synth llama-3.2-1b F16 ctx512 x4 chunks (tokens/s)" "$tps" "-" "-"
fi

# 2b. the deployed weight-only runtime (issue 12, deliverable 0): `qlab ppl` on the same 1B shape in Q4_K_M,
#    peak RSS and tokens/s beside llama.cpp's on the same file and machine kind, as issue 12 records them:
#      llama-perplexity -m synth-llama-3.2-1b-Q4_K_M.gguf -f data/tinystories-valid.txt -c 512 -t 2
#      -> peak RSS 2.1 GB, 41 tokens/s (qlab before the stored-format path: 5.9 GB, 51 tokens/s).
#    Goal: RSS within 1.2x of llama.cpp's (ratio printed as llama.cpp / qlab, >= 0.83 meets it), tokens/s at
#    least llama.cpp's. RSS is /usr/bin/time -v's "Maximum resident set size" (mapped file pages included).
LLAMA_RSS_GB=2.1 LLAMA_TPS=41
M1BQ=$OUT/synth-llama-3.2-1b-Q4_K_M.gguf
if [ -f "$M1B" ] && [ ! -f "$M1BQ" ]; then
  $QLAB quant "$M1B" --preset Q4_K_M -o "$M1BQ" --threads "$THREADS" >/dev/null 2>&1
fi
if [ -f "$M1BQ" ] && [ -x /usr/bin/time ]; then
  j=$(/usr/bin/time -v -o "$OUT/ppl-q4km.time" $QLAB ppl "$M1BQ" --text "$TEXT" --ctx 512 --chunks 4 \
        --threads "$THREADS" --json 2>/dev/null)
  tps=$(echo "$j" | jget tokens_per_s); ppl=$(echo "$j" | jget ppl)
  rss=$(awk '/Maximum resident/ { printf "%.2f", $NF / 1048576 }' "$OUT/ppl-q4km.time")
  printf '%-58s %12.1f/s %12s/s %8s\n' "ppl synth 1b Q4_K_M ctx512 x4 (tokens/s, PPL $ppl)" "$tps" "$LLAMA_TPS" \
    "$(ratio "$tps" "$LLAMA_TPS")"
  printf '%-58s %11s GB %11s GB %8s\n' "  same run, peak RSS (lower is better)" "$rss" "$LLAMA_RSS_GB" \
    "$(ratio "$LLAMA_RSS_GB" "$rss")"
fi
# 2c. INT8 dynamic activations x INT8 weights (issue 12, deliverable 5): one 512x2048x2048 W8A8 layer, the
#    INT8xINT8->INT32 kernel against the F32 sgemm of the float emulation (ratio > 1: the integer path is faster)
make -s --no-print-directory build/bench/int8_gemm_bench >/dev/null 2>&1
[ -x build/bench/int8_gemm_bench ] && build/bench/int8_gemm_bench 512 2048 2048 "$THREADS"
echo

# 3. quantizing the synthetic llama-3.2-1b (F16, 1.24 G weights) with 2 threads. No llama.cpp quantize
#    timing was measured on this machine kind; the issue's goal is 1.5x llama-quantize on the same file.
#    Each spec runs twice: with the SIMD codecs, then with QL_FORCE_REF=1 (the scalar reference codecs,
#    bit-identical output). The reference is the algorithm llama-quantize runs (ggml's scalar *_ref
#    quantizers), so its time is the proxy for llama.cpp's here; the ratio printed is ref / fast.
if [ -f "$M1B" ]; then
  for spec in "--type q8_0" "--type q4_0" "--preset Q4_K_M" "--type q2_k"; do
    t0=$(date +%s.%N)
    $QLAB quant "$M1B" $spec -o "$OUT/q.gguf" --threads "$THREADS" 2>"$OUT/quant.log" >/dev/null
    t1=$(date +%s.%N)
    QL_FORCE_REF=1 $QLAB quant "$M1B" $spec -o "$OUT/q.gguf" --threads "$THREADS" 2>/dev/null >/dev/null
    t2=$(date +%s.%N)
    fast=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
    ref=$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b-a}')
    gbs=$(sed -n 's/.*(\([0-9.]*\) GB\/s.*/\1/p' "$OUT/quant.log")
    printf '%-58s %13.1fs %14s %8s\n' "quant synth llama-3.2-1b F16 $spec (${gbs} GB/s f32)" "$fast" "-" "-"
    printf '%-58s %13.1fs %13.1fs %8s\n' "  vs llama.cpp's algorithm (scalar reference, proxy)" "$fast" "$ref" \
      "$(ratio "$ref" "$fast")"
  done
  rm -f "$OUT/q.gguf"
fi
# 4. GPTQ on one 4096x4096 layer with a 4096x4096 Hessian, int4_g128 (issue 4): CPU with $THREADS threads
#    (bench/gptq_bench.c), then the GPU (bench/gptq_bench_cuda.c: "GPU: not available on this machine"
#    without a CUDA device; its one-time CUDA setup is printed apart and not counted).
make -s --no-print-directory build/bench/gptq_bench build/bench/gptq_bench_cuda >/dev/null 2>&1
echo
[ -x build/bench/gptq_bench ] && echo "CPU: $(build/bench/gptq_bench 4096 4096 "$THREADS" 2>&1)"
[ -x build/bench/gptq_bench_cuda ] && build/bench/gptq_bench_cuda 2>&1
[ -x bench/run_more.sh ] && bash bench/run_more.sh
# 4a. GPTQ into the lattice i-quants (issue 13): seconds for one 1024x1024 layer on $THREADS threads, i.e. per
#     million weights (x 1.05); int4_g128 and q4_k beside them for scale
if [ -x build/bench/gptq_bench ]; then
  for F in int4_g128 q4_k iq2_xxs iq2_s iq3_xxs iq3_s; do echo "CPU: $(build/bench/gptq_bench 1024 1024 "$THREADS" $F 2>&1)"; done
fi
# 4b. AQLM (issue 13): encode seconds per million weights on $THREADS threads (a 1024x1024 layer, 2x8 and
#     1x8), then aqlm_2x8 of one 4096x4096 layer (goal < 10 min on CPU); AQLM_BENCH_BIG=0 skips the big one.
make -s --no-print-directory build/bench/aqlm_bench >/dev/null 2>&1
if [ -x build/bench/aqlm_bench ]; then
  for F in aqlm_2x8 aqlm_1x8; do echo "CPU: $(build/bench/aqlm_bench 1024 1024 "$THREADS" $F 2>/dev/null)"; done
  [ "${AQLM_BENCH_BIG:-1}" = 1 ] && echo "CPU: $(build/bench/aqlm_bench 4096 4096 "$THREADS" aqlm_2x8 2>/dev/null)"
fi
# 5. sensitivity at the kld level on stories260K (issue 5): 6 candidates x 37 tensors (207 fit), each
#    probe re-running the model from the perturbed layer over 32 x 256 wikitext-2 tokens (goal: minutes).
if [ -f "$SHARED/models/stories260K.gguf" ] && [ -f "$SHARED/data/wikitext-2-valid.raw" ]; then
  t0=$(date +%s.%N)
  $QLAB sense "$SHARED/models/stories260K.gguf" --calib "$SHARED/data/wikitext-2-valid.raw" --level kld --force \
    --candidates q4_0,q5_0,q8_0,int3_g32_mse,int4_g32_mse,f16 --threads "$THREADS" -o "$OUT/sense6.qss" 2>/dev/null
  t1=$(date +%s.%N)
  printf '%-58s %13.1fs %14s %8s\n' "sense stories260K --level kld, 6 candidates x 37 tensors" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "-" "-"
fi
# QuIP# (issue 13): encode seconds per million weights on 2 threads (quip_bench, built by `make bench`)
if [ -n "${QUIP_BENCH:-}" ] && [ -x "$QUIP_BENCH" ]; then
  echo
  "$QUIP_BENCH" 1024 1024 "$THREADS"
fi
# Encode speed of every method (issue 13): seconds per million weights on 2 threads. Per-tensor methods on one
#    synthetic 1024-column layer (bench/method_bench.c: RTN per family, i-quants with an imatrix, GPTQ, EXL2,
#    QuIP#, AQLM on fewer rows and alternations); the layer transforms AWQ and SmoothQuant need a model, so
#    they are timed as whole `qlab quant` runs on tinystories-d256 (3.4 M weights, statistics collected first,
#    not timed). The 4096 x 4096 aqlm_2x8 goal (< 10 min) is `make bench-aqlm` (too long for this script).
make -s --no-print-directory build/bench/method_bench >/dev/null 2>&1
if [ -x build/bench/method_bench ]; then
  echo
  build/bench/method_bench 1024 "$THREADS"
fi
MD=$SHARED/models/tinystories-d256.gguf
if [ -f "$MD" ] && [ -f "$SHARED/data/wikitext-2-valid.raw" ]; then
  $QLAB stats "$MD" --text "$SHARED/data/wikitext-2-valid.raw" --ctx 256 --chunks 16 --threads "$THREADS" \
    -o "$OUT/d256.qls" >/dev/null 2>&1
  for run in "int4_g128 rtn" "int4_g128 awq" "int8_channel smoothquant"; do
    set -- $run
    /usr/bin/time -f "%e %U %S" -o "$OUT/m.time" $QLAB quant "$MD" --type "$1" --method "$2" \
      --stats "$OUT/d256.qls" --threads "$THREADS" -o "$OUT/m.gguf" >/dev/null 2>&1 || echo "  $2 $1: failed"
    awk -v m="$2" -v f="$1" '{ printf "  %-8s %-26s %-24s %6s %10.3f %10.3f  (whole tinystories-d256 quant)\n", m, f, "-", \
      "3.4M", $1 / 3.4, ($2 + $3) / 3.4 }' "$OUT/m.time"
  done
fi
# 6. KV cache (issue 12): one layer's attention at ctx 2048 on the llama-3.2-1b geometry (32 heads, 8 KV heads,
#    head dim 64), each scheme against the F32 cache (bench/kv_bench.c; CPU time of all threads, so other jobs
#    on the machine do not count). Goal: a quantized cache costs at most 1.15x the F32 one.
make -s --no-print-directory build/bench/kv_bench >/dev/null 2>&1
echo
[ -x build/bench/kv_bench ] && build/bench/kv_bench llama-3.2-1b 2048 "$THREADS" 2 f16 q8_0 q4_0 q8_0:q4_0 \
  int8_token_g32 int4_token_g64 kivi4 fp8_e4m3 2>&1
# 7. streaming export (issue 14): the synthetic llama-3.2-1b (F16, 2.47 GB) rounded to nearest (RTN) straight into
#    each folder target on $THREADS threads. Goals: peak RSS below 2 GiB plus one tensor's working set (the largest
#    tensor, token_embd 128256 x 2048, as F32 plus its codes and its converted bytes: 4 + 2 x 0.6 bytes a weight),
#    and >= 0.5 GB/s of F16 input. RSS is /usr/bin/time -v's maximum resident set (file pages included: the quantizer
#    drops each source tensor's pages once it is written, ql_gguf_release).
if [ -f "$M1B" ] && [ -x /usr/bin/time ]; then
  in_bytes=$(stat -c %s "$M1B")
  big=$($QLAB info "$M1B" 2>/dev/null | awk '$3 == "x" { n = $2 * $4; if (n > m) m = n } END { print m + 0 }')
  goal_gb=$(awk -v b="$big" 'BEGIN { printf "%.2f", (2 * 1073741824 + b * 5.2) / 1e9 }')
  for spec in "gptq --type int4_g128" "awq --type int4_g128" "compressed-tensors --type int4_g128" \
              "compressed-tensors --type int8_channel" "compressed-tensors --type fp8_e4m3" "bnb --type nf4" \
              "bnb --type fp4" "bnb --type bnb_int8" "gguf --type q8_0" "gguf --type q4_0" "exl2 --type exl2_4b128"; do
    to=${spec%% *}; args=${spec#* }
    rm -rf "$OUT/export-$to"
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$OUT/export.time" $QLAB quant "$M1B" $args --to "$to" --threads "$THREADS" -o "$OUT/export-$to" \
      >/dev/null 2>"$OUT/export.log" || { echo "export $to failed: $(tail -1 "$OUT/export.log")"; continue; }
    t1=$(date +%s.%N)
    gbs=$(awk -v a="$t0" -v b="$t1" -v n="$in_bytes" 'BEGIN { printf "%.2f", n / (b - a) / 1e9 }')
    rss=$(awk '/Maximum resident/ { printf "%.2f", $NF * 1024 / 1e9 }' "$OUT/export.time")
    # the same over the CPU time the run got (user + system, spread over $THREADS threads): what the run reaches
    # when it has its threads to itself, for a loaded machine
    cpu=$(awk -v n="$in_bytes" -v t="$THREADS" '/User time|System time/ { s += $NF } END { if (s > 0) printf "%.2f", n / (s / t) / 1e9 }' "$OUT/export.time")
    goal=0.5; [ "$to" = exl2 ] && goal=-   # EXL2's group fit (97 trial scales) is not an RTN-speed target
    printf '%-58s %11s GB/s %9s GB/s %8s\n' "export 1b --to $to $args (F16 in/s)" "$gbs" "$goal" \
      "$( [ "$goal" = - ] && echo - || ratio "$gbs" "$goal")"
    printf '%-58s %11s GB/s %14s %8s\n' "  same run over its CPU time / $THREADS threads" "$cpu" "" ""
    printf '%-58s %11s GB %11s GB %8s\n' "  same run, peak RSS (goal: 2 GiB + largest tensor)" "$rss" "$goal_gb" \
      "$(ratio "$goal_gb" "$rss")"
    rm -rf "$OUT/export-$to"
  done
fi
# 8. scalar reference vs SIMD twin of every codec with a fast kernel (64 x 4096 rows; ratio = speed-up)
for t in test_simd test_simd2; do
  [ -x "${SIMD_TESTS:-build/tests}/$t" ] && "${SIMD_TESTS:-build/tests}/$t" --speed
done
exit 0
