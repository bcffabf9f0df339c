#!/usr/bin/env bash
# cli_test.sh — end-to-end checks of the qlab commands: outputs that must match llama.cpp's figures,
# --help everywhere, and bad input giving one clear line, a non-zero exit and no crash.
set -u
QLAB=${QLAB:-./qlab}
SHARED=${QL_SHARED:-../shared}
T=$(mktemp -d /tmp/qlab-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0; pass=0; skipped=0
# each line says how long since the previous one ([+Ns], from bash's SECONDS), so a slow check shows in CI logs
last_t=$SECONDS
tick() { local d=$((SECONDS - last_t)); last_t=$SECONDS; dt=""; [ "$d" -gt 0 ] && dt=" [+${d}s]"; return 0; }
ok() { pass=$((pass + 1)); tick; echo "ok   $1$dt"; }
bad() { fail=$((fail + 1)); tick; echo "FAIL $1$dt"; }
skip() { skipped=$((skipped + 1)); tick; echo "SKIP $1$dt"; }
# expect_error NAME WANT-SUBSTRING CMD...: exit code 1 or 2, one line on stderr naming WANT, no signal
expect_error() {
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ $rc -ne 1 ] && [ $rc -ne 2 ]; then bad "$name: exit $rc"; sed 's/^/     /' "$T/err" | head -5; return; fi
  if ! grep -qF -- "$want" "$T/err"; then bad "$name: stderr lacks '$want'"; sed 's/^/     /' "$T/err" | head -5; return; fi
  ok "$name"
}

# --help on every command
for c in $($QLAB --help | awk '/^commands:/ {on=1; next} on && NF {print $1}'); do
  if $QLAB "$c" --help | grep -q "usage: qlab $c"; then ok "help $c"; else bad "help $c"; fi
done

# the default model qlab makes itself, with no shared data at all
if $QLAB synth --shape tiny -o "$T/tiny.gguf" 2>/dev/null && $QLAB info "$T/tiny.gguf" --json > "$T/info.json"; then
  if grep -q '"n_params": 3410176' "$T/info.json" && grep -q '"arch": "llama"' "$T/info.json"; then ok "synth tiny + info --json"
  else bad "synth tiny: unexpected info"; fi
  printf 'Once upon a time there was a test. It had some text in it, enough for two small chunks of bytes.\n%.0s' {1..20} > "$T/text.txt"
  if $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --json > "$T/ppl.json" 2>/dev/null \
     && grep -q '"chunks": 2' "$T/ppl.json"; then ok "ppl on a synthetic model"; else bad "ppl on a synthetic model"; fi
  # same seed, same bytes
  $QLAB synth --shape tiny -o "$T/tiny2.gguf" --threads 1 2>/dev/null
  if cmp -s "$T/tiny.gguf" "$T/tiny2.gguf"; then ok "synth is deterministic across thread counts"; else bad "synth determinism"; fi
else
  bad "synth tiny"
fi

# bad input: one clear line naming the file, non-zero exit, no crash
expect_error "missing model" "/nonexistent.gguf" $QLAB info /nonexistent.gguf
printf 'GGUF\3\0\0\0' > "$T/trunc.gguf"
expect_error "truncated gguf" "trunc.gguf" $QLAB info "$T/trunc.gguf"
head -c 100000 "$T/tiny.gguf" > "$T/cut.gguf"
expect_error "gguf cut inside tensor data" "cut.gguf" $QLAB info "$T/cut.gguf"
echo "hello" > "$T/notamodel.txt"
expect_error "not a model" "notamodel.txt" $QLAB info "$T/notamodel.txt"
expect_error "unknown option" "unknown option" $QLAB ppl "$T/tiny.gguf" --bogus
expect_error "ppl without text" "--text" $QLAB ppl "$T/tiny.gguf"
expect_error "text too short" "fewer than one chunk" $QLAB ppl "$T/tiny.gguf" --text "$T/notamodel.txt" --ctx 512
expect_error "kld base missing" "nope.qlp" $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --kld-base "$T/nope.qlp"
mkdir -p "$T/hf_empty"
expect_error "hf folder without config" "hf_empty" $QLAB info "$T/hf_empty"
expect_error "unknown command" "unknown command" $QLAB frobnicate
# the CUDA backend (built when nvcc was found) without a GPU: one line, non-zero exit
if [ -f "$T/tiny.gguf" ]; then
  cuda_run=(env QL_BACKEND=cuda $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 1)
  if "${cuda_run[@]}" 2>&1 | grep -q "unknown backend 'cuda'"; then skip "cuda backend: this qlab was built without nvcc"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then skip "cuda backend refusal: a GPU is present"
  else expect_error "ppl on the cuda backend without a GPU" "no CUDA device" "${cuda_run[@]}"; fi
fi
# memory is checked before it is allocated: a context whose working set exceeds the budget (60% of RAM, of the
# cgroup limit or of ulimit -v) is refused naming what it needs and the largest --ctx that fits; no abort
if [ -f "$T/tiny.gguf" ]; then
  expect_error "ppl --ctx 1000000 refused with the memory it needs" "use --ctx" $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 1000000
  # cuBLAS/cuSOLVER are opened on first use (kernels/cuda_libs.h), so even the CUDA build starts under 500 MB.
  if ldd "$QLAB" 2>/dev/null | grep -q "libcublas\|libcusolver"; then bad "qlab links cuBLAS/cuSOLVER (they must be dlopened)"
  else ok "qlab does not link cuBLAS/cuSOLVER (opened on first use)"; fi
  # (not under ASan: its shadow memory needs terabytes of address space, which ulimit -v forbids)
  # Every run must end: timeout catches a hang (OpenBLAS retrying a buffer it has no room for, before the fix).
  if ldd "$QLAB" 2>/dev/null | grep -q libasan; then skip "ppl under ulimit -v (ASan build)"
  else expect_error "ppl under ulimit -v names the limit" "60% of ulimit -v" bash -c "ulimit -v 2000000; exec timeout 60 $QLAB ppl '$T/tiny.gguf' --text '$T/text.txt' --ctx 24000"
    expect_error "ppl under ulimit -v 500000 refuses a big ctx" "use --ctx" bash -c "ulimit -v 500000; exec timeout 60 $QLAB ppl '$T/tiny.gguf' --text '$T/text.txt' --ctx 24000"
    if bash -c "ulimit -v 500000; exec timeout 120 $QLAB ppl '$T/tiny.gguf' --text '$T/text.txt' --ctx 64 --chunks 2" >/dev/null 2>&1
    then ok "ppl under ulimit -v 500000 runs a small ctx (one thread, OpenBLAS's buffer taken at start)"
    else bad "ppl under ulimit -v 500000 runs a small ctx (one thread, OpenBLAS's buffer taken at start)"; fi
    expect_error "ulimit -v too small for start-up and one BLAS buffer names the limit needed" "raise the limit to at least" bash -c "ulimit -v 200000; exec timeout 60 $QLAB ppl '$T/tiny.gguf' --text '$T/text.txt' --ctx 64 --chunks 2"
    if bash -c "ulimit -v 200000; exec timeout 30 $QLAB ppl --help" 2>/dev/null | grep -q "usage: qlab ppl"; then
      ok "ppl --help under ulimit -v 200000 prints its usage (no linear algebra needed, no hang at exit)"
    else bad "ppl --help under ulimit -v 200000"; fi
    # a model file larger than the address space left: refused naming its size (sparse: costs no disk or time)
    printf 'GGUF\3\0\0\0' > "$T/huge.gguf"; truncate -s 700M "$T/huge.gguf"
    expect_error "quant of a model bigger than ulimit -v 500000 names the memory" "cannot map its 0.68 GiB" bash -c "ulimit -v 500000; exec timeout 60 $QLAB quant '$T/huge.gguf' --type q4_k -o '$T/never.gguf'"
    rm -f "$T/huge.gguf"; fi
  expect_error "stats --ctx beyond memory refused" "use --ctx" $QLAB stats "$T/tiny.gguf" --text "$T/text.txt" --ctx 1000000 -o "$T/never.qls"
  expect_error "sense --ctx beyond memory refused" "use --ctx" $QLAB sense "$T/tiny.gguf" --text "$T/text.txt" --ctx 1000000 --candidates q8_0 -o "$T/never.qss"
fi

# qlab quant: atomic output, byte-identical re-read, clear errors
if [ -f "$T/tiny.gguf" ]; then
  if $QLAB quant "$T/tiny.gguf" --type q4_k -o "$T/q4k.gguf" 2>/dev/null && $QLAB convert "$T/q4k.gguf" -o "$T/q4k-copy.gguf" 2>/dev/null \
     && cmp -s "$T/q4k.gguf" "$T/q4k-copy.gguf"; then ok "quantized GGUF reads back and rewrites byte-identical"
  else bad "quantized GGUF re-read"; fi
  if $QLAB info "$T/q4k.gguf" --json --no-tensors | grep -q '"llama_cpp_compatible": true'; then ok "info: q4_k file is plain GGUF"
  else bad "info compatibility flag (ggml)"; fi
  $QLAB quant "$T/tiny.gguf" --type int4_g128 -o "$T/int4.gguf" 2>"$T/err" >/dev/null
  if grep -q "llama.cpp cannot load" "$T/err" && $QLAB info "$T/int4.gguf" --json --no-tensors | grep -q '"llama_cpp_compatible": false'; then
    ok "extension formats: quant warns, info says llama.cpp cannot load"
  else bad "extension format warning"; fi
  if $QLAB ppl "$T/int4.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --json 2>/dev/null | grep -q '"ppl"'; then ok "ppl runs on an extension-format file"
  else bad "ppl on extension-format file"; fi
  # AQLM (issue 13): the method refuses formats it cannot write (files: test_aqlm's GGUF round trip)
  expect_error "aqlm refuses a grid format" "not an AQLM format" $QLAB quant "$T/tiny.gguf" --type q4_k --method aqlm -o "$T/x.gguf"
  # a full disk (file size limit) leaves nothing behind
  mkdir -p "$T/full"
  ( trap '' XFSZ; ulimit -f 64; $QLAB quant "$T/tiny.gguf" --type q8_0 -o "$T/full/out.gguf" ) >/dev/null 2>"$T/err"; rc=$?
  if [ $rc -ne 0 ] && [ -z "$(ls -A "$T/full")" ] && grep -q "out.gguf" "$T/err"; then ok "write failure (file too large) leaves no file"
  else bad "write failure: rc $rc, left: $(ls "$T/full")"; fi
  expect_error "quant: unknown format" "q9_x" $QLAB quant "$T/tiny.gguf" --type q9_x -o "$T/x.gguf"
  expect_error "quant: unknown preset" "NOPE" $QLAB quant "$T/tiny.gguf" --preset NOPE -o "$T/x.gguf"
  printf '[tensors]\nblk.99.attn_q.weight = q8_0\n' > "$T/badplan.ini"
  expect_error "quant: plan names a missing tensor" "blk.99.attn_q.weight" $QLAB quant "$T/tiny.gguf" --plan "$T/badplan.ini" -o "$T/x.gguf"
  expect_error "quant: two plan sources" "exactly one" $QLAB quant "$T/tiny.gguf" --type q8_0 --preset Q8_0 -o "$T/x.gguf"
  # llama-quantize's argument order (MODEL OUT TYPE [THREADS]) under `qlab quantize` writes what --preset writes
  if $QLAB quant "$T/tiny.gguf" --preset Q4_K_M -o "$T/qkm-flags.gguf" 2>/dev/null \
     && $QLAB quantize "$T/tiny.gguf" "$T/qkm-pos.gguf" Q4_K_M 2 2>/dev/null && cmp -s "$T/qkm-flags.gguf" "$T/qkm-pos.gguf"; then
    ok "quantize MODEL OUT TYPE THREADS (llama-quantize's order) equals quant --preset"
  else bad "quantize with llama-quantize's arguments"; fi
  expect_error "quantize: bad THREADS" "THREADS 'x'" $QLAB quantize "$T/tiny.gguf" "$T/x.gguf" Q4_K_M x
  # an architecture qlab has no description of is quantized by tensor names, as llama-quantize does: the same
  # tensors under another general.architecture give the same bytes; its forward pass is refused in one line
  python3 "$(dirname "$0")/gguf_rename_arch.py" "$T/tiny.gguf" "$T/sc2.gguf" starcoder2
  if $QLAB quantize "$T/sc2.gguf" "$T/sc2-q.gguf" Q4_K_M 2>"$T/err" && grep -q "architecture 'starcoder2' has no forward pass" "$T/err" \
     && python3 "$(dirname "$0")/../bench/gguf_tensors_cmp.py" "$T/qkm-flags.gguf" "$T/sc2-q.gguf" | tail -1 | grep -q " 0 differ, 0 other"; then
    ok "quant: an unknown architecture is quantized by tensor names (same bytes as the same tensors under llama)"
  else bad "quant: unknown architecture"; sed 's/^/     /' "$T/err" | tail -3; fi
  if $QLAB info "$T/sc2-q.gguf" | grep -q "no forward pass in qlab for 'starcoder2'" && $QLAB info "$T/sc2-q.gguf" --json | grep -q '"forward_pass": false'; then
    ok "info: an unknown architecture lists its tensors and says it has no forward pass"
  else bad "info on an unknown architecture"; fi
  expect_error "ppl: an architecture without a forward pass" "starcoder2" $QLAB ppl "$T/sc2-q.gguf" --text "$T/text.txt" --ctx 64
  expect_error "quant gptq: an architecture without a forward pass" "no forward pass" \
    $QLAB quant "$T/sc2.gguf" --type int4_g128 --method gptq --text "$T/text.txt" --ctx 64 --chunks 1 -o "$T/x.gguf"
  expect_error "quantize: a fifth argument" "unexpected argument" $QLAB quantize "$T/tiny.gguf" "$T/x.gguf" Q4_K_M 2 3
  # mixtures of experts (Mixtral's layout as llama): per-expert imatrix (GGUF only), i-quant and MXFP4_MOE mixes of the
  # 3-D expert tensors, previews of the results; the router stays F32
  $QLAB synth --shape tiny-moe -o "$T/moe.gguf" >/dev/null 2>&1
  if $QLAB info "$T/moe.gguf" | grep -q "mixture of experts (2 of 8" \
     && $QLAB imatrix "$T/moe.gguf" --text "$T/text.txt" --ctx 64 --chunks 4 -o "$T/moe-im.gguf" 2>/dev/null \
     && $QLAB quant "$T/moe.gguf" --preset IQ4_XS --imatrix "$T/moe-im.gguf" -o "$T/moe-iq4.gguf" 2>/dev/null \
     && $QLAB info "$T/moe-iq4.gguf" | grep -E "blk.0.ffn_down_exps.weight +128 x 64 x 8 +iq4_nl" >/dev/null \
     && $QLAB info "$T/moe-iq4.gguf" | grep -E "blk.0.ffn_gate_inp.weight .* f32" >/dev/null \
     && $QLAB ppl "$T/moe-iq4.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --json 2>/dev/null | grep -q '"ppl"'; then
    ok "moe: per-expert imatrix, IQ4_XS of the expert stacks (router F32), ppl of the result"
  else bad "moe: imatrix, IQ4_XS, ppl"; fi
  if python3 - "$T/moe-im.gguf" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read(); p = 4
