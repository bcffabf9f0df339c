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
# tinystories-d256: llama.cpp's i-quant mixes made with its imatrix (models/tinystories-d256-llamacpp.md,
# "Low-bit mixes"): qlab's file must have llama.cpp's size within 512 bytes (every per-tensor type right: the
# smallest type change there moves it by 1 KiB; the rest is llama.cpp's imatrix path strings) and its PPL
# within 0.002.
D=$SHARED/models/tinystories-d256.gguf
REF=$SHARED/models/tinystories-d256-llamacpp.md
IMAT=$SHARED/models/tinystories-d256-imatrix-wt.gguf
D256_MIXES=${D256_MIXES-"IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_S IQ3_M"}
if [ -n "$D256_MIXES" ]; then
  for f in "$D" "$REF" "$IMAT"; do [ -f "$f" ] || { echo "FAIL: $f missing"; exit 1; }; done
  printf '\n| d256 mix (imatrix) | qlab PPL | llama.cpp PPL | diff | qlab bytes | llama.cpp bytes |\n|---|---:|---:|---:|---:|---:|\n'
fi
for mix in $D256_MIXES; do
  row=$(awk -F'|' -v m="$mix" '$2 ~ "^ *"m" *$" && $3 ~ /wikitext/ {gsub(/[ ,]/,"",$4); split($6,a," "); print $4, a[1]; exit}' "$REF")
  wbytes=${row% *}; want=${row#* }
  [ -n "$row" ] || { echo "| $mix | no reference row | | | | |"; fail=1; continue; }
  $QLAB quant "$D" --preset "$mix" --imatrix "$IMAT" -o "$T/d-$mix.gguf" >/dev/null 2>&1 || { echo "| $mix | quant failed | | | | |"; fail=1; continue; }
  got=$($QLAB ppl "$T/d-$mix.gguf" --text "$SHARED/data/tinystories-valid.txt" --ctx 256 --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p')
  bytes=$(stat -c %s "$T/d-$mix.gguf")
  d=$(awk -v a="$got" -v b="$want" 'BEGIN { printf "%+.4f", a - b }')
  awk -v d="$d" -v b="$bytes" -v w="$wbytes" 'BEGIN { exit !(d <= 0.002 && d >= -0.002 && b - w <= 512 && w - b <= 512) }' || fail=1
  printf '| %s | %.4f | %s | %s | %d | %d |\n' "$mix" "$got" "$want" "$d" "$bytes" "$wbytes"
done
exit $fail
