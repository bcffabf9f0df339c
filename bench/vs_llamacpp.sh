#!/usr/bin/env bash
# bench/vs_llamacpp.sh — qlab against llama.cpp's own tools on this machine, back to back, same threads:
# quantize time of each llama.cpp mix (and whether the tensors are byte-identical) and perplexity time.
#   LLAMA_CPP=$(bash scripts/get_llamacpp.sh) bash bench/vs_llamacpp.sh      # or: make bench-vs-llamacpp
# Needs ../shared (stories260K, tinystories-d256 and its imatrix, tinystories-valid). THREADS (default 2),
# OUT (default bench/out). The synthetic llama-3.2-1b F16 (2.5 GB) is made once in OUT, as by `make bench`.
# Ratio columns are llama.cpp's time / qlab's (> 1: qlab is faster).
set -uo pipefail
cd "$(dirname "$0")/.."
QLAB=${QLAB:-./qlab}
SHARED=${QL_SHARED:-../shared}
THREADS=${THREADS:-2}
OUT=${OUT:-bench/out}
L=${LLAMA_CPP:?set LLAMA_CPP to the folder holding llama-quantize and llama-perplexity (scripts/get_llamacpp.sh)}
for b in llama-quantize llama-perplexity; do [ -x "$L/$b" ] || { echo "no $L/$b" >&2; exit 1; }; done
mkdir -p "$OUT"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2fx", a/b; else print "-" }'; }
same() { python3 bench/gguf_tensors_cmp.py "$1" "$2" 2>/dev/null | tail -1; }

printf '%-44s %10s %10s %8s  %s\n' "task" "qlab" "llama.cpp" "ratio" "tensors"
# 1. quantize: every mix on tinystories-d256 (with llama.cpp's imatrix for the i-quants), then the 1B shape
D256=$SHARED/models/tinystories-d256.gguf
IM=$SHARED/models/tinystories-d256-imatrix-wt.gguf
if [ -f "$D256" ]; then
  for T in Q4_0 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_XS IQ2_XXS IQ2_M IQ3_XXS IQ3_M IQ1_S IQ1_M; do
    imat=(); case $T in IQ*) imat=(--imatrix "$IM") ;; esac
    t0=$(now); "$L/llama-quantize" "${imat[@]}" "$D256" "$OUT/lc.gguf" "$T" "$THREADS" >/dev/null 2>&1; t1=$(now)
    "$QLAB" quant "$D256" --preset "$T" "${imat[@]}" --threads "$THREADS" -o "$OUT/ql.gguf" >/dev/null 2>&1; t2=$(now)
    printf '%-44s %9ss %9ss %8s  %s\n' "quant d256 $T${imat:+ +imatrix}" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
      "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "$(same "$OUT/lc.gguf" "$OUT/ql.gguf")"
  done
fi
M1B=$OUT/synth-llama-3.2-1b.gguf
[ -f "$M1B" ] || "$QLAB" synth --shape llama-3.2-1b -o "$M1B" --threads "$THREADS" >/dev/null 2>&1
for T in Q8_0 Q4_0 Q4_K_M Q2_K; do
  t0=$(now); "$L/llama-quantize" "$M1B" "$OUT/lc.gguf" "$T" "$THREADS" >/dev/null 2>&1; t1=$(now)
  "$QLAB" quant "$M1B" --preset "$T" --threads "$THREADS" -o "$OUT/ql.gguf" >/dev/null 2>&1; t2=$(now)
  printf '%-44s %9ss %9ss %8s  %s\n' "quant synth llama-3.2-1b F16 $T" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
    "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "$(same "$OUT/lc.gguf" "$OUT/ql.gguf")"