def u(f):
    global p; v = struct.unpack_from('<' + f, b, p)[0]; p += struct.calcsize('<' + f); return v
def s():
    n = u('Q'); global p; v = b[p:p + n].decode(); p += n; return v
def skip(t):
    global p
    if t == 8: s(); return
    if t == 9:
        et = u('I'); n = u('Q')
        for _ in range(n): skip(et)
        return
    p += {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}[t]
u('I'); nt = u('Q'); nkv = u('Q')
for _ in range(nkv): s(); skip(u('I'))
shapes = {}
for _ in range(nt):
    n = s(); nd = u('I'); shapes[n] = [u('Q') for _ in range(nd)]; u('I'); u('Q')
sys.exit(0 if shapes.get('blk.1.ffn_down_exps.weight.in_sum2') == [128, 8] and shapes.get('blk.1.ffn_up_exps.weight.counts') == [1, 8] else 1)
PY
  then ok "moe: imatrix keeps llama.cpp's [n, n_expert] sums and one count per expert"
  else bad "moe: imatrix expert shapes"; fi
  expect_error "moe: an expert imatrix as .dat" "only the GGUF format" \
    $QLAB imatrix "$T/moe.gguf" --text "$T/text.txt" --ctx 64 --chunks 1 -o "$T/moe-im.dat"
  if $QLAB quant "$T/moe.gguf" --preset MXFP4_MOE -o "$T/moe-mx.gguf" 2>/dev/null \
     && $QLAB info "$T/moe-mx.gguf" | grep -E "blk.1.ffn_up_exps.weight .* mxfp4" >/dev/null \
     && $QLAB info "$T/moe-mx.gguf" | grep -E "blk.1.attn_q.weight .* q8_0" >/dev/null; then
    ok "moe: MXFP4_MOE puts the experts in mxfp4, the rest in q8_0"
  else bad "moe: MXFP4_MOE"; fi
  expect_error "moe: qat refuses a mixture of experts" "mixture-of-experts" \
    $QLAB qat "$T/moe.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 1 -o "$T/x.gguf"
  # gpt-oss (sinks, biases, top-k softmax routing, SwiGLU-OAI): a per-expert imatrix, an i-quant mix that keeps the
  # sinks and biases in F32, and a preview of the result; OLMo-2 has no pre-norm for awq to fold into
  $QLAB synth --shape tiny-gptoss -o "$T/goss.gguf" >/dev/null 2>&1
  if $QLAB imatrix "$T/goss.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 -o "$T/goss-im.gguf" 2>/dev/null \
     && $QLAB quant "$T/goss.gguf" --preset IQ4_XS --imatrix "$T/goss-im.gguf" -o "$T/goss-q.gguf" 2>/dev/null \
     && $QLAB info "$T/goss-q.gguf" | grep -E "blk.1.ffn_gate_exps.weight .* iq4_nl" >/dev/null \
     && $QLAB info "$T/goss-q.gguf" | grep -E "blk.1.attn_sinks.weight .* f32" >/dev/null \
     && $QLAB info "$T/goss-q.gguf" | grep -E "blk.1.ffn_gate_exps.bias .* f32" >/dev/null \
     && gp=$($QLAB ppl "$T/goss-q.gguf" --text "$T/text.txt" --ctx 64 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p') \
     && [ -n "$gp" ]; then ok "gpt-oss: imatrix -> IQ4_XS (sinks, biases F32) -> ppl $gp"
  else bad "gpt-oss: imatrix -> IQ4_XS -> ppl"; fi
  $QLAB synth --shape tiny-olmo2 -o "$T/olmo2.gguf" >/dev/null 2>&1
  expect_error "olmo2: awq needs a pre-norm to fold into" "no pre-norm" \
    $QLAB quant "$T/olmo2.gguf" --type int4_g32 --method awq --text "$T/text.txt" --ctx 64 --chunks 1 -o "$T/x.gguf"
  # the exporter seam: --to gguf is the default path, byte for byte; an unknown exporter is refused with the list
  if $QLAB quant "$T/tiny.gguf" --type q4_k --to gguf -o "$T/q4k-to.gguf" 2>/dev/null && cmp -s "$T/q4k.gguf" "$T/q4k-to.gguf"; then
    ok "quant --to gguf writes the same bytes as the default"
  else bad "quant --to gguf differs from the default"; fi
  expect_error "quant: unknown exporter" "registered: gguf" $QLAB quant "$T/tiny.gguf" --type q8_0 --to onnx -o "$T/x.gguf"
  if [ ! -e "$T/x.gguf" ]; then ok "unknown exporter writes nothing"; else bad "unknown exporter wrote $T/x.gguf"; fi
  # Ctrl-C during a longer quantization leaves neither the output nor a temporary file
  $QLAB synth --shape tiny --dims layers=6,embd=1024,ff=4096,vocab=4096 -o "$T/mid.gguf" 2>/dev/null
  mkdir -p "$T/cancel"
  $QLAB quant "$T/mid.gguf" --type q2_k -o "$T/cancel/out.gguf" --threads 1 >/dev/null 2>"$T/err" & pid=$!
  sleep 0.5; kill -INT $pid 2>/dev/null; wait $pid; rc=$?
  if [ $rc -ne 0 ] && [ -z "$(ls -A "$T/cancel")" ]; then ok "Ctrl-C during quant leaves nothing behind (rc $rc)"
  elif [ $rc -eq 0 ]; then skip "Ctrl-C test: quantization finished before the signal"
  else bad "Ctrl-C: rc $rc, left: $(ls "$T/cancel")"; fi
fi

# issue 10: what a new user hit. An output that is the input is refused, by every command that writes
if [ -f "$T/tiny.gguf" ]; then
  cp "$T/tiny.gguf" "$T/self.gguf"; ln -sf "$T/self.gguf" "$T/self-link.gguf"; sum0=$(md5sum < "$T/self.gguf")
  expect_error "quant -o INPUT is refused" "self.gguf" $QLAB quant "$T/self.gguf" --type q4_0 -o "$T/self.gguf"
  expect_error "quant -o link-to-INPUT is refused" "self-link.gguf" $QLAB quant "$T/self.gguf" --type q4_0 -o "$T/self-link.gguf"
  expect_error "quant through a link to the input" "refusing" $QLAB quant "$T/self-link.gguf" --type q4_0 -o "$T/self.gguf"
  expect_error "quant --save-plan INPUT is refused" "refusing" $QLAB quant "$T/self.gguf" --type q4_0 --save-plan "$T/self.gguf"
  expect_error "convert -o INPUT is refused" "refusing" $QLAB convert "$T/self.gguf" -o "$T/self.gguf"
  expect_error "stats -o TEXT is refused" "refusing" $QLAB stats "$T/self.gguf" --text "$T/text.txt" --ctx 64 -o "$T/text.txt"
  expect_error "imatrix -o INPUT is refused" "refusing" $QLAB imatrix "$T/self.gguf" --text "$T/text.txt" --ctx 64 -o "$T/self-link.gguf"
  expect_error "ppl --save-logits INPUT is refused" "refusing" $QLAB ppl "$T/self.gguf" --text "$T/text.txt" --ctx 64 --save-logits "$T/self.gguf"
  expect_error "sense -o INPUT is refused" "refusing" $QLAB sense "$T/self.gguf" --candidates q4_0 --level weight -o "$T/self.gguf"
  if [ "$(md5sum < "$T/self.gguf")" = "$sum0" ] && [ -L "$T/self-link.gguf" ]; then ok "the input model is untouched"
  else bad "the input model was changed"; fi
  $QLAB convert "$T/self.gguf" -o "$T/hfself" >/dev/null 2>&1
  expect_error "convert HF folder into itself is refused" "refusing" $QLAB convert "$T/hfself" -o "$T/hfself"
  # a plan that is not a plan file is an error, and nothing is written
  mkdir -p "$T/plandir"; : > "$T/empty.ini"
  expect_error "quant --plan FOLDER is an error" "plandir" $QLAB quant "$T/self.gguf" --plan "$T/plandir" -o "$T/fromdir.gguf"
  expect_error "quant --plan EMPTY-FILE is an error" "empty.ini" $QLAB quant "$T/self.gguf" --plan "$T/empty.ini" -o "$T/fromempty.gguf"
  if [ ! -e "$T/fromdir.gguf" ] && [ ! -e "$T/fromempty.gguf" ]; then ok "bad plans write nothing"; else bad "a bad plan wrote a file"; fi
  # a context past the training context (n_ctx_train 128 here): defaults are capped, a longer one warns
  $QLAB synth --shape tiny --dims layers=1,ctx=128 -o "$T/c128.gguf" 2>/dev/null
  for i in 1 2 3 4 5 6; do cat "$T/text.txt"; done > "$T/text6.txt"
  if $QLAB ppl "$T/c128.gguf" --text "$T/text6.txt" --chunks 1 --json 2>"$T/err" | grep -q '"ctx": 128,'; then ok "ppl defaults to n_ctx_train when it is below 512"
  else bad "ppl default ctx on a 128-token model"; sed 's/^/     /' "$T/err" | head -3; fi
  if $QLAB ppl "$T/c128.gguf" --text "$T/text6.txt" --chunks 1 --ctx 256 --json 2>"$T/err" | grep -q '"ctx": 256,' \
     && grep -q "trained on only 128 context tokens (256 asked for)" "$T/err"; then ok "ppl --ctx past n_ctx_train warns as llama.cpp does"
  else bad "ppl --ctx 256 on a 128-token model: no warning"; fi
  if $QLAB stats "$T/c128.gguf" --text "$T/text6.txt" --chunks 1 -o "$T/c128.qls" 2>"$T/err" && grep -q "1 sequences x 128 tokens" "$T/err"; then
    ok "stats defaults to n_ctx_train"; else bad "stats default ctx"; sed 's/^/     /' "$T/err" | tail -2; fi
  if $QLAB sense "$T/c128.gguf" --text "$T/text6.txt" --chunks 1 --candidates q8_0 --level output -o "$T/c128.qss" 2>"$T/err" \
     && grep -q "using ctx 128" "$T/err"; then ok "sense defaults to n_ctx_train"; else bad "sense default ctx"; sed 's/^/     /' "$T/err" | tail -2; fi
  # the working memory a context needs is checked before it is allocated, and refused with the figure
  QL_MEM_BUDGET_MB=64 $QLAB ppl "$T/c128.gguf" --text "$T/text6.txt" --ctx 8192 >/dev/null 2>"$T/err"; rc=$?
  if [ $rc -eq 1 ] && grep -q "ctx 8192 needs 0.4 GiB of working memory" "$T/err" && grep -q "use --ctx [0-9]* or less" "$T/err"; then
    ok "ppl refuses a context that does not fit, with the figure"
  else bad "ppl memory check: rc $rc"; sed 's/^/     /' "$T/err" | tail -2; fi
  # plan targets: outside the reachable range, negative or not a number are errors naming the problem
  $QLAB sense "$T/c128.gguf" --candidates q4_0,q8_0 --level weight -o "$T/w.qss" >/dev/null 2>&1
  expect_error "plan --target-bpw 40 names the reachable range" "candidates reach: 4.5" $QLAB plan "$T/w.qss" --target-bpw 40 -o "$T/p40.ini"
  expect_error "plan --target-bpw -3 says what is wrong" "positive number" $QLAB plan "$T/w.qss" --target-bpw -3 -o "$T/p40.ini"
  expect_error "plan --target-bpw nan says what is wrong" "got 'nan'" $QLAB plan "$T/w.qss" --target-bpw nan -o "$T/p40.ini"
  if [ ! -e "$T/p40.ini" ]; then ok "refused targets write no plan"; else bad "a refused target wrote a plan"; fi
  expect_error "--calib FILE@abc names the bad weight" "weight 'abc'" $QLAB stats "$T/c128.gguf" --calib "$T/text6.txt@abc" -o "$T/x.qls"
  # a llama2.c checkpoint without its tokenizer: convert warns, info says llama.cpp refuses it, and the
  # "no tokenizer" error names the files looked for and where
  mkdir -p "$T/l2c"
  python3 - "$T/l2c/model.bin" <<'PY'
