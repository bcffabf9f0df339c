#!/usr/bin/env bash
# scripts/gpu_checks.sh — the checks of issue 16 (CUDA backend) that need a GPU, as one prepared script for a
# session with a lent GPU: `bash scripts/gpu_checks.sh 2>&1 | tee gpu_checks.log` from the repository root
# (on the lent machine: the run tool's command `bash scripts/gpu_checks.sh`, timeout ~500 s). In order of
# value, so a cut-off run still answers the first questions:
#   1. make test-cuda: the codecs on the device (test_cuda), the backend's kernels against their host
#      emulation, and PPL of stories260K and tinystories-d256 on the GPU — layers resident and streamed, F32
#      and f16 KV — within 1e-4 relative of the CPU backend (test_cuda_forward);
#   2. the CLI: `qlab ppl` with QL_BACKEND=cuda (what --device cuda selects) against the CPU on both models;
#   2a. `qlab ppl --kv` (qlab's KV schemes, iq4_nl) and `--act` (LLM.int8, FP8, W8A8 integer products on an
#      int8_channel file) on the GPU against the CPU;
#   2b. `qlab quant --device cuda` (RTN on the formats' CUDA quantizers) writes the CPU's bytes, format by format;
#   3. make bench-cuda: dequantize GB/s, RTN quantize throughput of every format with a CUDA quantizer beside the
#      CPU (bench/cuda_quant_bench.c, "identical" per line), then ppl tokens/s and peak GPU memory on synthetic F16 llama-3.2-1b
#      and llama-3-8b at ctx 2048, and the 8B shape again in a 24 GiB budget (SHAPES= to narrow it);
#   2c. `qlab quant --method gptq --device cuda` into the 12 ggml grid types: the block fixes on the device
#      (ql_format_cuda_ops.grid_fix_dev) write the same file as the host round trip (QL_GPTQ_HOST_FIX=1), both timed;
#   2d. `qlab sense --level kld --device cuda` on tinystories-d256, batched (the default) and one candidate per
#      pass, both timed beside the CPU, KLD cells within 1e-3 relative of the CPU's;
#   4. (`bash scripts/gpu_checks.sh 8b`: this step alone, ~10 min) make bench-cuda-8b: GPTQ int4_g128 of the
#      llama-3.1-8b shape and a 6-candidate KLD sense sweep of the 8B shape, resident and in 24 GiB; then
#   5. GPTQ of 8 layers (LAYERS=) of the 8B shape into q4_k with the device block fixes and with the round trip.
# Prints PASS / FAIL per step and exits non-zero when a check failed. Figures go in docs/results.md with the
# GPU model this prints.
set -u
cd "$(dirname "$0")/.."
SHARED=${QL_SHARED:-../shared}
[ -d "$SHARED" ] || SHARED=shared
export QL_SHARED="$SHARED"
JOBS=$(nproc)
fail=0
step() { echo; echo "=== $*"; }
nvidia-smi -L || { echo "no GPU visible: nothing to check here"; exit 1; }
if [ "${1:-}" = 8b ]; then
  make -j"$JOBS" all >/dev/null || { echo "FAIL: build"; exit 1; }
  step "4. make bench-cuda-8b"
  make --no-print-directory bench-cuda-8b || { echo "FAIL: bench-cuda-8b"; exit 1; }
  step "5. GPTQ of the 8B shape into q4_k: block fixes on the device, then the host round trip (QL_GPTQ_HOST_FIX=1)"
  make --no-print-directory build/bench/gptq_8b_cuda >/dev/null
  timeout 600 build/bench/gptq_8b_cuda "${LAYERS:-8}" q4_k
  QL_GPTQ_HOST_FIX=1 timeout 600 build/bench/gptq_8b_cuda "${LAYERS:-8}" q4_k
  exit 0
fi

step "build"
make -j"$JOBS" all build/tests/test_cuda build/tests/test_cuda_forward build/tests/test_gptq_cuda build/bench/cuda_quant_bench >/dev/null || { echo "FAIL: build"; exit 1; }