done
# 2. perplexity: stories260K over all of tinystories-valid at ctx 256; the 1B Q4_K_M (llama.cpp's file) at ctx 512,
#    4 chunks. PPL of each tool beside its time.
TXT=$SHARED/data/tinystories-valid.txt
ppl_of() { sed -n 's/.*PPL = \([0-9.]*\).*/\1/p; s/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$1" | tail -1; }
if [ -f "$SHARED/models/stories260K.gguf" ]; then
  S=$SHARED/models/stories260K.gguf
  t0=$(now); "$L/llama-perplexity" -m "$S" -f "$TXT" -c 256 -t "$THREADS" >"$OUT/lc-ppl.log" 2>&1; t1=$(now)
  "$QLAB" ppl "$S" --text "$TXT" --ctx 256 --threads "$THREADS" >"$OUT/ql-ppl.log" 2>&1; t2=$(now)
  printf '%-44s %9ss %9ss %8s  %s\n' "ppl stories260K ctx 256, all chunks" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
    "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "PPL $(ppl_of "$OUT/ql-ppl.log") vs $(ppl_of "$OUT/lc-ppl.log")"
fi
for T in Q4_K_M Q8_0 F16; do
  m=$M1B
  [ "$T" = F16 ] || { "$L/llama-quantize" "$M1B" "$OUT/lc-1b.gguf" "$T" "$THREADS" >/dev/null 2>&1; m=$OUT/lc-1b.gguf; }
  t0=$(now); "$L/llama-perplexity" -m "$m" -f "$TXT" -c 512 --chunks 4 -t "$THREADS" >"$OUT/lc-ppl.log" 2>&1; t1=$(now)
  "$QLAB" ppl "$m" --text "$TXT" --ctx 512 --chunks 4 --threads "$THREADS" >"$OUT/ql-ppl.log" 2>&1; t2=$(now)
  printf '%-44s %9ss %9ss %8s  %s\n' "ppl synth 1B $T ctx 512 x 4 chunks" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
    "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "PPL $(ppl_of "$OUT/ql-ppl.log") vs $(ppl_of "$OUT/lc-ppl.log")"
done
# the importance matrix of the F16 1B (4 chunks of 512), then that 1B in two lattice i-quants (qlab writes the same
# bytes as llama-quantize; its own imatrix, to keep the time here short) under both perplexity tools
t0=$(now); "$L/llama-imatrix" -m "$M1B" -f "$TXT" -c 512 --chunks 4 -t "$THREADS" -o "$OUT/lc-im.gguf" >/dev/null 2>&1; t1=$(now)
"$QLAB" imatrix "$M1B" --text "$TXT" --ctx 512 --chunks 4 --threads "$THREADS" -o "$OUT/ql-im.gguf" >/dev/null 2>&1; t2=$(now)
printf '%-44s %9ss %9ss %8s\n' "imatrix synth 1B F16 ctx 512 x 4 chunks" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
  "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")"
for T in IQ2_XXS IQ3_S; do
  "$QLAB" quant "$M1B" --preset "$T" --imatrix "$OUT/ql-im.gguf" --threads "$THREADS" -o "$OUT/lc-1b.gguf" >/dev/null 2>&1
  t0=$(now); "$L/llama-perplexity" -m "$OUT/lc-1b.gguf" -f "$TXT" -c 512 --chunks 4 -t "$THREADS" >"$OUT/lc-ppl.log" 2>&1; t1=$(now)
  "$QLAB" ppl "$OUT/lc-1b.gguf" --text "$TXT" --ctx 512 --chunks 4 --threads "$THREADS" >"$OUT/ql-ppl.log" 2>&1; t2=$(now)
  printf '%-44s %9ss %9ss %8s  %s\n' "ppl synth 1B $T ctx 512 x 4 chunks" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
    "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "PPL $(ppl_of "$OUT/ql-ppl.log") vs $(ppl_of "$OUT/lc-ppl.log")"