import struct, sys
D, F, L, H, KV, V, S = 64, 172, 2, 8, 4, 512, 128
hs = D // H; kv = hs * KV
n = V * D + L * (D + D * D + 2 * D * kv + D * D + D + 3 * D * F) + D + S * hs
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<7i', D, F, L, H, KV, V, S))
    f.write(struct.pack('<%df' % n, *[((i * 7919) % 97 - 48) / 480.0 for i in range(n)]))
PY
  $QLAB convert "$T/l2c/model.bin" -o "$T/l2c.gguf" >/dev/null 2>"$T/err"
  if grep -q "warning: .*model.bin has no tokenizer.*tok512.bin" "$T/err"; then ok "convert warns about a missing tokenizer, naming tok512.bin"
  else bad "convert without tokenizer: no warning"; sed 's/^/     /' "$T/err" | head -3; fi
  if $QLAB info "$T/l2c.gguf" --no-tensors | grep -q "llama.cpp refuses" && \
     $QLAB info "$T/l2c.gguf" --json --no-tensors | grep -q '"llama_cpp_compatible": false'; then ok "info says llama.cpp refuses a GGUF without tokenizer"
  else bad "info on a GGUF without tokenizer"; fi
  expect_error "ppl without tokenizer names the files to add" "tokenizer.bin or tok512.bin in $T/l2c" $QLAB ppl "$T/l2c/model.bin" --text "$T/text.txt"
  # fallbacks say exactly what llama-quantize does with the same rows (172-wide ffn_down)
  $QLAB quant "$T/l2c.gguf" --preset Q8_0 --dry-run >/dev/null 2>"$T/err"
  $QLAB quant "$T/l2c.gguf" --preset Q4_K_M --dry-run >/dev/null 2>"$T/err2"
  if grep -q "ffn_down.weight: fallback from q8_0: rows of 172 .*llama-quantize refuses the model" "$T/err" \
     && grep -q "fallback from q4_k: .*llama-quantize does the same" "$T/err2" && ! grep -q "as llama.cpp does" "$T/err"; then
    ok "fallback notes say what llama-quantize does (refuses Q8_0 here, same fallback for q4_k)"
  else bad "fallback notes"; head -2 "$T/err" | sed 's/^/     /'; fi
  # the workbench in a real terminal (tmux, 80x24): every screen and the help, no word cut at the edge
  if command -v tmux >/dev/null 2>&1; then
    S=qlab-cli-$$; tbad=0
    tmux new-session -d -s $S -x 80 -y 24 -c "$PWD" "$QLAB tui $T/c128.gguf; sleep 5" 2>/dev/null; sleep 1.5
    for k in 1 2 3 4 5 6 7 '?'; do
      tmux send-keys -t $S "$k"; sleep 0.4
      tmux capture-pane -p -t $S > "$T/pane.txt" 2>/dev/null
      python3 - "$k" "$T/pane.txt" <<'PY' || tbad=1
import sys
bad = 0
for line in open(sys.argv[2], encoding='utf-8'):
    line = line.rstrip()
    boxed = line.endswith('\u2502')
    body = line[:-1] if boxed else line
    if (boxed or len(line) >= 80) and len(body) >= 2 and body[-1].isascii() and body[-1].isalnum() and body[-2].isalnum():
        print("     cut on screen %s: %s" % (sys.argv[1], line)); bad = 1
sys.exit(bad)
PY
      [ "$k" = '?' ] && tmux send-keys -t $S Escape
    done
    grep -q "qlab  1 Model" "$T/pane.txt" || tbad=1
    tmux send-keys -t $S q; sleep 0.3; tmux send-keys -t $S q; tmux kill-session -t $S 2>/dev/null
    if [ $tbad -eq 0 ]; then ok "tmux 80x24: every screen and the help without a cut word"; else bad "tmux 80x24: cut words"; fi
  else skip "tmux 80x24 (no tmux)"; fi
  expect_error "quant -o a file of the HF input folder is refused" "refusing" $QLAB quant "$T/hfself" --type q8_0 -o "$T/hfself/model.safetensors"
fi

# llama.cpp agreement on the real model
# only an absent shared folder skips; a folder that lacks the model is a failure, not a skip
if [ -d "$SHARED" ] && [ ! -f "$SHARED/models/stories260K.gguf" ]; then
  bad "$SHARED/models/stories260K.gguf missing from the shared folder"
elif [ -f "$SHARED/models/stories260K.gguf" ]; then
  M=$SHARED/models/stories260K.gguf
  $QLAB tokenize "$M" --prompt "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." > "$T/ids.txt"
  if diff -q "$T/ids.txt" "$SHARED/testdata/stories260K-logits/tokens.txt" >/dev/null; then ok "token ids equal llama.cpp's"
  else bad "token ids differ from llama.cpp's"; fi
  $QLAB logits "$M" --tokens "$SHARED/testdata/stories260K-logits/tokens.txt" -o "$T/logits.f32" 2>/dev/null
  if python3 - "$T/logits.f32" "$SHARED/testdata/stories260K-logits/logits.f32" <<'PY'