step "1. make test-cuda"
if make --no-print-directory test-cuda; then echo "PASS: test-cuda"; else echo "FAIL: test-cuda"; fail=1; fi

step "2. qlab ppl on the GPU vs the CPU (1e-4 relative)"
for m in stories260K tinystories-d256; do
  model="$SHARED/models/$m.gguf"
  [ -f "$model" ] || { echo "SKIP: $model not found"; continue; }
  args=(ppl "$model" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 40 --json)
  c=$(QL_BACKEND=cpu ./qlab "${args[@]}" 2>/dev/null | sed -n 's/.*"ppl": \([0-9.e+-]*\).*/\1/p')
  g=$(QL_BACKEND=cuda ./qlab "${args[@]}" 2>&1 | tee /tmp/qlab_gpu_ppl.log | sed -n 's/.*"ppl": \([0-9.e+-]*\).*/\1/p')
  if [ -n "$c" ] && [ -n "$g" ] && awk -v a="$c" -v b="$g" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d / a <= 1e-4) }'; then
    echo "PASS: $m PPL cpu $c cuda $g"
  else
    echo "FAIL: $m PPL cpu '$c' cuda '$g'"; tail -2 /tmp/qlab_gpu_ppl.log; fail=1
  fi
done

step "2a. qlab ppl --kv / --act on the GPU vs the CPU (1e-4 relative): qlab's KV schemes, iq4_nl, W8A8 integer products"
qm="$SHARED/models/tinystories-d256.gguf"
if [ -f "$qm" ]; then
  ./qlab quant "$qm" --type int8_channel -o /tmp/qlab_w8.gguf >/dev/null 2>&1 || echo "FAIL: quant int8_channel for 2a"
  for spec in "$qm|--kv kivi4" "$qm|--kv iq4_nl" "$qm|--kv int4_token_g32_r64_had:fp8_e5m2" "$qm|--act llm_int8" \
              "$qm|--act fp8_token" "/tmp/qlab_w8.gguf|--act int8_token"; do
    model=${spec%%|*}; extra=${spec#*|}
    args=(ppl "$model" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 20 --json $extra)
    c=$(./qlab "${args[@]}" --device cpu 2>/dev/null | sed -n 's/.*"ppl": \([0-9.e+-]*\).*/\1/p')
    g=$(./qlab "${args[@]}" --device cuda 2>&1 | tee /tmp/qlab_gpu_ppl.log | sed -n 's/.*"ppl": \([0-9.e+-]*\).*/\1/p')
    if [ -n "$c" ] && [ -n "$g" ] && awk -v a="$c" -v b="$g" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d / a <= 1e-4) }'; then
      echo "PASS: $(basename "$model") $extra: PPL cpu $c cuda $g"
    else echo "FAIL: $(basename "$model") $extra: PPL cpu '$c' cuda '$g'"; tail -2 /tmp/qlab_gpu_ppl.log; fail=1; fi
  done
fi

step "2b. qlab quant --device cuda (RTN with the formats' CUDA quantizers) writes the CPU's bytes"
qm="$SHARED/models/tinystories-d256.gguf"
if [ -f "$qm" ]; then
  for t in q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs int4_g128 int3_g64_mse int8_channel int4_b64 \
           int8_tensor nf4 nf4_dq fp8_e4m3 mxfp4 nvfp4; do
    ./qlab quant "$qm" --type $t -o /tmp/qlab_q_cpu.gguf --device cpu >/dev/null 2>&1 || { echo "SKIP: $t (cpu quant failed)"; continue; }
    if ./qlab quant "$qm" --type $t -o /tmp/qlab_q_gpu.gguf --device cuda >/dev/null 2>/tmp/qlab_q_gpu.log &&
       cmp -s /tmp/qlab_q_cpu.gguf /tmp/qlab_q_gpu.gguf; then echo "PASS: quant $t"
    else echo "FAIL: quant $t"; tail -2 /tmp/qlab_q_gpu.log; fail=1; fi
  done
else
  echo "SKIP: $qm not found"