done
rm -f "$OUT/lc.gguf" "$OUT/ql.gguf" "$OUT/lc-1b.gguf" "$OUT/lc-im.gguf" "$OUT/ql-im.gguf"
# MODEL IMATRIX MIX...: "K of N" mixes where qlab quant --preset and llama-quantize write the same tensors (the
# imatrix for the mixes that need one; a mix llama-quantize refuses is not counted), and which differ
mixes_identical() {
  local model=$1 im=$2 same_n=0 n=0 differ="" T
  shift 2
  for T in "$@"; do
    local imat=(); case $T in Q2_K_S|IQ3_XS|IQ2_*|IQ1_*|IQ3_XXS) imat=(--imatrix "$im") ;; esac
    "$L/llama-quantize" "${imat[@]}" "$model" "$OUT/lc.gguf" "$T" "$THREADS" >/dev/null 2>&1 || continue
    "$QLAB" quant "$model" --preset "$T" "${imat[@]}" --threads "$THREADS" -o "$OUT/ql.gguf" >/dev/null 2>&1
    n=$((n + 1))
    if same "$OUT/lc.gguf" "$OUT/ql.gguf" | grep -q " 0 differ, 0 other"; then same_n=$((same_n + 1)); else differ="$differ $T"; fi
  done
  echo "$same_n of $n${differ:+ (differ:$differ)}"
}
# LABEL SHAPE DIMS MIX...: synthesize the shape, make llama.cpp's imatrix of it, print mixes_identical's line
shape_mixes() {
  local label=$1 shape=$2 dims=$3 model=$OUT/mixes-$2.gguf
  shift 3
  "$QLAB" synth --shape "$shape" --dims "$dims" -o "$model" >/dev/null 2>&1
  "$L/llama-imatrix" -m "$model" -f "$TXT" -c 128 --chunks 8 -t "$THREADS" -o "$OUT/mixes-im.gguf" >/dev/null 2>&1
  printf '%-44s %s\n' "quant $label $shape: mixes byte-identical" "$(mixes_identical "$model" "$OUT/mixes-im.gguf" "$@")"
  rm -f "$model" "$OUT/mixes-im.gguf"
}
# LABEL MODEL NOTE [LLAMA-PERPLEXITY FLAGS]: seconds of qlab ppl and llama-perplexity over 4 chunks of 512, side by side
ppl_side_by_side() {
  local label=$1 model=$2 note=$3 t0 t1 t2
  shift 3
  t0=$(now); "$L/llama-perplexity" -m "$model" -f "$TXT" -c 512 --chunks 4 -t "$THREADS" "$@" >"$OUT/lc-ppl.log" 2>&1; t1=$(now)
  "$QLAB" ppl "$model" --text "$TXT" --ctx 512 --chunks 4 --threads "$THREADS" >"$OUT/ql-ppl.log" 2>&1; t2=$(now)
  printf '%-44s %9ss %9ss %8s  %s\n' "$label" "$(secs "$t1" "$t2")" "$(secs "$t0" "$t1")" \
    "$(ratio "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")")" "PPL $(ppl_of "$OUT/ql-ppl.log") vs $(ppl_of "$OUT/lc-ppl.log") $note"
}
# 2b. mixtures of experts: every mix on small Mixtral, Qwen3-MoE, Qwen1.5-MoE (shared experts) and OLMoE shapes, the
#     i-quants with llama.cpp's imatrix of each (tensors must be byte-identical; IQ1_M differs by the known search
#     change; expert counts cut to keep llama-quantize's i-quants to minutes), then perplexity time on a
#     Qwen3-30B-A3B shape cut to 6 layers in llama.cpp's Q4_K_M
for spec in "mixtral-8x7b layers=8,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "qwen3-30b-a3b layers=8,embd=256,heads=8,kv=2,head_dim=64,ff_exp=256,vocab=1024,experts=32" \
            "qwen1.5-moe-a2.7b layers=8,embd=256,heads=8,kv=8,ff=512,ff_exp=256,ff_shexp=512,vocab=1024,experts=16" \
            "olmoe-1b-7b layers=8,embd=256,heads=8,kv=8,ff=256,vocab=1024,experts=16"; do
  set -- $spec
  shape_mixes MoE "$1" "$2" Q4_0 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_M Q6_K IQ4_XS IQ4_NL IQ3_S IQ3_M \
    MXFP4_MOE Q2_K_S IQ3_XS IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ1_S IQ3_XXS
