#!/usr/bin/env bash
# mixes_check.sh — every llama.cpp mix quantized by qlab on stories260K, measured by qlab ppl over all
# 1535 chunks, against llama.cpp's figures (testdata/llamacpp-mixes/README.md). Prints a table; exits
# non-zero when a mix is off by more than 0.002. Takes ~4 minutes on 2 cores (`make check-mixes`).
set -u
QLAB=${QLAB:-./qlab}
SHARED=${QL_SHARED:-../shared}
M=$SHARED/models/stories260K.gguf
# no shared folder at all: nothing to compare with (skipped, said so); a folder without the model: a failure
[ -d "$SHARED" ] || { echo "SKIP: $SHARED not found"; exit 0; }
[ -f "$M" ] || { echo "FAIL: $M missing from $SHARED"; exit 1; }
for f in "$SHARED/testdata/llamacpp-mixes/README.md" "$SHARED/data/tinystories-valid.txt"; do
  [ -f "$f" ] || { echo "FAIL: $f missing"; exit 1; }
done
MIXES=${MIXES:-"F16 BF16 Q8_0 Q6_K Q5_K_M Q5_K_S Q5_0 Q5_1 Q4_K_M Q4_K_S Q4_0 Q4_1 IQ4_NL IQ4_XS Q3_K_L Q3_K_M Q3_K_S Q2_K Q2_K_S"}
T=$(mktemp -d /tmp/qlab-mix-XXXXXX); trap 'rm -rf "$T"' EXIT
fail=0
printf '| mix | qlab PPL | llama.cpp PPL | diff | qlab bpw |\n|---|---:|---:|---:|---:|\n'
for mix in $MIXES; do
  want=$(awk -F'|' -v m="$mix" '$2 ~ "^ *"m" *$" {gsub(/ /,"",$5); print $5}' "$SHARED/testdata/llamacpp-mixes/README.md")
  $QLAB quant "$M" --preset "$mix" -o "$T/$mix.gguf" >/dev/null 2>&1 || { echo "| $mix | quant failed | | | |"; fail=1; continue; }
  got=$($QLAB ppl "$T/$mix.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  bpw=$($QLAB info "$T/$mix.gguf" --json --no-tensors | sed -n 's/.*"bpw": \([0-9.]*\).*/\1/p')
  d=$(awk -v a="$got" -v b="$want" 'BEGIN { printf "%+.4f", a - b }')
  awk -v d="$d" 'BEGIN { exit !(d <= 0.002 && d >= -0.002) }' || fail=1
  printf '| %s | %.4f | %s | %s | %.4f |\n' "$mix" "$got" "$want" "$d" "$bpw"
done
exit $fail
