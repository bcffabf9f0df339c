#!/usr/bin/env bash
# lowbit_plans_check.sh — issue 13's plan checks on tinystories-d256: for every llama.cpp mix in
# ../shared/models/tinystories-d256-llamacpp.md that has a file size and a KLD, an automatic qlab plan
# (`qlab plan --target-size`, at most the mix's bytes) is quantized and its KLD against the float model is
# measured over all 1535 chunks of tinystories-valid (ctx 256), as llama.cpp's figures were. Prints the
# table of docs/results.md; exits non-zero when a check fails: any mix not beaten at equal or smaller size,
# IQ2_XXS's size above 0.6x its KLD, IQ2_M's or IQ3_XXS's above 0.7x, or `plan --target-bpw 2.0` failing.
# Long (`make check-lowbit-plans`: the sensitivity pass plus ~20 quantizations and full KLD runs, about
# half an hour on an idle 2-core machine); not part of `make test`.
# Environment: WORK=DIR keeps every intermediate file there and reuses what it finds (a resumed run skips
# finished steps; `qlab sense` resumes by candidate name); THREADS (2); CANDIDATES; SENSE_CHUNKS (16);
# STATS_CHUNKS (default: the whole calibration text);
# PLANS (the reference file's types whose sizes get a plan, default all); SENSE=0 uses WORK's s.qss as
# it is (no resumed sensitivity pass); MEASURE=0 only reports what WORK holds; QSS=FILE plans from another sensitivity file of WORK.
set -u
QLAB=$(realpath "${QLAB:-./qlab}")
SHARED=$(realpath "${QL_SHARED:-../shared}" 2>/dev/null || echo "${QL_SHARED:-../shared}")
[ -d "$SHARED" ] || { echo "SKIP: $SHARED not found"; exit 0; }
M=$SHARED/models/tinystories-d256.gguf
REF=$SHARED/models/tinystories-d256-llamacpp.md
IM=$SHARED/models/tinystories-d256-imatrix-wt.gguf
EVAL=$SHARED/data/tinystories-valid.txt
CAL=$SHARED/data/wikitext-2-valid.raw
for f in "$M" "$REF" "$IM" "$EVAL" "$CAL"; do [ -f "$f" ] || { echo "FAIL: $f missing"; exit 1; }; done
THREADS=${THREADS:-2}
SENSE_CHUNKS=${SENSE_CHUNKS:-16}
CANDIDATES=${CANDIDATES:-'q2_k+gptq,q3_k+gptq,q4_k+gptq,q6_k,iq2_xxs+gptq,iq2_s+gptq,iq3_xxs+gptq,e8p+quip,e8p_rvq3+quip,e8p_rvq4+quip,iq1_m,q5_k+gptq,q6_k+gptq,q8_0,f16,iq2_xs+gptq,iq3_s+gptq,iq4_xs+gptq,q8_0+gptq'}
if [ -n "${WORK:-}" ]; then mkdir -p "$WORK"; T=$(realpath "$WORK"); else T=$(mktemp -d /tmp/qlab-lowbit-XXXXXX); trap 'rm -rf "$T"' EXIT; fi
cd "$T" || exit 1
log() { echo "lowbit_plans_check: $*" >&2; }
run() { log "$*"; "$@" >>"$T/commands.log" 2>&1; }

# The statistics (Hessians for GPTQ/LDLQ) come from the whole calibration text, all 2,800 chunks of 256:
# at 2-3 bits 128 chunks measured 6 % more KLD on the same plan (docs/results.md).
[ -s wt.qls ] || run "$QLAB" stats "$M" --text "$CAL" --ctx 256 ${STATS_CHUNKS:+--chunks "$STATS_CHUNKS"} --output --threads "$THREADS" -o wt.qls || { echo "FAIL: qlab stats"; exit 1; }
[ -s base.qlp ] || run "$QLAB" ppl "$M" --text "$EVAL" --ctx 256 --threads "$THREADS" --save-logits base.qlp || { echo "FAIL: base logits"; exit 1; }
[ "${SENSE:-1}" = 0 ] && [ -s s.qss ] || run "$QLAB" sense "$M" --text "$CAL" --ctx 256 --chunks "$SENSE_CHUNKS" --stats wt.qls --imatrix "$IM" --threads "$THREADS" \
    --candidates "$CANDIDATES" -o s.qss || { echo "FAIL: qlab sense"; exit 1; }

# The reference rows: type, imatrix, file bytes, mean KLD, from both tables (columns found by their header).
awk -F'|' '
  /^\| type \|/ { for (i = 2; i < NF; i++) { h = $i; gsub(/^ +| +$/, "", h); col[h] = i }; intab = 1; next }
  intab && /^\|---/ { next }
  intab && /^\|/ { t = $2; im = $(col["imatrix"]); b = $(col["file bytes"]); k = $(col["mean KLD"])
                   gsub(/ /, "", t); gsub(/ /, "", im); gsub(/[ ,]/, "", b); split(k, kk, " "); k = kk[1]
                   if (b ~ /^[0-9]+$/ && k ~ /^[0-9.]+$/) print t, im, b, k; next }
  { intab = 0 }' "$REF" > ref.txt
[ -s ref.txt ] || { echo "FAIL: no rows read from $REF"; exit 1; }

