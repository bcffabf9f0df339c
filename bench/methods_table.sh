#!/usr/bin/env bash
# methods_table.sh — the issue-4 comparison: RTN vs llama.cpp-style imatrix vs GPTQ / AWQ, measured as
# KLD against the float model over all of tinystories-valid (ctx 256). Calibration: wikitext-2-valid
# (consecutive chunks) and c4-sample.jsonl (a calibration set). Prints a markdown table.
set -u
Q=${QLAB:-./qlab}
S=${QL_SHARED:-../shared}
TS=$S/data/tinystories-valid.txt
T=$(mktemp -d /tmp/qlab-mt-XXXXXX); trap 'rm -rf "$T"' EXIT
kld() { $Q ppl "$1" --text "$TS" --ctx 256 --kld-base "$2" --json 2>/dev/null | sed -n 's/.*"ppl": \([0-9.]*\).*"kld_mean": \([0-9.e-]*\).*/\1 \2/p'; }
row() { # model label file base
  set -- $(kld "$3" "$4"); printf '| %s | %s | %s | %s |\n' "$MODEL_NAME" "$LABEL" "$1" "$2"; }
echo "| model | method → format (calibration) | PPL | mean KLD |"
echo "|---|---|---:|---:|"
for MODEL_NAME in stories260K tinystories-d256; do
  M=$S/models/$MODEL_NAME.gguf
  $Q ppl "$M" --text "$TS" --ctx 256 --save-logits "$T/base.qlp" >/dev/null 2>&1
  WT="--text $S/data/wikitext-2-valid.raw --ctx 256 --chunks 128"
  C4="--calib $S/data/c4-sample.jsonl --samples 128 --len 256 --seed 1"
  $Q imatrix "$M" $WT -o "$T/im-wt.gguf" >/dev/null 2>&1
  $Q imatrix "$M" $C4 -o "$T/im-c4.gguf" >/dev/null 2>&1
  if [ $MODEL_NAME = stories260K ]; then FMTS="int4_g32"; else FMTS="int4_g32 q4_k q3_k"; fi
  for F in $FMTS; do
    LABEL="RTN → $F"; $Q quant "$M" --type $F -o "$T/q.gguf" >/dev/null 2>&1 && row x x "$T/q.gguf" "$T/base.qlp"
    for C in wt c4; do
      if [ $C = wt ]; then CAL=$WT; else CAL=$C4; fi
      case $F in q*) LABEL="llama.cpp imatrix RTN → $F ($C)"; $Q quant "$M" --type $F --imatrix "$T/im-$C.gguf" -o "$T/q.gguf" >/dev/null 2>&1 && row x x "$T/q.gguf" "$T/base.qlp";; esac
      LABEL="GPTQ → $F ($C)"; $Q quant "$M" --type $F --method gptq $CAL -o "$T/q.gguf" >/dev/null 2>&1 && row x x "$T/q.gguf" "$T/base.qlp"
      LABEL="GPTQ act-order, true-sequential → $F ($C)"; $Q quant "$M" --type $F --method gptq --method-opts act_order=1 --sequential $CAL -o "$T/q.gguf" >/dev/null 2>&1 && row x x "$T/q.gguf" "$T/base.qlp"
      case $F in int*) LABEL="AWQ → $F ($C)"; $Q quant "$M" --type $F --method awq $CAL -o "$T/q.gguf" >/dev/null 2>&1 && row x x "$T/q.gguf" "$T/base.qlp";; esac
    done
  done
done