fi

step "2c. GPTQ into ggml blocks on the GPU: the block fixes on the device write the host round trip's bytes"
if [ -f "$qm" ]; then
  ./qlab stats "$qm" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 8 -o /tmp/qlab_gpu_s.qls >/dev/null 2>&1 ||
    echo "FAIL: stats for 2c"
  for t in q2_k q3_k q4_k q5_k q6_k q4_0 q4_1 q5_0 q5_1 q8_0 iq4_nl iq4_xs; do
    args=(quant "$qm" --type $t --method gptq --stats /tmp/qlab_gpu_s.qls --device cuda)
    t0=$(date +%s.%N)
    QL_GPTQ_HOST_FIX=1 ./qlab "${args[@]}" -o /tmp/qlab_g_host.gguf >/dev/null 2>/tmp/qlab_g.log || { echo "FAIL: gptq $t (host fix)"; tail -2 /tmp/qlab_g.log; fail=1; continue; }
    t1=$(date +%s.%N)
    ./qlab "${args[@]}" -o /tmp/qlab_g_dev.gguf >/dev/null 2>/tmp/qlab_g.log || { echo "FAIL: gptq $t (device fix)"; tail -2 /tmp/qlab_g.log; fail=1; continue; }
    t2=$(date +%s.%N)
    if cmp -s /tmp/qlab_g_host.gguf /tmp/qlab_g_dev.gguf; then
      echo "PASS: gptq $t same bytes; host fix $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s, device fix $(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.2f", b - a }') s"
    else echo "FAIL: gptq $t: the device fix's file differs from the host fix's"; fail=1; fi
  done
fi

step "2d. qlab sense --level kld on the GPU: batched passes (8 candidates x the sequences) vs one candidate per pass vs the CPU"
if [ -f "$qm" ]; then
  sargs=(sense "$qm" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 8
         --candidates q8_0,q6_k,q5_k,q4_k,q4_0,q3_k --level kld --force)
  tq() { local t0; t0=$(date +%s.%N); "$@" >/dev/null 2>/tmp/qlab_sense_gpu.log; local rc=$?
         SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'); return $rc; }
  tq ./qlab "${sargs[@]}" --device cpu -o /tmp/qlab_sense_cpu.qss && cs=$SECS || echo "FAIL: sense on the CPU"
  tq ./qlab "${sargs[@]}" --device cuda -o /tmp/qlab_sense_gpu.qss && gs=$SECS || { echo "FAIL: sense on the GPU"; tail -2 /tmp/qlab_sense_gpu.log; }
  tq ./qlab "${sargs[@]}" --device cuda --cand-batch 1 -o /tmp/qlab_sense_gpu1.qss && g1=$SECS || echo "FAIL: sense on the GPU, --cand-batch 1"
  echo "sense d256 6 candidates: cpu ${cs:-?} s, gpu batched ${gs:-?} s, gpu one candidate per pass ${g1:-?} s"
  for f in /tmp/qlab_sense_gpu.qss /tmp/qlab_sense_gpu1.qss; do
    if [ -s "$f" ] && paste <(grep '^m	' /tmp/qlab_sense_cpu.qss) <(grep '^m	' "$f") | awk -F'\t' '
         { n = NF / 2; a = $8; b = $(8 + n); d = a - b; if (d < 0) d = -d; r = d / (a > 1e-9 ? a : 1e-9);
           if (r > w) w = r } END { printf "worst KLD cell %.3g relative to the CPU\n", w; exit !(w <= 1e-3) }'; then
      echo "PASS: $f KLD cells match the CPU's"
    else echo "FAIL: $f KLD cells differ from the CPU's"; fail=1; fi
  done
fi

step "3. make bench-cuda (dequantize GB/s, RTN quantize per format beside the CPU, ppl tokens/s)"
make --no-print-directory bench-cuda || { echo "FAIL: bench-cuda"; fail=1; }

echo
[ $fail = 0 ] && echo "gpu_checks: all passed" || echo "gpu_checks: FAILED (see above)"
exit $fail