# measure LABEL PLAN-ARGS...: plan, quantize, KLD over all chunks; leaves LABEL.json, LABEL.plan.log
measure() {
  local L=$1; shift
  if [ ! -s "$L.json" ]; then
    [ "${MEASURE:-1}" = 0 ] && return 1
    log "$QLAB plan ${QSS:-s.qss} $* -o $L.ini"
    "$QLAB" plan "${QSS:-s.qss}" "$@" -o "$L.ini" > "$L.plan.log" 2>&1 || return 1
    run "$QLAB" quant "$M" --plan "$L.ini" --stats wt.qls --imatrix "$IM" --threads "$THREADS" -o "$L.gguf" || return 1
    log "$QLAB ppl $L.gguf --text $EVAL --ctx 256 --kld-base base.qlp --json"
    "$QLAB" ppl "$L.gguf" --text "$EVAL" --ctx 256 --kld-base base.qlp --threads "$THREADS" --json > "$L.json.tmp" 2>>commands.log \
      && mv "$L.json.tmp" "$L.json" || return 1
  fi
}
field() { sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p" "$1"; }
# the plan's mix in words: counts of each FORMAT+METHOD
mixof() { awk -F' = ' '/^\[tensors\]/ { on = 1; next } on && NF == 2 { n[$2]++ } END { for (k in n) printf "%s%d %s", (s++ ? ", " : ""), n[k], k; print "" }' "$1"; }

fail=0
# One plan per measured type, at the smaller of its files (the imatrix and plain files differ by metadata
# only). PLANS (default: every type) picks which sizes get a plan; a mix without a plan of its own is judged
# by the best measured plan that is not larger than its file.
PLANS=${PLANS:-$(awk '{print $1}' ref.txt | awk '!s[$0]++' | tr '\n' ' ')}
for mix in $PLANS; do
  bytes=$(awk -v m="$mix" '$1 == m { if (b == "" || $3 < b) b = $3 } END { print b }' ref.txt)
  [ -n "$bytes" ] || { echo "FAIL: $mix not in $REF"; fail=1; continue; }
  [ "${MEASURE:-1}" = 0 ] && continue
  measure "s$bytes" --target-size "$bytes" || { echo "FAIL: plan/quant/ppl at $mix's size ($bytes bytes)"; fail=1; }
done
for j in s*.json; do [ -f "$j" ] && printf '%s %s %s %s\n' "${j%.json}" "$(stat -c %s "${j%.json}.gguf")" "$(field "$j" kld_mean)" "$(field "$j" ppl)"; done > measured.txt
printf '| llama.cpp mix | imatrix | its bytes | its KLD | qlab plan (target bytes) | plan file bytes | bpw (file) | qlab PPL | qlab KLD | ratio | check |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
while read -r t im b k; do
  # the best measured plan of equal or smaller file size
  best=$(awk -v mb="$b" '$2 <= mb && (k == "" || $3 < k) { k = $3; l = $0 } END { print l }' measured.txt)
  lim=1; case "$t" in IQ2_XXS) lim=0.6 ;; IQ2_M|IQ3_XXS) lim=0.7 ;; esac
  [ "$lim" = 1 ] && goal="beaten" || goal="≤ ${lim}×"
  if [ -z "$best" ]; then printf '| %s | %s | %s | %s | not measured | | | | | | %s: open |\n' "$t" "$im" "$b" "$k" "$goal"; fail=1; continue; fi
  set -- $best
  r=$(awk -v a="$3" -v b="$k" 'BEGIN { printf "%.3f", a / b }')
  ok=$(awk -v a="$3" -v b="$k" -v l="$lim" 'BEGIN { print (a < l * b) ? "met" : "MISSED" }')
  own=$(awk -v m="$t" '$1 == m { if (b == "" || $3 < b) b = $3 } END { print b }' ref.txt)
  [ "$ok" = met ] || [ -s "s$own.json" ] || ok="open (no plan at its size measured)"
  [ "$ok" = met ] || fail=1
  printf '| %s | %s | %s | %s | %s | %s | %.3f | %.4f | %s | %s | %s: %s |\n' "$t" "$im" "$b" "$k" "${1#s}" "$2" \
    "$(awk -v x="$2" 'BEGIN { print x * 8 / 3410176 }')" "$4" "$3" "$r" "$goal" "$ok"
done < ref.txt
if [ "${MEASURE:-1}" = 0 ] && [ ! -s b2.0.json ]; then echo; echo "--target-bpw 2.0: not measured";
elif measure b2.0 --target-bpw 2.0; then
  qb=$(stat -c %s b2.0.gguf)
  printf '\nqlab plan --target-bpw 2.0: %s bytes (%.3f bpw over the file), KLD %s, PPL %s; plan: %s\n' "$qb" \
    "$(awk -v b="$qb" 'BEGIN { print b * 8 / 3410176 }')" "$(field b2.0.json kld_mean)" "$(field b2.0.json ppl)" "$(mixof b2.0.ini)"
else echo "FAIL: qlab plan --target-bpw 2.0"; fail=1; fi
printf '\nplans (files in %s):\n' "$T"
for f in s*.ini; do [ -f "$f" ] && printf '  %s: %s\n' "$f" "$(mixof "$f")"; done
exit $fail