import sys, struct
a = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
n = len(b) // 4
assert len(a) == len(b), (len(a), len(b))
x = struct.unpack('<%df' % n, a); y = struct.unpack('<%df' % n, b)
d = max(abs(p - q) for p, q in zip(x, y))
print("     max |diff| = %.3g" % d)
sys.exit(0 if d < 1e-4 else 1)
PY
  then ok "qlab logits within 1e-4 of llama.cpp"; else bad "qlab logits differ from llama.cpp"; fi
  # The full reference run (1535 chunks) takes a few seconds (a minute and more under the sanitizers).
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "stories260K ppl over 1535 chunks (QL_QUICK=1: the plain pass checks it)"
  else
  j=$($QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --json 2>/dev/null)
  ppl=$(echo "$j" | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p'); chunks=$(echo "$j" | sed -n 's/.*"chunks": \([0-9]*\).*/\1/p')
  if awk -v p="$ppl" 'BEGIN { exit !(p > 4.8743 && p < 4.8763) }' && [ "$chunks" = 1535 ]; then
    ok "stories260K ppl $ppl over $chunks chunks (llama.cpp: 4.8753, 1535)"
  else bad "stories260K ppl '$ppl' chunks '$chunks' (want 4.8753 +- 0.001, 1535)"; fi
  fi
  # KLD against itself through a saved base is ~0 and top-1 agreement is total
  $QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 20 --save-logits "$T/base.qlp" >/dev/null 2>&1
  j=$($QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 20 --kld-base "$T/base.qlp" --json 2>/dev/null)
  if echo "$j" | grep -q '"top1_agreement": 1.0' && echo "$j" | grep -q '"kld_mean": 0.0000000'; then ok "self-KLD ~ 0"
  else bad "self-KLD: $j"; fi
  # layer streaming (models larger than the memory budget) gives the same numbers
  $QLAB convert "$M" --type f16 -o "$T/f16.gguf" >/dev/null 2>&1
  p0=$(QL_STREAM=0 $QLAB ppl "$T/f16.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 8 --threads 1 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  p1=$(QL_STREAM=1 $QLAB ppl "$T/f16.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 8 --threads 1 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  if [ -n "$p0" ] && [ "$p0" = "$p1" ]; then ok "layer-streamed forward pass gives the same PPL ($p1)"; else bad "streaming: '$p0' vs '$p1'"; fi
  # calibration: the same spec and seed give byte-identical statistics files
  CAL="$SHARED/data/c4-sample.jsonl:field=text@0.5+$SHARED/data/wikitext-2-valid.raw@0.5"
  $QLAB stats "$M" --calib "$CAL" --samples 16 --len 128 --seed 7 -o "$T/s1.qls" 2>/dev/null
  $QLAB stats "$M" --calib "$CAL" --samples 16 --len 128 --seed 7 -o "$T/s2.qls" 2>/dev/null
  if [ -s "$T/s1.qls" ] && cmp -s "$T/s1.qls" "$T/s2.qls"; then ok "same calibration spec and seed: byte-identical statistics"
  else bad "statistics not reproducible"; fi
  # data-aware methods through qlab quant: GPTQ and AWQ beat RTN on KLD (int4_g32, 40 chunks)
  $QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 40 --save-logits "$T/b40.qlp" >/dev/null 2>&1
  kld40() { $QLAB ppl "$1" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 40 --kld-base "$T/b40.qlp" --json 2>/dev/null | sed -n 's/.*"kld_mean": \([0-9.e-]*\).*/\1/p'; }
  $QLAB quant "$M" --type int4_g32 -o "$T/rtn.gguf" >/dev/null 2>&1
  $QLAB quant "$M" --type int4_g32 --method gptq --stats "$T/s1.qls" -o "$T/gptq.gguf" >/dev/null 2>&1
  $QLAB quant "$M" --type int4_g32 --method awq --stats "$T/s1.qls" -o "$T/awq.gguf" >/dev/null 2>&1
  kr=$(kld40 "$T/rtn.gguf"); kg=$(kld40 "$T/gptq.gguf"); ka=$(kld40 "$T/awq.gguf")
  if awk -v r="$kr" -v g="$kg" -v a="$ka" 'BEGIN { exit !(g < r && a < r && r > 0) }'; then ok "int4_g32 KLD: RTN $kr > GPTQ $kg, AWQ $ka"
  else bad "int4_g32 KLD: RTN '$kr' GPTQ '$kg' AWQ '$ka'"; fi
  expect_error "gptq without calibration" "calibration" $QLAB quant "$M" --type int4_g32 --method gptq -o "$T/x.gguf"
  # methods as handles: options are checked against the method's schema, a method that cannot write a
  # format refuses, GPTQ into NF4 is real error feedback, and --dry-run says what each tensor gets
  expect_error "gptq option misspelled (lists act_order)" "act_order" $QLAB quant "$M" --type q4_k --method gptq --method-opts actorder=1 -o "$T/x.gguf"
  expect_error "gptq option out of range" "outside" $QLAB quant "$M" --type int4_g32 --method gptq --method-opts damp=20 -o "$T/x.gguf"
  expect_error "gptq cannot write nf4_dq" "no code grid" $QLAB quant "$M" --type nf4_dq --method gptq --stats "$T/s1.qls" -o "$T/x.gguf"
  expect_error "gptq cannot write f16" "no code grid" $QLAB quant "$M" --type f16 --method gptq --stats "$T/s1.qls" -o "$T/x.gguf"
  expect_error "method name misspelled" "did you mean 'gptq'" $QLAB quant "$M" --type nf4 --method gtpq -o "$T/x.gguf"
  $QLAB quant "$M" --type nf4 -o "$T/nf4.gguf" >/dev/null 2>&1
  $QLAB quant "$M" --type nf4 --method gptq --stats "$T/s1.qls" -o "$T/nf4g.gguf" >/dev/null 2>&1
  kn=$(kld40 "$T/nf4.gguf"); kng=$(kld40 "$T/nf4g.gguf")
  if [ -s "$T/nf4g.gguf" ] && ! cmp -s "$T/nf4.gguf" "$T/nf4g.gguf" && awk -v r="$kn" -v g="$kng" 'BEGIN { exit !(g < r && r > 0) }'; then
    ok "nf4 + gptq: other bytes than nf4, KLD $kng < RTN $kn"
  else bad "nf4 + gptq: KLD '$kng' vs RTN '$kn' (or same bytes)"; fi
  $QLAB quant "$M" --type nf4 --method gptq --text "$T/text.txt" --dry-run > "$T/dry.txt" 2>/dev/null
  if grep -q '^token_embd.weight  *nf4  # rtn: .*looked up' "$T/dry.txt" && grep -q '^blk.0.attn_q.weight  *nf4+gptq$' "$T/dry.txt"; then
    ok "--dry-run: token_embd gets rtn and says why, linears get gptq"
  else bad "--dry-run does not say what each tensor gets"; sed 's/^/     /' "$T/dry.txt" | head -3; fi
  expect_error "unknown method" "unknown method" $QLAB quant "$M" --type int4_g32 --method nope -o "$T/x.gguf"
  expect_error "static activations need stats" "--act-stats" $QLAB ppl "$M" --text "$T/text.txt" --act int8_tensor
  # statistics carry the fingerprint of their model: a SmoothQuant-rescaled copy is refused, a weight-only
  # quantized copy is accepted (static activation scales of the same activations)
  $QLAB quant "$M" --preset INT8_CHANNEL --method smoothquant --stats "$T/s1.qls" -o "$T/sq8.gguf" >/dev/null 2>&1
  expect_error "statistics of another model" "s1.qls: statistics collected on another model" \
    $QLAB ppl "$T/sq8.gguf" --text "$T/text.txt" --ctx 64 --chunks 1 --act int8_tensor --act-stats "$T/s1.qls"
  expect_error "quant --stats of another model" "statistics collected on another model" \
    $QLAB quant "$T/sq8.gguf" --type int4_g32 --method gptq --stats "$T/s1.qls" -o "$T/x.gguf"
  if $QLAB ppl "$T/rtn.gguf" --text "$T/text.txt" --ctx 64 --chunks 1 --act int8_tensor --act-stats "$T/s1.qls" >/dev/null 2>&1
  then ok "static activation scales on a weight-quantized copy"; else bad "ppl --act-stats on a weight-quantized copy"; fi
  # activation schemes in the plan: quant --plan stores them (qlab.act.* keys), ppl on the file runs them with
  # no flag and gets the figure --act gives on the same weights; --save-plan writes them back unchanged
  ppl64() { $QLAB ppl "$@" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 6 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p'; }
  printf '[tensors]\nblk.0.attn_q.weight = f32\n[activations]\ndefault = int8_tensor\nblk.1.ffn_down.weight = llm_int8:4\noutput.weight = fp8_token\n' > "$T/act.ini"
  printf '[tensors]\nblk.0.attn_q.weight = f32\n[activations]\ndefault = int8_tensor\n' > "$T/act3.ini"
  if $QLAB quant "$M" --plan "$T/act.ini" --stats "$T/s1.qls" -o "$T/act.gguf" --save-plan "$T/act2.ini" 2>"$T/err"; then
    pf=$(ppl64 "$T/act.gguf"); pn=$(ppl64 "$T/act.gguf" --act none); p0=$(ppl64 "$M")
    $QLAB quant "$M" --plan "$T/act3.ini" --stats "$T/s1.qls" -o "$T/act3.gguf" 2>/dev/null
    pa=$(ppl64 "$M" --act int8_tensor --act-stats "$T/s1.qls"); pb=$(ppl64 "$T/act3.gguf")
    if [ -n "$pa" ] && [ "$pa" = "$pb" ] && [ "$pn" = "$p0" ] && [ "$pf" != "$pn" ]; then
      ok "plan [activations] -> quant -> ppl: $pb = ppl --act int8_tensor ($pa); mixed plan $pf, --act none $pn = float"
    else bad "plan activations: file '$pb' vs --act '$pa'; mixed '$pf', none '$pn' vs float '$p0'"; fi
    if sed -n '/^\[activations\]/,$p' "$T/act2.ini" | grep -q '^blk.1.ffn_down.weight = llm_int8:4$' \
       && grep -q '^output.weight = fp8_token$' "$T/act2.ini"; then
      ok "--save-plan keeps [activations]"; else bad "--save-plan lost the activation section"; fi
  else bad "quant --plan with [activations]"; sed 's/^/     /' "$T/err" | head -3; fi
  # the same through the workbench: load the plan (L), see the marked inputs, save it (S); the saved plan
  # quantizes to a file with the identical perplexity (SmoothQuant alpha, static INT8 scales, LLM.int8())
  printf '[plan]\nmethod_opts = alpha=0.5\n[tensors]\nblk.0.attn_q.weight = int8_channel+smoothquant\nblk.0.attn_k.weight = int8_channel+smoothquant\nblk.0.attn_v.weight = int8_channel+smoothquant\n[activations]\ndefault = int8_tensor\nblk.1.ffn_down.weight = llm_int8:4\nblk.2.attn_q.weight = fp8_token\n' > "$T/act4.ini"
  $QLAB tui "$M" --keys "3L<c-u>$T/act4.ini<enter>S<c-u>$T/act4-tui.ini<enter>" --size 100x30 > "$T/tui.txt" 2>&1
  if grep -q "A: 35 inputs quantized" "$T/tui.txt" && [ -f "$T/act4-tui.ini" ] \
     && $QLAB quant "$M" --plan "$T/act4.ini" --stats "$T/s1.qls" -o "$T/act4.gguf" 2>/dev/null \
     && $QLAB quant "$M" --plan "$T/act4-tui.ini" --stats "$T/s1.qls" -o "$T/act4-tui.gguf" 2>/dev/null; then
    q1=$(ppl64 "$T/act4.gguf"); q2=$(ppl64 "$T/act4-tui.gguf"); q0=$(ppl64 "$T/act4.gguf" --act none)
    if [ -n "$q1" ] && [ "$q1" = "$q2" ] && [ "$q1" != "$q0" ]; then ok "plan with activations: TUI load+save -> quant -> ppl $q2 = $q1 (weights only $q0)"
    else bad "TUI plan round trip: '$q1' vs '$q2' (weights only '$q0')"; fi
  else bad "TUI plan round trip with activations"; sed 's/^/     /' "$T/tui.txt" | head -4; fi
  printf '[tensors]\nblk.0.attn_q.weight = q8_0\n[activations]\ndefault = int7_token\n' > "$T/actbad.ini"
  expect_error "plan: unknown activation scheme" "actbad.ini: [activations] default: unknown activation scheme 'int7_token'" \
    $QLAB quant "$M" --plan "$T/actbad.ini" -o "$T/x.gguf"
  expect_error "ppl --act unknown scheme" "unknown activation scheme 'int9'" $QLAB ppl "$M" --text "$T/text.txt" --act int9
  expect_error "plan: static scales from another model's statistics" "statistics collected on another model" \
    $QLAB quant "$T/sq8.gguf" --plan "$T/act3.ini" --stats "$T/s1.qls" -o "$T/x.gguf"
  expect_error "plan: static scales without statistics" "needs calibration" $QLAB quant "$M" --plan "$T/act3.ini" -o "$T/x.gguf"
  printf '[tensors]\nblk.0.attn_q.weight = q8_0\n[activations]\nblk.0.attn_norm.weight = int8_token\n' > "$T/actbad2.ini"
  expect_error "plan: scheme on a tensor that is not a linear" "not a linear layer" $QLAB quant "$M" --plan "$T/actbad2.ini" -o "$T/x.gguf"
  # activation sensitivity: each linear's KLD with only its input quantized; LLM.int8() (outliers kept in float)
  # costs less than plain per-token INT8 summed over the linears, static per-tensor INT8 more; a second run
  # reuses every cell; qlab plan --act writes the schemes into the plan and pareto --act draws the second series
  $QLAB sense "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 4 --candidates q4_0,q8_0 \
    --act-candidates int8_token,int8_tensor,llm_int8 -o "$T/act.qss" > "$T/sense.txt" 2>"$T/err"
  sum_of() { sed -n "s/^activations $1 .*summed KLD \([0-9.e-]*\),.*/\1/p" "$T/sense.txt"; }
  ka=$(sum_of int8_token); kb=$(sum_of int8_tensor); kc=$(sum_of llm_int8)
  if [ "$(grep -c '^k	' "$T/act.qss")" = 111 ] && awk -v a="$ka" -v b="$kb" -v c="$kc" 'BEGIN { exit !(c < a && a < b && c > 0) }'; then
    ok "sense --act-candidates: 37 tensors x 3 schemes; summed KLD llm_int8 $kc < int8_token $ka < int8_tensor $kb"
  else bad "sense --act-candidates: '$ka' '$kb' '$kc'"; sed 's/^/     /' "$T/err" | tail -3; fi
  # the weight cells above came from batched probes (2 candidates per pass, the CPU default of 4 capped at 2);
  # one candidate per pass must give the same errors up to float sums (weight, output, KLD of every m line; KLD
  # within 1e-5 relative above a 3e-8 floor: OpenBLAS's Haswell sgemm, which some machines force, rounds a row by
  # its place in the product)
  $QLAB sense "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 4 --candidates q4_0,q8_0 \
    --cand-batch 1 -o "$T/batch1.qss" >/dev/null 2>&1
  if [ "$(grep -c '^m	' "$T/batch1.qss")" = 74 ] && paste <(grep '^m	' "$T/act.qss") <(grep '^m	' "$T/batch1.qss") | awk -F'\t' '
       { n = NF / 2; for (i = 6; i <= 8; i++) { a = $i; b = $(i + n); d = a - b; if (d < 0) d = -d;
           if (a < 0) a = -a; if (d > (i == 8 ? 1e-5 * a + 3e-8 : 1e-6 * (a > 1e-12 ? a : 1e-12))) bad++ } }
       END { exit bad > 0 }'; then
    ok "sense --cand-batch 1 (a pass per candidate) gives the batched run's 74 cells (KLD within 1e-5 + 3e-8)"
  else bad "sense --cand-batch 1 differs from the batched cells"; fi
  expect_error "sense --cand-batch 0 refused" "--cand-batch" $QLAB sense "$M" --text "$T/text.txt" --candidates q8_0 --cand-batch 0 -o "$T/never.qss"
  if $QLAB sense "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 128 --chunks 4 --candidates q4_0,q8_0 \
       --act-candidates int8_token,int8_tensor,llm_int8 -o "$T/act.qss" 2>&1 >/dev/null | grep -q "reusing 175 measured cells"; then
    ok "sense --act-candidates resumes (64 weight + 111 activation cells reused)"; else bad "act cells not reused"; fi
  if $QLAB plan "$T/act.qss" --target-bpw 10 --act int8_token --act-max-kld 0.0002 -o "$T/actp.ini" --quiet > "$T/out" 2>/dev/null \
     && grep -q "^blk.0.attn_q.weight = int8_token" "$T/actp.ini" && grep -q "predicted KLD with activations" "$T/out" \
     && $QLAB pareto "$T/act.qss" --act llm_int8 --csv | head -1 | grep -q "kld_with_act"; then
    ok "plan --act writes [activations]; pareto --act adds the series"; else bad "plan/pareto --act"; cat "$T/out" | head -3; fi
  expect_error "sense --act-candidates unknown scheme" "unknown activation scheme 'int9'" \
    $QLAB sense "$M" --text "$T/text.txt" --candidates q8_0 --act-candidates int9 -o "$T/x.qss"
  expect_error "plan --act of an unmeasured scheme" "fp8_token was not measured" \
    $QLAB plan "$T/act.qss" --target-bpw 10 --act fp8_token -o "$T/x.ini"
  # qlab imatrix over the same chunks as llama-imatrix gives the same importance
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "imatrix vs llama.cpp (QL_QUICK=1)"
  elif $QLAB imatrix "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 -o "$T/im.gguf" 2>/dev/null \
       && python3 "$(dirname "$0")/cmp_imatrix.py" "$T/im.gguf" "$SHARED/testdata/stories260K-imatrix/imatrix-ts.gguf" > "$T/cmp.txt"; then
    ok "qlab imatrix matches llama.cpp's imatrix-ts.gguf ($(cat "$T/cmp.txt"))"
  else bad "imatrix vs llama.cpp: $(cat "$T/cmp.txt" 2>/dev/null)"; fi
  # quantized with llama.cpp's mixes, measured by qlab: llama.cpp's perplexities within 0.002
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "mix perplexities (QL_QUICK=1)"
  elif MIXES="Q4_K_M Q2_K" D256_MIXES="" QLAB=$QLAB bash "$(dirname "$0")/mixes_check.sh" > "$T/mixes.txt"; then ok "Q4_K_M and Q2_K perplexities match llama.cpp"; cat "$T/mixes.txt" | sed 's/^/     /'
  else bad "mix perplexities"; cat "$T/mixes.txt"; fi
else
  skip "llama.cpp agreement ($SHARED not found)"
fi

# quantized Hugging Face folders (--to gptq / awq / compressed-tensors): an independent NumPy decoder
# (tests/decode_hf_quant.py) must reproduce qlab's own dequantization (qlab convert --type f32 of the
# same plan as GGUF) bit for bit, for every tensor
PYNP=""
for p in python3 /usr/bin/python3; do if $p -c 'import numpy' 2>/dev/null; then PYNP=$p; break; fi; done
HFM="$SHARED/models/tinystories-d256.gguf"; [ -f "$HFM" ] || HFM="$T/tiny.gguf"
# i-quants that ggml writes only with importance (iq2_xxs): refused without --imatrix, nothing written;
# with an imatrix (tensors it has no data for get q2_k) the result loads and runs
if [ -f "$SHARED/models/tinystories-d256.gguf" ]; then
  rm -f "$T/iq.gguf"
  expect_error "quant iq2_xxs without --imatrix is refused" "--imatrix" $QLAB quant "$HFM" --type iq2_xxs -o "$T/iq.gguf"
  if [ -e "$T/iq.gguf" ]; then bad "quant iq2_xxs refused but wrote $T/iq.gguf"; fi
  if $QLAB imatrix "$HFM" --text "$T/text.txt" --ctx 64 -o "$T/iq-im.gguf" 2>"$T/err" \
     && $QLAB quant "$HFM" --type iq2_xxs --imatrix "$T/iq-im.gguf" -o "$T/iq.gguf" 2>"$T/err" \
     && $QLAB ppl "$T/iq.gguf" --text "$T/text.txt" --ctx 64 >"$T/out" 2>&1 && grep -q "PPL = " "$T/out"; then
    ok "quant iq2_xxs --imatrix, then ppl: $(grep "PPL = " "$T/out" | cut -c1-24)"
  else bad "quant iq2_xxs --imatrix / ppl"; sed 's/^/     /' "$T/err" | tail -3; fi
else skip "iq2_xxs quant (tinystories-d256.gguf missing)"; fi
# llama.cpp's i-quant mixes as presets: with its imatrix, every per-tensor type as llama-quantize picks it, so
# the file has llama.cpp's size within 512 bytes (one type off on the smallest tensor moves it by 1 KiB; the
# rest is llama.cpp's imatrix metadata strings). PPL of each: make check-mixes.
DREF="$SHARED/models/tinystories-d256-llamacpp.md"; DIMAT="$SHARED/models/tinystories-d256-imatrix-wt.gguf"
if [ -f "$SHARED/models/tinystories-d256.gguf" ] && [ -f "$DREF" ] && [ -f "$DIMAT" ]; then
  mixes="IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_S IQ3_M"
  # under the sanitizers one mix (IQ2_M holds iq2_s, iq3_s, q4_k, q6_k...); test_iquants covers every quantizer
  if [ "${QL_QUICK:-0}" = 1 ]; then mixes=IQ2_M; skip "the other 7 i-quant mix sizes (QL_QUICK=1: the plain pass checks them)"; fi
  for mix in $mixes; do
    wbytes=$(awk -F'|' -v m="$mix" '$2 ~ "^ *"m" *$" && $3 ~ /wikitext/ {gsub(/[ ,]/,"",$4); print $4; exit}' "$DREF")
    if [ -n "$wbytes" ] && $QLAB quant "$HFM" --preset "$mix" --imatrix "$DIMAT" -o "$T/mix.gguf" >/dev/null 2>"$T/err"; then
      b=$(stat -c %s "$T/mix.gguf")
      if [ $((b - wbytes)) -le 512 ] && [ $((wbytes - b)) -le 512 ]; then ok "preset $mix: $b bytes, llama.cpp $wbytes"
      else bad "preset $mix: $b bytes, llama.cpp $wbytes"; fi
    else bad "preset $mix on tinystories-d256"; sed 's/^/     /' "$T/err" | tail -2; fi
  done
  expect_error "preset IQ2_XXS without --imatrix is refused" "--imatrix" $QLAB quant "$HFM" --preset IQ2_XXS -o "$T/mix.gguf"
else skip "i-quant mix presets (tinystories-d256 reference files missing)"; fi
# export_check NAME TARGET QUANT-ARGS...: quantize to GGUF and to TARGET, decode, compare
export_check() {
  local name=$1 to=$2; shift 2
  rm -rf "$T/hx" "$T/hx.gguf" "$T/hxref"
  if ! $QLAB quant "$HFM" "$@" -o "$T/hx.gguf" 2>"$T/err" || ! $QLAB convert "$T/hx.gguf" --type f32 -o "$T/hxref" 2>>"$T/err"; then
    bad "export $name: reference"; sed 's/^/     /' "$T/err" | head -3; return; fi
  if ! $QLAB quant "$HFM" "$@" --to "$to" -o "$T/hx" 2>"$T/err"; then bad "export $name"; sed 's/^/     /' "$T/err" | head -3; return; fi
  if grep -q "llama.cpp cannot load" "$T/err"; then bad "export $name: GGUF-only warning on a $to export"; return; fi
  if [ -n "$PYNP" ]; then
    if $PYNP "$(dirname "$0")/decode_hf_quant.py" "$T/hx" "$T/hxref" "$T/hx.gguf" > "$T/dec" 2>&1; then ok "export $name: $(tail -1 "$T/dec")"
    else bad "export $name: decoder"; sed 's/^/     /' "$T/dec" | head -5; fi
  else skip "export $name: decoder (python3-numpy missing; bash scripts/deps.sh)"; fi
}
if [ -f "$HFM" ]; then
  export_check "gptq int4_g128" gptq --type int4_g128
  export_check "gptq int3_g64_sym" gptq --type int3_g64_sym
  export_check "gptq int8_channel" gptq --type int8_channel
  export_check "awq int4_g64" awq --type int4_g64
  export_check "awq int4_g32_sym" awq --type int4_g32_sym
  export_check "compressed-tensors int4_g32_sym" compressed-tensors --type int4_g32_sym
  export_check "compressed-tensors int8_g64" compressed-tensors --type int8_g64
  export_check "compressed-tensors int8_tensor" compressed-tensors --type int8_tensor
  export_check "compressed-tensors fp8_e4m3" compressed-tensors --type fp8_e4m3
  export_check "compressed-tensors fp8_e4m3_channel" compressed-tensors --type fp8_e4m3_channel
  export_check "compressed-tensors nvfp4 (nvfp4-pack-quantized)" compressed-tensors --type nvfp4
  # W8A8: the plan's activation schemes become input_activations (+ input_scale for static ones); the decoder
  # checks them against the GGUF of the same plan
  $QLAB stats "$HFM" --text "$T/text.txt" --ctx 64 -o "$T/hfs.qls" 2>/dev/null
  export_check "compressed-tensors W8A8 int8 static" compressed-tensors --type int8_channel --act int8_tensor --stats "$T/hfs.qls"
  if grep -q '"input_scale"' "$T/hx/model.safetensors" 2>/dev/null || grep -aq 'self_attn.q_proj.input_scale' "$T/hx/model.safetensors" 2>/dev/null; then
    ok "W8A8 static export carries input_scale"; else bad "W8A8 static export has no input_scale"; fi
  export_check "compressed-tensors W8A8 fp8 dynamic" compressed-tensors --type fp8_e4m3_channel --act fp8_token
  if grep -q '"dynamic": true' "$T/hx/config.json" 2>/dev/null; then ok "W8A8 dynamic export: dynamic: true"; else bad "W8A8 dynamic config"; fi
  expect_error "llm_int8 has no compressed-tensors form" "llm_int8" $QLAB quant "$HFM" --type int8_channel --act llm_int8 --to compressed-tensors -o "$T/hxl"
  expect_error "gptq cannot hold activation schemes" "cannot hold" $QLAB quant "$HFM" --type int4_g128 --act int8_token --to gptq -o "$T/hxg"
  export_check "bnb nf4" bnb --type nf4
  export_check "bnb fp4" bnb --type fp4
  # double quantization keeps its 256-block absmax groups only in qlab's row order: q/k stay float
  $QLAB quant "$HFM" --type nf4_dq --dry-run --save-plan "$T/dq.ini" >/dev/null 2>&1
  sed -i '/attn_[qk]\.weight/d' "$T/dq.ini"
  export_check "bnb nf4_dq (q/k float)" bnb --plan "$T/dq.ini"
  if grep -q '"bnb_4bit_use_double_quant": true' "$T/hx/config.json" 2>/dev/null && grep -q '"model.layers.0.self_attn.q_proj"' "$T/hx/config.json"; then
    ok "bnb config: double quant, float q/k in llm_int8_skip_modules"; else bad "bnb config.json"; fi
  expect_error "bnb refuses nf4_dq on q/k" "attn_q" $QLAB quant "$HFM" --type nf4_dq --to bnb -o "$T/hxq"
  # LLM.int8 (load_in_8bit): bnb_int8 is bitsandbytes' own rounding and decode, so weight + SCB decode bit for bit
  export_check "bnb LLM.int8 (bnb_int8)" bnb --type bnb_int8
  if grep -q '"load_in_8bit": true' "$T/hx/config.json" 2>/dev/null && grep -aq '"model.layers.0.self_attn.q_proj.SCB"' "$T/hx/model.safetensors"; then
    ok "bnb 8-bit config: load_in_8bit, SCB written"; else bad "bnb 8-bit config.json / SCB"; fi
  # a mixed plan: three config groups, one block linear left in float (listed under ignore)
  $QLAB quant "$HFM" --type int4_g128 --dry-run --save-plan "$T/mix.ini" >/dev/null 2>&1
  sed -i -e 's/^\(blk\.[0-9]*\.ffn_down\.weight\) = .*/\1 = fp8_e4m3_channel/' -e 's/^\(blk\.[0-9]*\.attn_v\.weight\) = .*/\1 = int8_g64/' \
      -e '/^blk\.0\.ffn_up\.weight/d' "$T/mix.ini"
  export_check "compressed-tensors mixed plan" compressed-tensors --plan "$T/mix.ini"
  if [ -f "$T/hx/config.json" ] && grep -q '"group_2"' "$T/hx/config.json" && grep -q '"mixed-precision"' "$T/hx/config.json" \
     && grep -q '"model.layers.0.mlp.up_proj"' "$T/hx/config.json"; then ok "mixed plan: config groups, mixed-precision, ignore"
  else bad "mixed plan: config.json lacks its groups or ignore list"; fi
  # the same mixed plan with mixed activation schemes: one group per weight+input scheme
  cp "$T/mix.ini" "$T/mixact.ini"
  printf '[activations]\ndefault = int8_token\nblk.0.ffn_up.weight = none\nblk.1.ffn_down.weight = fp8_tensor\nblk.0.attn_q.weight = fp8_token\n' >> "$T/mixact.ini"
  export_check "compressed-tensors mixed plan, mixed activations" compressed-tensors --plan "$T/mixact.ini" --stats "$T/hfs.qls"
  # shards: a small limit gives model-0000i-of-0000N files and an index the decoder follows
  QLAB_MAX_SHARD_BYTES=600000 export_check "gptq int4_g32_sym, sharded" gptq --type int4_g32_sym
  if ls "$T/hx" | grep -q 'model-00001-of-000[0-9][0-9].safetensors' && [ -f "$T/hx/model.safetensors.index.json" ]; then ok "sharded export has shards and an index"
  else bad "sharded export: no shards"; fi
  # refusals: one line naming the tensor, nothing left behind
  expect_error "gptq refuses q4_k" "q4_k" $QLAB quant "$HFM" --type q4_k --to gptq -o "$T/hxq"
  expect_error "awq refuses 8-bit" "it takes int4_g*" $QLAB quant "$HFM" --type int8_g32 --to awq -o "$T/hxq"
  expect_error "compressed-tensors refuses fp8 blocks under q/k reordering" "attn_q" $QLAB quant "$HFM" --type fp8_e4m3_block --to compressed-tensors -o "$T/hxq"
  mkdir -p "$T/full" && touch "$T/full/keep"
  expect_error "non-empty output folder refused" "not an empty folder" $QLAB quant "$HFM" --type int4_g32_sym --to awq -o "$T/full"
  expect_error "exl2: non-empty output folder refused" "not an empty folder" $QLAB quant "$HFM" --type exl2_4b128 --to exl2 -o "$T/full"
  if [ -f "$T/full/keep" ] && [ ! -e "$T/hxq" ] && ! ls "$T" | grep -q '\.tmp\.'; then ok "refused exports leave nothing behind"
  else bad "a refused export left files behind"; fi
  if $QLAB quant "$HFM" --type int4_g32_sym --to awq -o "$T/full" --force >/dev/null 2>&1 && [ ! -e "$T/full/keep" ] \
     && [ -s "$T/full/config.json" ] && ! ls "$T" | grep -q '\.tmp\.'; then ok "--force replaces a non-empty output folder whole"
  else bad "quant --to awq --force"; fi
  if [ -f "$SHARED/models/stories260K.gguf" ]; then
    expect_error "gptq refuses 172-wide outputs" "blk.0.ffn_gate.weight" $QLAB quant "$SHARED/models/stories260K.gguf" --type int4_g32_sym --to gptq -o "$T/hxq"
    expect_error "exl2 formats refuse 172-wide inputs" "blk.0.ffn_down.weight" $QLAB quant "$SHARED/models/stories260K.gguf" --type exl2_4b128 -o "$T/hxq.gguf"
  fi
  # --dry-run --to: what each tensor becomes in the target's folder (HF tensors, dtypes, shapes, bits, group), the
  # tensors kept in float and why, the refusals named; exit 1 when any is refused; nothing written
  if [ -f "$SHARED/models/stories260K.gguf" ]; then
    rm -rf "$T/dry"
    $QLAB quant "$SHARED/models/stories260K.gguf" --type int4_g32_sym --to gptq --dry-run -o "$T/dry" >"$T/dry.out" 2>"$T/err"; rc=$?
    if [ $rc = 1 ] && grep -q '^blk.0.attn_q.weight .*-> model.layers.0.self_attn.q_proj.qweight I32 \[8, 64\].*4-bit, group 32' "$T/dry.out" \
       && grep -q '^blk.0.ffn_gate.weight .*REFUSED: .*172' "$T/dry.out" && grep -q '^token_embd.weight .*kept in float' "$T/dry.out" \
       && grep -q 'would refuse 15 tensors' "$T/err" && [ ! -e "$T/dry" ]; then
      ok "quant --dry-run --to gptq: layouts, float tensors and refusals listed, nothing written"
    else bad "quant --dry-run --to gptq (exit $rc)"; sed 's/^/     /' "$T/dry.out" "$T/err" | grep -- '->\|REFUSED\|refuse' | head -3; fi
  fi
  # EXL2 (issue 14): ExLlamaV2's mixed-bit tensors. --method exl2 orders the inputs by H_ii, so q_perm /
  # q_invperm and the q/k outputs put back in HF order (the columns of q_weight and q_scale) are exercised
  export_check "exl2 0.1:5b_128g/0.9:4b_128g, --method exl2" exl2 --type exl2_10x5b128_90x4b128 --method exl2 --stats "$T/hfs.qls"
  if grep -q '"quant_method": "exl2"' "$T/hx/config.json" 2>/dev/null && grep -aq 'q_invperm' "$T/hx/model.safetensors"; then
    ok "exl2 config: quant_method exl2, q_invperm written"; else bad "exl2 config.json / tensors"; fi
  export_check "exl2 0.05:6b_32g/0.2:3b_64g/0.75:2b_64g" exl2 --type exl2_5x6b32_20x3b64_75x2b64
  expect_error "exl2 refuses int4_g128" "exl2_* formats" $QLAB quant "$HFM" --type int4_g128 --to exl2 -o "$T/hxq"
  # EXL2-style allocation (the fast version of docs/results.md's check): four mixes measured per tensor, then
  # qlab plan --to exl2 gives per-tensor fractional mixes at 4.15 +- 0.01 bpw; applied and exported
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "exl2 plan at 4.15 bpw (QL_QUICK=1)"
  elif [ -f "$SHARED/models/tinystories-d256.gguf" ]; then
    if $QLAB sense "$HFM" --text "$T/text.txt" --ctx 64 --chunks 4 --stats "$T/hfs.qls" --level output \
         --candidates 'exl2_10x4b128_90x3b128+exl2,exl2_4b128+exl2,exl2_10x5b128_90x4b128+exl2,exl2_5b64+exl2,int4_g128+gptq' \
         -o "$T/x2.qss" >/dev/null 2>"$T/err" \
       && $QLAB plan "$T/x2.qss" --target-bpw 4.15 --to exl2 -o "$T/x2.ini" >"$T/x2.out" 2>>"$T/err"; then
      b=$(sed -n 's/^bpw \([0-9.]*\) over quantized.*/\1/p' "$T/x2.out")
      mixes=$(grep -o 'exl2_[0-9a-z_]*' "$T/x2.ini" | sort -u | wc -l)
      if awk -v b="$b" 'BEGIN { exit !(b >= 4.14 && b <= 4.16) }' && [ "$mixes" -ge 2 ] && ! grep -q 'int4_g128' "$T/x2.ini"; then
        ok "plan --to exl2 --target-bpw 4.15: $b bpw, $mixes different mixes, no gptq candidate"
      else bad "plan --to exl2: bpw '$b', $mixes mixes"; sed 's/^/     /' "$T/x2.out" | tail -3; fi
      if grep -q '^--to exl2: what each tensor becomes' "$T/x2.out" && grep -q '^blk.0.attn_q.weight .*model.layers.0.self_attn.q_proj.q_weight I32' "$T/x2.out" \
         && ! grep -q REFUSED "$T/x2.out"; then ok "plan --to exl2 lists what each tensor becomes"
      else bad "plan --to exl2: no per-tensor export listing"; fi
      rm -rf "$T/hx" "$T/hxref"
      if $QLAB quant "$HFM" --plan "$T/x2.ini" --stats "$T/hfs.qls" -o "$T/x2.gguf" >/dev/null 2>"$T/err" \
         && $QLAB quant "$HFM" --plan "$T/x2.ini" --stats "$T/hfs.qls" --to exl2 -o "$T/hx" >/dev/null 2>>"$T/err" \
         && $QLAB convert "$T/x2.gguf" --type f32 -o "$T/hxref" >/dev/null 2>>"$T/err" && [ -n "$PYNP" ] \
         && $PYNP "$(dirname "$0")/decode_hf_quant.py" "$T/hx" "$T/hxref" > "$T/dec" 2>&1; then
        ok "exl2 plan applied, exported and decoded: $(tail -1 "$T/dec")"
      else bad "exl2 plan: quant / export / decode"; sed 's/^/     /' "$T/err" "$T/dec" 2>/dev/null | tail -3; fi
    else bad "exl2 sense / plan"; sed 's/^/     /' "$T/err" | tail -3; fi
  else skip "exl2 plan (tinystories-d256.gguf missing)"; fi
fi

# import (issue 14): every exported folder loads back into the registry format that holds its codes, and
# `qlab ppl` of the folder equals `qlab ppl` of the GGUF export of the same plan (the preview) exactly
# roundtrip_check NAME MODEL TARGET QUANT-ARGS...
roundtrip_check() {
  local name=$1 model=$2 to=$3; shift 3
  rm -rf "$T/rt" "$T/rt.gguf"
  if ! $QLAB quant "$model" "$@" -o "$T/rt.gguf" >/dev/null 2>"$T/err" || ! $QLAB quant "$model" "$@" --to "$to" -o "$T/rt" >/dev/null 2>>"$T/err"; then
    bad "round trip $name: export"; sed 's/^/     /' "$T/err" | head -3; return; fi
  local a b
  a=$($QLAB ppl "$T/rt.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 2>/dev/null | grep -o 'PPL = [0-9.]*')
  b=$($QLAB ppl "$T/rt" --text "$T/text.txt" --ctx 64 --chunks 2 2>"$T/err" | grep -o 'PPL = [0-9.]*')
  if [ -n "$a" ] && [ "$a" = "$b" ] && ! grep -q "decoded to F32" "$T/err"; then ok "round trip $name: $b both"
  else bad "round trip $name: preview '$a', folder '$b'"; sed 's/^/     /' "$T/err" | grep -v '^ *ppl:' | head -3; fi
}
if [ -f "$SHARED/models/tinystories-d256.gguf" ] && [ -f "$SHARED/models/stories260K.gguf" ]; then
  D256=$SHARED/models/tinystories-d256.gguf; S260=$SHARED/models/stories260K.gguf
  roundtrip_check "d256 gptq int4_g128 (asym)" "$D256" gptq --type int4_g128
  roundtrip_check "d256 bnb nf4" "$D256" bnb --type nf4
  $QLAB quant "$S260" --type int4_g32_sym --dry-run --save-plan "$T/s260.ini" >/dev/null 2>&1
  sed -i '/ffn_/d' "$T/s260.ini" # 172-wide FFN rows: gptq refuses them, so the plan keeps them in float
  roundtrip_check "260K gptq int4_g32_sym (ffn float)" "$S260" gptq --plan "$T/s260.ini"
  roundtrip_check "260K compressed-tensors fp8_e4m3_channel" "$S260" compressed-tensors --type fp8_e4m3_channel
  # EXL2 folders load back into the exl2_* entry whose group layout they have (q/k outputs back in GGUF order)
  sed 's/= int4_g32_sym$/= exl2_4b32/' "$T/s260.ini" > "$T/s260x.ini"
  roundtrip_check "260K exl2_4b32 (ffn float)" "$S260" exl2 --plan "$T/s260x.ini"
  roundtrip_check "d256 bnb LLM.int8 (bnb_int8)" "$D256" bnb --type bnb_int8
  # nvfp4-pack-quantized loads back as nvfp4. token_embd/output stay float in the plan: a folder keeps them as exact
  # F32, and llama.cpp's activation rounding for a ggml-type output (the preview's) would differ from F32's
  $QLAB quant "$D256" --type nvfp4 --dry-run --save-plan "$T/nv.ini" >/dev/null 2>&1
  sed -i -e '/^output\.weight/d' -e '/^token_embd/d' "$T/nv.ini"
  roundtrip_check "d256 compressed-tensors nvfp4 (nvfp4-pack-quantized)" "$D256" compressed-tensors --plan "$T/nv.ini"
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "further import round trips (QL_QUICK=1; test_hf_quant covers every layout)"
  else
    roundtrip_check "d256 awq int4_g64" "$D256" awq --type int4_g64
    roundtrip_check "d256 compressed-tensors int8_tensor" "$D256" compressed-tensors --type int8_tensor
    roundtrip_check "d256 gptq int3_g64_sym" "$D256" gptq --type int3_g64_sym
    roundtrip_check "d256 gptq int8_channel" "$D256" gptq --type int8_channel
    roundtrip_check "d256 compressed-tensors int4_g32_sym" "$D256" compressed-tensors --type int4_g32_sym
    roundtrip_check "d256 compressed-tensors fp8_e4m3" "$D256" compressed-tensors --type fp8_e4m3
    roundtrip_check "d256 compressed-tensors W8A8 fp8 dynamic" "$D256" compressed-tensors --type fp8_e4m3_channel --act fp8_token
    roundtrip_check "d256 bnb fp4" "$D256" bnb --type fp4
    [ -f "$T/dq.ini" ] && roundtrip_check "d256 bnb nf4_dq (q/k float)" "$D256" bnb --plan "$T/dq.ini"
    [ -f "$T/mixact.ini" ] && [ -f "$T/hfs.qls" ] && roundtrip_check "d256 compressed-tensors mixed plan + activations" "$D256" compressed-tensors --plan "$T/mixact.ini" --stats "$T/hfs.qls"
    roundtrip_check "260K compressed-tensors int8_channel" "$S260" compressed-tensors --type int8_channel
    [ -f "$T/hfs.qls" ] && roundtrip_check "d256 exl2 6b/3b/2b mix, --method exl2 (permuted inputs)" "$D256" exl2 --type exl2_5x6b32_20x3b64_75x2b64 --method exl2 --stats "$T/hfs.qls"
    # GPTQ's act order: columns processed by decreasing Hessian diagonal, groups still k/g (desc_act true)
    roundtrip_check "d256 gptq act_order=1" "$D256" gptq --type int4_g128 --method gptq --method-opts act_order=1 --text "$T/text.txt" --ctx 64
    if grep -q '"desc_act": true' "$T/rt/config.json" 2>/dev/null; then ok "gptq act_order=1 export says desc_act: true"
    else bad "gptq act_order=1 export lacks desc_act: true"; fi
  fi
  if $QLAB quant "$D256" --type int4_g128 --to gptq -o "$T/rtinfo" >/dev/null 2>&1 && $QLAB info "$T/rtinfo" 2>/dev/null | grep -q 'blk.0.attn_q.weight .*int4_g128 '; then
    ok "qlab info on a gptq folder shows int4_g128"; else bad "qlab info on a gptq folder"; fi
  # a folder with a quantized part it cannot explain: one line naming the folder and the tensor
  if [ -d "$T/rtinfo" ]; then
    sed -i 's/"bits": 4/"bits": 8/' "$T/rtinfo/config.json"
    expect_error "gptq folder whose bits disagree with its tensors" "qweight" $QLAB info "$T/rtinfo"
    sed -i 's/"quant_method": "gptq"/"quant_method": "hqq"/' "$T/rtinfo/config.json"
    expect_error "unknown quant_method" "quant_method 'hqq'" $QLAB info "$T/rtinfo"
  fi
else skip "import round trips (tinystories-d256 / stories260K missing)"; fi

# issue 11: the architecture variants through `qlab convert` both ways (identical logits), and a
# Hugging Face folder qlab cannot take: one line naming the folder and what is wrong
AV=$SHARED/testdata/arch-variants
if [ -d "$SHARED" ] && [ ! -f "$AV/llama3.gguf" ]; then bad "$AV/llama3.gguf missing from the shared folder"
elif [ -f "$AV/llama3.gguf" ]; then
  for m in llama3 qwen2 qwen3 gemma2 gemma3 phi3; do
    if ! $QLAB info "$AV/$m.gguf" >/dev/null 2>"$T/err"; then skip "convert $m: $(head -1 "$T/err")"; continue; fi
    if $QLAB convert "$AV/$m.gguf" -o "$T/hf-$m" >/dev/null 2>"$T/err" && $QLAB convert "$T/hf-$m" -o "$T/back-$m.gguf" >/dev/null 2>>"$T/err" \
       && $QLAB logits "$AV/$m.gguf" --tokens "$AV/tokens.txt" -o "$T/l0-$m.f32" 2>>"$T/err" \
       && $QLAB logits "$T/hf-$m" --tokens "$AV/tokens.txt" -o "$T/l1-$m.f32" 2>>"$T/err" \
       && $QLAB logits "$T/back-$m.gguf" --tokens "$AV/tokens.txt" -o "$T/l2-$m.f32" 2>>"$T/err" \
       && cmp -s "$T/l0-$m.f32" "$T/l1-$m.f32" && cmp -s "$T/l0-$m.f32" "$T/l2-$m.f32"; then
      ok "convert $m: GGUF -> HF folder -> GGUF, identical logits"
    else bad "convert $m round trip"; sed 's/^/     /' "$T/err" | head -3; fi
  done
  mkdir -p "$T/hf-mamba"
  printf '{"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 64}\n' > "$T/hf-mamba/config.json"
  cp "$T/hf-llama3/model.safetensors" "$T/hf-mamba/" 2>/dev/null
  expect_error "HF folder of an unsupported architecture" "MambaForCausalLM" $QLAB info "$T/hf-mamba"
  if [ -d "$T/hf-llama3" ] && command -v python3 >/dev/null; then
    cp -r "$T/hf-llama3" "$T/hf-dyn"
    python3 - "$T/hf-dyn/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
json.dump(c, open(sys.argv[1], "w"))
PY
    expect_error "HF rope_scaling type not implemented" "'dynamic'" $QLAB info "$T/hf-dyn"
    # the same folder with one tensor taken out of model.safetensors
    cp -r "$T/hf-llama3" "$T/hf-cut"
    python3 - "$T/hf-cut/model.safetensors" "model.layers.1.mlp.up_proj.weight" <<'PY'
import json, struct, sys
path, drop = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
meta = hdr.pop("__metadata__", None); del hdr[drop]
out, blobs, off = {}, [], 0
for k, v in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = v["data_offsets"]; blobs.append(data[a:b]); out[k] = dict(v, data_offsets=[off, off + b - a]); off += b - a
if meta is not None: out["__metadata__"] = meta
h = json.dumps(out).encode(); h += b" " * (-len(h) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
PY
    expect_error "HF folder missing a tensor names it" "model.layers.1.mlp.up_proj.weight" $QLAB info "$T/hf-cut"
  fi
fi

# issue 17: allocations sized by flags and method options are checked against the memory budget before they
# are made: one line naming the option, the need and what to lower; exit 1, nothing written
if [ -f "$T/tiny.gguf" ]; then
  rm -f "$T/mem.gguf"
  QL_MEM_BUDGET_MB=4 $QLAB stats "$T/tiny.gguf" --calib "$T/text.txt" --samples 100000 --len 64 -o "$T/mem.qls" >/dev/null 2>"$T/err"; rc=$?
  if [ $rc -eq 1 ] && grep -q "^qlab stats: --samples 100000 x --len 64 (the calibration token table) needs 30.52 MiB" "$T/err" \
     && [ "$(wc -l < "$T/err")" -eq 1 ]; then ok "--samples x --len beyond the budget: one line with the need"
  else bad "calibration size check: rc $rc"; sed 's/^/     /' "$T/err" | head -3; fi
  expect_error "stats Hessians x --threads beyond the budget" "use fewer --threads, or --no-hessian" \
    env QL_MEM_BUDGET_MB=2 $QLAB stats "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 4 --threads 4 -o "$T/mem.qls"
  if $QLAB stats "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --threads 1 -o "$T/mem.qls" >/dev/null 2>&1; then
    expect_error "gptq block= x --threads beyond the budget" "block=256 x 16 workers" \
      env QL_MEM_BUDGET_MB=8 $QLAB quant "$T/tiny.gguf" --type int4_g32 --method gptq --stats "$T/mem.qls" --method-opts block=256 --threads 16 -o "$T/mem.gguf"
    expect_error "aqlm_1x16 codebook table beyond the budget" "a 1x2^16 codebook table over 96 groups" \
      env QL_MEM_BUDGET_MB=16 $QLAB quant "$T/tiny.gguf" --type aqlm_1x16 --method aqlm --stats "$T/mem.qls" -o "$T/mem.gguf"
    if [ ! -e "$T/mem.gguf" ]; then ok "memory refusals write nothing"; else bad "a memory refusal left $T/mem.gguf"; fi
  else bad "stats for the memory checks"; fi
fi

# KV cache schemes (issue 12): stories260K's head dimension of 8 cannot hold a 32-block type (llama.cpp refuses
# it too) but takes a per-channel scheme; unknown schemes are one line; memory at a context is printed; on
# tinystories-d256 (a few chunks) the KLD against the float cache is printed and ordered as llama.cpp's
# (q8_0 < q8_0:q4_0 < q4_0), and q8_0 moves PPL by less than 0.1 %. Full-run figures vs llama.cpp are in
# docs/results.md.
expect_error "ppl --kv unknown scheme" "unknown KV cache scheme 'q3_x'" $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --kv q3_x
expect_error "info --kv needs --ctx" "--kv needs --ctx" $QLAB info "$T/tiny.gguf" --kv q8_0
if $QLAB info "$T/tiny.gguf" --no-tensors --ctx 4096 --batch 2 --kv q8_0:q4_0 --json 2>/dev/null | grep -q '"q8_0:q4_0": '; then
  ok "info --ctx --kv prints the KV cache bytes"; else bad "info --ctx --kv"; fi
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  expect_error "ppl --kv q8_0 refused on head dim 8" "needs a head dimension that is a multiple of 32, this model's is 8" \
    $QLAB ppl "$SHARED/models/stories260K.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --kv q8_0
  expect_error "ppl --kv q8_0:q4_0 refused on head dim 8" "multiple of 32" \
    $QLAB ppl "$SHARED/models/stories260K.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --kv q8_0:q4_0
  if $QLAB ppl "$SHARED/models/stories260K.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 2 \
       --kv int8_channel_g32 2>/dev/null | grep -q "KLD mean"; then ok "stories260K takes a per-channel KV scheme"
  else bad "stories260K --kv int8_channel_g32"; fi
fi
if [ -f "$SHARED/models/tinystories-d256.gguf" ]; then
  M=$SHARED/models/tinystories-d256.gguf
  n=40; [ "${QL_QUICK:-0}" = 1 ] && n=8
  $QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks $n --save-logits "$T/kvb.qlp" --json >"$T/kvb.json" 2>/dev/null
  kvrun() { $QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks $n --kv "$1" --kld-base "$T/kvb.qlp" --json 2>/dev/null; }
  j8=$(kvrun q8_0); j84=$(kvrun q8_0:q4_0); j4=$(kvrun q4_0)
  get() { echo "$1" | sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p"; }
  p0=$(get "$(cat "$T/kvb.json")" ppl); p8=$(get "$j8" ppl); k8=$(get "$j8" kld_mean); k84=$(get "$j84" kld_mean); k4=$(get "$j4" kld_mean)
  if awk -v a="$p0" -v b="$p8" -v k8="$k8" -v k84="$k84" -v k4="$k4" \
       'BEGIN { d = (b - a) / a; exit !(d < 0.001 && d > -0.001 && k8 > 0 && k8 < 1e-4 && k8 < k84 && k84 < k4 && k4 < 0.02) }'; then
    ok "tinystories-d256 --kv over $n chunks: PPL $p0 -> q8_0 $p8, KLD q8_0 $k8 < q8_0:q4_0 $k84 < q4_0 $k4"
  else bad "tinystories-d256 --kv: PPL $p0 -> $p8, KLD q8_0 '$k8' q8_0:q4_0 '$k84' q4_0 '$k4'"; fi
  if echo "$j4" | grep -q '"kv": "q4_0", "kv_bytes": 147456,'; then ok "ppl --kv reports the cache's bytes (q4_0, ctx 256: 147456)"
  else bad "ppl --kv q4_0 bytes: $(echo "$j4" | grep -o '"kv_bytes": [0-9]*')"; fi
  # without --kld-base, the float pass runs first and the KLD is printed
  if $QLAB ppl "$M" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 2 --kv kivi4 2>/dev/null | grep -q "KLD mean"; then
    ok "ppl --kv alone prints the KLD against the float cache"; else bad "ppl --kv without --kld-base: no KLD"; fi
fi
# KV settings in the plan (issue 12): a plan's [kv] is written into the file (qlab.kv.*), qlab info prints llama.cpp's
# flags (or why there are none), qlab ppl on the file runs the cache without flags and gives the figures of --kv;
# compressed-tensors gets kv_cache_scheme; a scheme the head dimension cannot hold and an unknown one are refused.
if [ -f "$SHARED/models/tinystories-d256.gguf" ]; then
  M=$SHARED/models/tinystories-d256.gguf
  $QLAB quant "$M" --type q8_0 --save-plan "$T/kvp.ini" -o "$T/kvq0.gguf" >/dev/null 2>&1
  { cat "$T/kvp.ini"; printf '\n[kv]\nscheme = q8_0:q4_0\nctx = 4096\n'; } >"$T/kvp2.ini"
  $QLAB quant "$M" --plan "$T/kvp2.ini" -o "$T/kvq.gguf" >/dev/null 2>&1
  if $QLAB info "$T/kvq.gguf" --no-tensors 2>/dev/null | grep -q "llama.cpp: -ctk q8_0 -ctv q4_0 -fa on" &&
     $QLAB info "$T/kvq.gguf" --no-tensors 2>/dev/null | grep -q "at ctx 4096 x 1: KV 3407872 bytes"; then
    ok "info: the plan's KV cache, its memory at ctx 4096 and llama.cpp's flags"
  else bad "info on a file with [kv]"; $QLAB info "$T/kvq.gguf" --no-tensors 2>&1 | tail -4 | sed 's/^/     /'; fi
  kvp() { $QLAB ppl "$@" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 3 --json 2>/dev/null |
          sed 's/"tokens_per_s": [0-9.]*, "seconds": [0-9.]*, //; s/"model": "[^"]*", //'; }
  a=$(kvp "$T/kvq.gguf"); b=$(kvp "$T/kvq0.gguf" --kv q8_0:q4_0)
  if [ -n "$a" ] && [ "$a" = "$b" ] && echo "$a" | grep -q '"kld_mean"'; then ok "ppl FILE runs the plan's KV cache: figures of --kv q8_0:q4_0"
  else bad "ppl on a file with [kv]: '$a' vs '$b'"; fi
  sed 's/^scheme = .*/scheme = kivi4/' "$T/kvp2.ini" >"$T/kvp3.ini"
  $QLAB quant "$M" --plan "$T/kvp3.ini" -o "$T/kvq3.gguf" >/dev/null 2>&1
  if $QLAB info "$T/kvq3.gguf" --no-tensors 2>/dev/null | grep -q "no equivalent: .*qlab-only"; then ok "info: a qlab-only KV scheme has no llama.cpp flags"
  else bad "info on a kivi4 plan"; fi
  sed 's/^scheme = .*/scheme = q3_x/' "$T/kvp2.ini" >"$T/kvp4.ini"
  expect_error "plan [kv] unknown scheme" "kvp4.ini: [kv] scheme: unknown KV cache scheme 'q3_x'" $QLAB quant "$M" --plan "$T/kvp4.ini" -o "$T/x.gguf"
  sed 's/= q8_0$/= int8_channel/; s/^scheme = .*/scheme = q8_0/' "$T/kvp2.ini" >"$T/kvp5.ini"
  if $QLAB quant "$M" --plan "$T/kvp5.ini" --to compressed-tensors -o "$T/kvct" >/dev/null 2>&1 &&
     python3 -c "import json,sys; k=json.load(open(sys.argv[1]))['quantization_config']['kv_cache_scheme']; sys.exit(not (k['num_bits']==8 and k['type']=='int' and k['group_size']==32))" "$T/kvct/config.json"; then
    ok "compressed-tensors: kv_cache_scheme from the plan"; else bad "compressed-tensors kv_cache_scheme"; fi
  sed 's/^scheme = .*/scheme = q8_0:q4_0/' "$T/kvp5.ini" >"$T/kvp6.ini"
  expect_error "compressed-tensors refuses K and V schemes that differ" "kv_cache_scheme is one scheme for K and V" \
    $QLAB quant "$M" --plan "$T/kvp6.ini" --to compressed-tensors -o "$T/kvct2"
fi
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  printf '[tensors]\nblk.0.attn_q.weight = q8_0\n[kv]\nscheme = q8_0\n' >"$T/kvp7.ini"
  expect_error "plan [kv] a head of 8 cannot hold q8_0" "multiple of 32" $QLAB quant "$SHARED/models/stories260K.gguf" --plan "$T/kvp7.ini" -o "$T/x.gguf"
fi
# QuIP# (issue 13): refusals name the reason, LDLQ beats rounding in the rotated basis, the file says llama.cpp
# cannot load it (tinystories-d256; 20 chunks of KLD, 16 chunks of calibration)
QM=$SHARED/models/tinystories-d256.gguf
if [ -f "$QM" ] && [ -f "$SHARED/data/wikitext-2-valid.raw" ]; then
  QCAL="--text $SHARED/data/wikitext-2-valid.raw --ctx 256 --chunks 16"
  expect_error "quip needs calibration" "calibration" $QLAB quant "$QM" --type e8p --method quip -o "$T/x.gguf"
  expect_error "quip writes only e8p*" "e8p" $QLAB quant "$QM" --type q4_k --method quip $QCAL -o "$T/x.gguf"
  expect_error "e8p refuses 172 rows with the reason" "no Hadamard matrix of order 172" $QLAB quant "$SHARED/models/stories260K.gguf" --type e8p -o "$T/x.gguf"
  # quantizing the whole model into e8p twice is minutes under the sanitizers; test_quip runs the codec and LDLQ
  if [ "${QL_QUICK:-0}" = 1 ]; then skip "e8p and quip on tinystories-d256 (QL_QUICK=1: the plain pass runs them)"
  else
  $QLAB quant "$QM" --type e8p -o "$T/e8p.gguf" >/dev/null 2>&1
  $QLAB quant "$QM" --type e8p --method quip $QCAL -o "$T/e8pq.gguf" >/dev/null 2>&1
  if $QLAB info "$T/e8pq.gguf" 2>/dev/null | grep -q "llama.cpp cannot run it"; then ok "info: llama.cpp cannot load e8p"; else bad "info on e8p"; fi
  $QLAB ppl "$QM" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 20 --save-logits "$T/q20.qlp" >/dev/null 2>&1
  kld20() { $QLAB ppl "$1" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --chunks 20 --kld-base "$T/q20.qlp" --json 2>/dev/null | sed -n 's/.*"kld_mean": \([0-9.e-]*\).*/\1/p'; }
  kr=$(kld20 "$T/e8p.gguf"); kq=$(kld20 "$T/e8pq.gguf")
  if awk -v r="$kr" -v q="$kq" 'BEGIN { exit !(q < r && q > 0) }'; then ok "e8p KLD: quip (LDLQ) $kq < rounding $kr"
  else bad "e8p KLD: quip '$kq' vs rounding '$kr'"; fi
  fi
fi

# fused projections (Phi-3's attn_qkv, gate+up ffn_up): QAT's trained parts are written back into the fused tensor
# at their rows (a ~zero learning rate exports what plain rounding does), and AWQ runs through its fused layers
P3="$SHARED/testdata/arch-variants/phi3.gguf"
if [ -f "$P3" ]; then
  pp() { $QLAB ppl "$1" --text "$SHARED/data/tinystories-valid.txt" --ctx 64 --chunks 4 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.e+-]*\).*/\1/p'; }
  $QLAB qat "$P3" --type int4_g32 --text "$SHARED/data/tinystories-valid.txt" --ctx 32 --steps 1 --lr 1e-30 -o "$T/p3qat.gguf" >/dev/null 2>"$T/err"
  $QLAB quant "$P3" --type int4_g32 -o "$T/p3rtn.gguf" >/dev/null 2>&1
  a=$(pp "$T/p3qat.gguf"); b=$(pp "$T/p3rtn.gguf")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "qat on phi3 (fused qkv, gate+up), lr 1e-30: the RTN model's PPL $a"
  else bad "qat on phi3: PPL '$a' vs RTN '$b'"; sed 's/^/     /' "$T/err" | tail -2; fi
  $QLAB stats "$P3" --text "$SHARED/data/tinystories-valid.txt" --ctx 64 --chunks 4 -o "$T/p3.qls" >/dev/null 2>&1
  if $QLAB quant "$P3" --type int4_g32 --method awq --stats "$T/p3.qls" --to awq -o "$T/p3awq" >/dev/null 2>"$T/err" \
     && [ -n "$(pp "$T/p3awq")" ]; then ok "awq on phi3's fused layers, exported as an AWQ folder that loads back"
  else bad "awq on phi3's fused layers"; sed 's/^/     /' "$T/err" | tail -2; fi
fi

# qlab qat: refusals in one line, a short run exporting a file, the same bytes for the same seed
if [ -f "$T/tiny.gguf" ]; then
  expect_error "qat lr 0" "learning rate" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --lr 0 -o "$T/qat.gguf"
  expect_error "qat lr nan" "learning rate" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --lr nan -o "$T/qat.gguf"
  expect_error "qat format without a straight-through path" "straight-through" $QLAB qat "$T/tiny.gguf" --type iq2_xxs --text "$T/text.txt" --ctx 64 --steps 2 -o "$T/qat.gguf"
  expect_error "qat text shorter than one sequence" "fewer than one chunk" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/notamodel.txt" --ctx 64 --steps 2 -o "$T/qat.gguf"
  expect_error "qat --resume without a checkpoint" "--checkpoint" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --resume -o "$T/qat.gguf"
  expect_error "qat --lsq without an INT format" "--lsq" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --lsq -o "$T/qat.gguf"
  expect_error "qat --recompute bogus" "--recompute" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --recompute maybe -o "$T/qat.gguf"
  expect_error "qat --kv with a residual window" "residual" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 --kv int8_token_g32_r16 -o "$T/qat.gguf"
  expect_error "qat --tune codebooks without a tunable format" "continuous parameters" $QLAB qat "$T/tiny.gguf" --type q4_0 --tune codebooks --text "$T/text.txt" --ctx 64 --steps 2 -o "$T/qat.gguf"
  expect_error "qat --tune bogus" "norms, scales and codebooks" $QLAB qat "$T/tiny.gguf" --type q4_0 --tune bogus --text "$T/text.txt" --ctx 64 --steps 2 -o "$T/qat.gguf"
  expect_error "qat two training texts" "one of --text" $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --self-text 4 --steps 2 -o "$T/qat.gguf"
  if $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 1 -o "$T/qat.gguf" --dry-run 2>/dev/null | grep -q "activations recomputed"; then
    ok "qat --dry-run prints the memory with and without recompute"
  else bad "qat --dry-run"; fi
  if $QLAB qat "$T/tiny.gguf" --type q4_0 --self-text 3 --ctx 32 --steps 2 --threads 1 --save-text "$T/self.bin" -o "$T/self1.gguf" 2>/dev/null \
     && $QLAB qat "$T/tiny.gguf" --type q4_0 --self-text 3 --ctx 32 --steps 2 --threads 1 --save-text "$T/self.bin" -o "$T/self2.gguf" 2>"$T/self.err" \
     && grep -q "read from" "$T/self.err" && cmp -s "$T/self1.gguf" "$T/self2.gguf"; then
    ok "qat --self-text: sampled text cached and reused, same result"
  else bad "qat --self-text"; sed 's/^/     /' "$T/self.err" | tail -3; fi
  if $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 3 --threads 1 --checkpoint "$T/qat.ckpt" -o "$T/qat1.gguf" 2>"$T/qat.err" \
     && $QLAB qat "$T/tiny.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 3 --threads 1 -o "$T/qat2.gguf" 2>/dev/null \
     && grep -q "held-out KLD" "$T/qat.err" && [ -s "$T/qat.ckpt" ] && $QLAB info "$T/qat1.gguf" >/dev/null 2>&1; then
    if cmp -s "$T/qat1.gguf" "$T/qat2.gguf"; then ok "qat: a short run exports, checkpoints, and repeats byte for byte"
    else bad "qat: two runs with one seed and one thread differ"; fi
  else bad "qat: a short run failed"; sed 's/^/     /' "$T/qat.err" | tail -3; fi
  # --teacher: tuning the scales of a QAT export against the float original; another geometry is refused
  if [ -f "$T/qat1.gguf" ] && $QLAB qat "$T/qat1.gguf" --teacher "$T/tiny.gguf" --tune scales --type q4_0 --text "$T/text.txt" --ctx 64 \
       --steps 2 --threads 1 -o "$T/qat1t.gguf" 2>"$T/qatt.err" && grep -q "held-out KLD" "$T/qatt.err"; then
    ok "qat --teacher: scales of a QAT export tuned against the float model"
  else bad "qat --teacher"; sed 's/^/     /' "$T/qatt.err" | tail -3; fi
  [ -f "$SHARED/models/stories260K.gguf" ] && expect_error "qat --teacher of another geometry" "geometry" $QLAB qat "$T/tiny.gguf" \
    --teacher "$SHARED/models/stories260K.gguf" --type q4_0 --text "$T/text.txt" --ctx 64 --steps 2 -o "$T/qat.gguf"
fi

# --device (issue 16): every command that runs the model takes it; cpu works everywhere; cuda without a GPU (or in a
# build without the CUDA backend) is one line and a non-zero exit; the workbench's header (and its idle status
# line, tests/data/tui) names the device.
if [ -f "$T/tiny.gguf" ]; then
  dbad=0
  for c in ppl stats sense quant qat tui; do $QLAB $c --help | grep -q -- "--device cpu|cuda" || { dbad=1; echo "     $c --help lacks --device"; }; done
  pd=$($QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --threads 1 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  pc=$($QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --threads 1 --json --device cpu 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  [ -n "$pc" ] && [ "$pc" = "$pd" ] || { dbad=1; echo "     ppl --device cpu '$pc' vs default '$pd'"; }
  $QLAB stats "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 2 --device cpu -o "$T/dev.qls" >/dev/null 2>&1 || { dbad=1; echo "     stats --device cpu failed"; }
  $QLAB tui "$T/tiny.gguf" --device cpu --keys "" --size 140x24 2>/dev/null | head -1 | grep -q "tiny.gguf │ cpu *$" || { dbad=1; echo "     tui header lacks the device"; }
  if [ $dbad -eq 0 ]; then ok "--device cpu on ppl/stats/tui (same PPL $pc as the default), in every --help, in the TUI header"; else bad "--device cpu"; fi
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then skip "--device cuda refusal (this machine has a GPU)"
  else
    for c in "ppl" "stats -o $T/x.qls"; do # both run the model, so a backend that finds no device at create() fails too
      $QLAB $c "$T/tiny.gguf" --text "$T/text.txt" --ctx 64 --chunks 1 --device cuda >/dev/null 2>"$T/err"; rc=$?; c=${c%% *}
      if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(wc -l < "$T/err")" -eq 1 ] && grep -qi "cuda" "$T/err"; then ok "$c --device cuda without a GPU: exit $rc, '$(cut -c1-90 "$T/err")...'"
      else bad "$c --device cuda without a GPU: exit $rc"; sed 's/^/     /' "$T/err" | head -3; fi
    done
  fi
  expect_error "--device cpu:1 refused" "no device 1" $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --device cpu:1
  expect_error "--device of an unknown backend names the known ones" "known: cpu" $QLAB ppl "$T/tiny.gguf" --text "$T/text.txt" --device tpu
fi

# qlab sense over MPI ranks (issue 16): mpirun -np 2 writes the bytes one process writes, but for the seconds line
# (wall time, different in any two runs); a job whose rank 1 is killed leaves a checkpoint the same command resumes
# from; qlab stats over 2 ranks writes one process's file; commands that do not share their work refuse mpirun.
SM=$SHARED/models/tinystories-d256.gguf
if [ -f "$SM" ]; then
  if ! command -v mpirun >/dev/null; then skip "sense under mpirun: no mpirun here (bash scripts/deps.sh installs Open MPI)"
  else
    export OMPI_MCA_btl_vader_single_copy_mechanism=none # containers forbid the cross-memory attach it tries first
    # under ASan: Open MPI's own allocations at MPI_Init are not qlab's leaks (tests/lsan_mpi.supp)
    export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$(dirname "$(readlink -f "$0")")/lsan_mpi.supp:fast_unwind_on_malloc=0"
    MPIRUN="mpirun --allow-run-as-root --oversubscribe -np 2"
    # 3 sequences: the statistics' output-level errors depend on how many workers add them up (2 x 1 = 2 here)
    SARGS="--text $SHARED/data/tinystories-valid.txt --ctx 64 --chunks 3 --candidates q4_0,q8_0"
    noseconds() { grep -v "^seconds" "$1"; }
    # two .qss files alike up to float sums: every line but the seconds the same, the cells' errors within 1e-6
    # relative, KLD within 1e-5 relative above 3e-8 and dPPL within 1e-5 (a resumed run may batch the cells left
    # differently, and OpenBLAS's Haswell sgemm, which some machines force, rounds a row by its place in the batch)
    qss_close() {
      cmp -s <(noseconds "$1" | grep -v "^m	") <(noseconds "$2" | grep -v "^m	") &&
      [ "$(grep -c "^m	" "$1")" = "$(grep -c "^m	" "$2")" ] &&
      paste <(grep "^m	" "$1") <(grep "^m	" "$2") | awk -F'\t' '
        function d(x, y) { return x > y ? x - y : y - x }
        function ab(x) { return x < 0 ? -x : x }
        { n = NF / 2; for (i = 1; i <= 5; i++) if ($i != $(i + n)) bad++
          for (i = 6; i <= 7; i++) if (d($i, $(i + n)) > 1e-6 * ab($i) + 1e-12) bad++
          if (d($8, $(8 + n)) > 1e-5 * ab($8) + 3e-8) bad++
          if (d($9, $(9 + n)) > 1e-5) bad++ }
        END { exit bad > 0 }'
    }
    $QLAB sense "$SM" $SARGS --threads 2 -o "$T/one.qss" >/dev/null 2>&1
    SARGS="$SARGS --threads 1"
    $MPIRUN $QLAB sense "$SM" $SARGS -o "$T/two.qss" >/dev/null 2>"$T/mpi.err"; mrc=$?
    if grep -q "built without MPI" "$T/mpi.err"; then skip "sense under mpirun: this qlab was built without MPI"
    elif [ $mrc -eq 0 ] && [ -s "$T/one.qss" ] && [ -s "$T/two.qss" ] && cmp -s <(noseconds "$T/one.qss") <(noseconds "$T/two.qss"); then
      ok "sense under mpirun -np 2 --threads 1: the .qss of one process with 2 threads, byte for byte (but the seconds line)"
    else bad "sense under mpirun -np 2 (exit $mrc) differs from one process"; sed 's/^/     /' "$T/mpi.err" | tail -4; fi
    # 5 candidates in batched passes of 2: each rank gets whole groups (padded on its last), the same bytes again
    B5="$SARGS --candidates q4_0,q8_0,q5_0,q4_1,q5_1 --cand-batch 2"
    $QLAB sense "$SM" $B5 --threads 2 -o "$T/one5.qss" >/dev/null 2>&1
    $MPIRUN $QLAB sense "$SM" $B5 -o "$T/two5.qss" >/dev/null 2>"$T/mpi.err"; mrc=$?
    if grep -q "built without MPI" "$T/mpi.err"; then :
    elif [ $mrc -eq 0 ] && [ -s "$T/one5.qss" ] && cmp -s <(noseconds "$T/one5.qss") <(noseconds "$T/two5.qss"); then
      ok "sense --cand-batch 2 under mpirun -np 2: one process's .qss, byte for byte (but the seconds line)"
    else bad "sense --cand-batch 2 under mpirun -np 2 (exit $mrc) differs from one process"; sed 's/^/     /' "$T/mpi.err" | tail -4; fi
    expect_error "ppl under mpirun -np 2 is refused" "only 'sense' and 'stats' share their work" $MPIRUN $QLAB ppl "$SM" --text "$T/text.txt"
    # stats: the 3 sequence workers of --threads 3 over 2 ranks add up as in one process with 3 threads
    STARGS="--text $SHARED/data/tinystories-valid.txt --ctx 64 --chunks 5 --threads 3"
    $QLAB stats "$SM" $STARGS -o "$T/one.qls" >/dev/null 2>&1
    $MPIRUN $QLAB stats "$SM" $STARGS -o "$T/two.qls" >/dev/null 2>"$T/mpi.err"; mrc=$?
    if grep -q "built without MPI" "$T/mpi.err"; then :
    elif [ $mrc -eq 0 ] && [ -s "$T/one.qls" ] && cmp -s "$T/one.qls" "$T/two.qls"; then
      ok "stats under mpirun -np 2 --threads 3: the statistics file of one process with 3 threads, byte for byte"
    else bad "stats under mpirun -np 2 (exit $mrc) differs from one process"; sed 's/^/     /' "$T/mpi.err" | tail -4; fi
    if [ "${QL_QUICK:-0}" = 1 ]; then skip "sense: a killed rank, then resume (QL_QUICK=1: timing under the sanitizers)"
    elif grep -q "built without MPI" "$T/mpi.err"; then :
    else # rank 1 is killed once 10 of the 60 cells are in the checkpoint (saved every 50 ms)
      measured() { awk -F'\t' '$1 == "m" && $5 >= 0' "$T/k.qss" 2>/dev/null | wc -l; }
      $MPIRUN $QLAB sense "$SM" $SARGS --checkpoint-every 0.05 -o "$T/k.qss" >/dev/null 2>&1 & mp=$!
      for _ in $(seq 400); do [ "$(measured)" -ge 10 ] && break; sleep 0.05; done
      for p in $(pgrep -P $mp); do grep -qz '^OMPI_COMM_WORLD_RANK=1$' /proc/$p/environ 2>/dev/null && kill -9 $p; done
      wait $mp; krc=$?; kept=$(measured)
      if [ $krc -eq 0 ]; then skip "sense: the job finished before rank 1 was killed"
      elif [ "$kept" -ge 10 ] && [ "$kept" -lt 60 ] \
           && $MPIRUN $QLAB sense "$SM" $SARGS -o "$T/k.qss" 2>"$T/k.err" >/dev/null \
           && grep -q "reusing $kept measured cells" "$T/k.err" && qss_close "$T/one.qss" "$T/k.qss"; then
        ok "sense: rank 1 killed (mpirun exit $krc) leaves $kept of 60 cells; the same command resumes to the same cells"
      else bad "sense: killed-rank resume (exit $krc, $kept cells kept)"; sed 's/^/     /' "$T/k.err" 2>/dev/null | tail -3; fi
    fi
  fi
fi

echo "cli_test: $pass passed, $fail failed, $skipped skipped"
[ $fail -eq 0 ]