done
MQ=$OUT/moe-q30.gguf
"$QLAB" synth --shape qwen3-30b-a3b --dims layers=6,vocab=32000 --threads "$THREADS" -o "$MQ" >/dev/null 2>&1
"$L/llama-quantize" "$MQ" "$OUT/lc.gguf" Q4_K_M "$THREADS" >/dev/null 2>&1
ppl_side_by_side "ppl Qwen3-30B-A3B shape, 6 layers, Q4_K_M" "$OUT/lc.gguf" "(F32 vs F16 KV cache)"
rm -f "$MQ" "$OUT/lc.gguf" "$OUT/ql.gguf"
# 2c. the architectures of session 11 (Granite, Granite-MoE, OLMo 2/3, SmolLM3, EXAONE, Ministral 3, ERNIE 4.5,
#     Seed-OSS, GLM-4, Command R7B, EXAONE 4, GLM-4.5, gpt-oss): a set of mixes on 256-wide versions of their test shapes must be byte-identical (the
#     i-quants with llama.cpp's imatrix), then perplexity time on a 2-layer gpt-oss-20b shape with MXFP4 experts
for spec in "tiny-granite layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-granitemoe layers=4,embd=256,heads=8,kv=2,ff=256,vocab=1024" \
            "tiny-olmo2 layers=4,embd=256,heads=8,kv=8,ff=512,vocab=1024" \
            "tiny-smollm3 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-exaone layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-mistral3 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-ernie4_5 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-seed_oss layers=4,embd=256,heads=8,kv=2,head_dim=64,ff=512,vocab=1024" \
            "tiny-glm4 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-cohere2 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-exaone4 layers=4,embd=256,heads=8,kv=2,ff=512,vocab=1024" \
            "tiny-glm4moe layers=4,embd=256,heads=8,kv=2,head_dim=64,ff=512,ff_exp=256,ff_shexp=256,experts=16,vocab=1024" \
            "tiny-gptoss layers=4,embd=256,heads=8,kv=2,head_dim=64,ff=256,ff_exp=256,vocab=1024"; do
  set -- $spec
  shape_mixes arch "$1" "$2" Q4_0 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_XS IQ4_NL MXFP4_MOE IQ2_XS IQ3_XXS
done
MG=$OUT/gptoss.gguf
"$QLAB" synth --shape gpt-oss-20b --dims layers=2,experts=8,vocab=2048 --threads "$THREADS" -o "$MG" >/dev/null 2>&1
"$L/llama-quantize" "$MG" "$OUT/lc.gguf" MXFP4_MOE "$THREADS" >/dev/null 2>&1
ppl_side_by_side "ppl gpt-oss-20b shape, 2 layers, MXFP4_MOE" "$OUT/lc.gguf" "(F32 KV both)" -fa off -ctk f32 -ctv f32
rm -f "$MG" "$OUT/lc.gguf" "$OUT/ql.gguf"
# 3. the BPE pre-tokenizers: llama-tokenize and `qlab tokenize` on one text through a small byte-level vocabulary,
#    once per tokenizer.ggml.pre name qlab knows (the token ids must be the same lists)
if [ -x "$L/llama-tokenize" ] && [ -f "$SHARED/models/stories260K.gguf" ]; then
  TT=$OUT/pre-text.txt
  printf "Hello World! it's 12345 and 3.14159, x 12\nCamelCaseWord HTTPServer na\xc3\xafve caf\xc3\xa9 \xc3\x9cn\xc3\xafc\xc3\xb6d\xc3\xa9\n  multiple   spaces\t\ttabs\r\nnew\n\nlines \xe4\xb8\xad\xe6\x96\x87 \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xd9\xa1\xd9\xa2\xd9\xa3 \xc2\xb2\xc2\xb3 \xe2\x80\x94 a+=b; a->b // c++ \$100 50%% don't I'LL we've\n" > "$TT"
  ok=0 bad=""
  for P in gpt-2 default llama-bpe qwen2 smollm starcoder command-r falcon deepseek-coder tekken gpt-4o bloom poro-chat \
           viking seed-coder bailingmoe stablelm2 dbrx; do
    python3 bench/gguf_bpe_fixture.py "$SHARED/models/stories260K.gguf" tests/data/tok/bpe-bytelevel.json "$OUT/pre.gguf" "$P"
    a=$("$L/llama-tokenize" -m "$OUT/pre.gguf" -f "$TT" --ids --log-disable 2>/dev/null | tail -1 | tr -d '[] ')
    b=$("$QLAB" tokenize "$OUT/pre.gguf" --text "$TT" 2>/dev/null | paste -sd, -)
    if [ -n "$a" ] && [ "$a" = "$b" ]; then ok=$((ok + 1)); else bad="$bad $P"; fi
  done
  printf '%-44s %s\n' "tokenize: pre-tokenizers equal to llama.cpp's" "$ok of 18${bad:+ (differ:$bad)}"
  rm -f "$OUT/pre.gguf" "$TT"
fi
