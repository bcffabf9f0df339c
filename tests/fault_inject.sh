#!/usr/bin/env bash
# fault_inject.sh — every qlab writer against failing system calls, SIGKILL and a concurrent writer.
# For each writer (GGUF, plan, statistics, sensitivity, imatrix, log-probabilities, Hugging Face folder):
#  1. a clean run gives the reference output; a counting run (tests/fault_shim.c, LD_PRELOAD) says how many
#     write/fsync/rename/mkdir/link calls it makes;
#  2. for N = 1..count of each kind (QL_EXHAUSTIVE=1; otherwise a spread sample of N), the Nth call fails with
#     ENOSPC, EIO or EDQUOT: the command must exit 1 or 2 with a message and leave the previous output byte
#     for byte, or exit 0 with the complete reference output (a failure it could survive), and never leave a
#     temporary ("*.tmp.*") behind;
#  3. SIGKILL at random points of a run: the previous output or the complete new one, and no temporary left
#     once the next writer of that path has run (file outputs use O_TMPFILE, so none is left even before);
#  4. two processes writing the same path at once: the result is one of the two complete outputs.
# Needs no ../shared (the model is made with qlab synth). Skipped with a message under ASan, which must be the
# first library loaded and so cannot run beside an LD_PRELOAD shim.
set -u
QLAB=${QLAB:-./qlab}
SHIM=${QL_FAULT_SHIM:-build/tests/libqlfault.so}
[ -f "$SHIM" ] || { echo "FAIL: $SHIM not built (make $SHIM)"; exit 1; }
if ldd "$QLAB" 2>/dev/null | grep -q libasan; then echo "SKIP fault injection: $QLAB is an ASan build (LD_PRELOAD cannot go first)"; exit 0; fi
T=$(mktemp -d /tmp/qlab-fault-XXXXXX); trap 'rm -rf "$T"' EXIT
fail=0; pass=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }

$QLAB synth --dims "layers=2,embd=64,heads=4,kv=2,ff=128,vocab=300,ctx=128" -o "$T/m.gguf" 2>/dev/null \
  || { echo "FAIL: synth"; exit 1; }
printf 'Once upon a time a small test model read a short story about quantization and disks.\n%.0s' {1..40} > "$T/t.txt"
M="$T/m.gguf"; TXT="$T/t.txt"
$QLAB stats "$M" --text "$TXT" --ctx 64 --chunks 2 --threads 1 -o "$T/m.qls" 2>/dev/null || { echo "FAIL: stats"; exit 1; }

# name | kind (file or dir) | command with @OUT@ for the output path
WRITERS=(
  "gguf|file|$QLAB quant $M --type q4_0 --threads 1 -o @OUT@"
  "plan|file|$QLAB quant $M --type q8_0 --dry-run --save-plan @OUT@"
  "stats|file|$QLAB stats $M --text $TXT --ctx 64 --chunks 2 --threads 1 -o @OUT@"
  "sense|file|$QLAB sense $M --text $TXT --ctx 64 --chunks 2 --candidates q8_0,q4_0 --level output --stats $T/m.qls --threads 1 -o @OUT@ --force"
  "imatrix|file|$QLAB imatrix $M --text $TXT --ctx 64 --chunks 2 --threads 1 -o @OUT@"
  "logprobs|file|$QLAB ppl $M --text $TXT --ctx 64 --chunks 2 --threads 1 --save-logits @OUT@"
  "hf-folder|dir|$QLAB convert $M -o @OUT@"
  "gptq-folder|dir|$QLAB quant $M --type int4_g32_sym --to gptq --threads 1 -o @OUT@"
)
# issue 14: the EXL2 folder (--to exl2: q_weight/q_scale/... through the same folder writer), so a full disk or a
# kill during an EXL2 export leaves the previous state too
WRITERS+=("exl2-folder|dir|$QLAB quant $M --type exl2_4b32 --to exl2 --threads 1 -o @OUT@")
# N values to try out of 1..c: all of them in exhaustive mode, else first, last and a few between
sample() {
  local c=$1
  if [ "${QL_EXHAUSTIVE:-0}" = 1 ] || [ "$c" -le 6 ]; then seq 1 "$c"; return; fi
  printf '%s\n' 1 2 $((c / 3)) $((c / 2)) $((2 * c / 3)) $((c - 1)) "$c" | sort -un
}
# equal outputs; a sensitivity file records its run time ("seconds"), the one field allowed to differ
same() {
  if [ -d "$1" ] || [ -d "$2" ]; then diff -r "$1" "$2" >/dev/null 2>&1; return; fi
  cmp -s "$1" "$2" || diff <(grep -av '^seconds' "$1" 2>/dev/null) <(grep -av '^seconds' "$2" 2>/dev/null) >/dev/null 2>&1
}
temps() { ls -a "$T/out" | grep -c '\.tmp\.'; }
prev() { # the previous output: a file with known bytes; for folders, no folder (exporters refuse a full one)
  rm -rf "$T/out/o"; if [ "$1" = file ]; then printf 'previous output\n' > "$T/out/o"; fi
}
printf 'previous output\n' > "$T/prev"
is_prev() { if [ "$1" = file ]; then cmp -s "$T/out/o" "$T/prev"; else [ ! -e "$T/out/o" ]; fi; }

errs=(ENOSPC EIO EDQUOT)
for w in "${WRITERS[@]}"; do
  name=${w%%|*}; rest=${w#*|}; kind=${rest%%|*}; cmd=${rest#*|}
  mkdir -p "$T/out" "$T/ref"; rm -rf "$T/ref/$name" "$T/out/o"
  # the reference is written at the same path (a plan names its own file in a comment), then set aside
  if ! eval "${cmd//@OUT@/$T/out/o}" >/dev/null 2>"$T/err"; then bad "$name: the clean run failed"; sed 's/^/     /' "$T/err" | tail -2; continue; fi
  mv "$T/out/o" "$T/ref/$name"
  prev "$kind"; rm -f "$T/count"
  # a second clean run must give the same bytes, or the comparisons below mean nothing
  if ! QL_FAULT_COUNT="$T/count" LD_PRELOAD="$SHIM" eval "${cmd//@OUT@/$T/out/o}" >/dev/null 2>&1 || ! same "$T/out/o" "$T/ref/$name"; then
    bad "$name: a second clean run differs from the first (not deterministic)"; continue
  fi
  tried=0; e=0
  for k in write fsync rename mkdir link; do
    c=$(awk -v k=$k '$1 == k {s += $2} END {print s + 0}' "$T/count")
    for n in $(sample "$c"); do
      prev "$kind"
      err=${errs[$((e % 3))]}; e=$((e + 1))
      QL_FAULT="$k:$n:$err" LD_PRELOAD="$SHIM" eval "${cmd//@OUT@/$T/out/o}" >/dev/null 2>"$T/err"; rc=$?
      tried=$((tried + 1))
      if [ $rc -eq 0 ]; then
        same "$T/out/o" "$T/ref/$name" || { bad "$name: $k #$n ($err) exit 0 but the output is not the complete one"; continue; }
      elif [ $rc -eq 1 ] || [ $rc -eq 2 ]; then
        is_prev "$kind" || { bad "$name: $k #$n ($err) failed (rc $rc) and the previous output changed"; continue; }
        [ -s "$T/err" ] || { bad "$name: $k #$n ($err) failed (rc $rc) without a message"; continue; }
      else bad "$name: $k #$n ($err) ended with rc $rc"; sed 's/^/     /' "$T/err" | tail -2; continue; fi
      [ "$(temps)" -eq 0 ] || { bad "$name: $k #$n ($err) left a temporary: $(ls "$T/out" | grep '\.tmp\.' | head -1)"; rm -rf "$T/out"/*.tmp.*; continue; }
      ok
    done
  done
  # SIGKILL at random points (the run lasts a fraction of a second: delays spread over it)
  for d in 0.01 0.03 0.06 0.1 0.15 0.25; do
    prev "$kind"
    eval "exec ${cmd//@OUT@/$T/out/o}" >/dev/null 2>&1 & pid=$!  # exec: the kill reaches qlab, not a subshell
    sleep $d; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    if is_prev "$kind" || same "$T/out/o" "$T/ref/$name"; then ok; else bad "$name: SIGKILL after ${d}s left a mixed output"; fi
    # a temporary may outlive a kill only in atomic_file.c's commit window (mkstemp, unlink, linkat, rename): then it is
    # empty or the complete output, and the next writer sweeps it (checked below); anything else is a leak
    if [ "$kind" = file ] && [ "$(temps)" -ne 0 ]; then
      for tf in "$T/out"/*.tmp.*; do
        if [ -s "$tf" ] && ! same "$tf" "$T/ref/$name"; then bad "$name: SIGKILL after ${d}s left a partial temporary"; fi
      done
    fi
  done
  # the next writer of the path sweeps what a killed one left, and writes the complete output
  [ "$kind" = dir ] && rm -rf "$T/out/o"
  if eval "${cmd//@OUT@/$T/out/o}" >/dev/null 2>&1 && same "$T/out/o" "$T/ref/$name" && [ "$(temps)" -eq 0 ]; then ok
  else bad "$name: the run after the kills did not leave exactly the complete output"; fi
  echo "ok   $name: $tried injected failures, 6 kills"
  rm -rf "$T/out"
done

# two writers of one path at once: the file is one complete output or the other (the last rename wins)
$QLAB quant "$M" --type q8_0 --threads 1 -o "$T/a.gguf" 2>/dev/null; $QLAB quant "$M" --type q4_0 --threads 1 -o "$T/b.gguf" 2>/dev/null
for i in 1 2 3 4; do
  $QLAB quant "$M" --type q8_0 --threads 1 -o "$T/race.gguf" >/dev/null 2>&1 & p1=$!
  $QLAB quant "$M" --type q4_0 --threads 1 -o "$T/race.gguf" >/dev/null 2>&1 & p2=$!
  wait $p1 $p2
  if cmp -s "$T/race.gguf" "$T/a.gguf" || cmp -s "$T/race.gguf" "$T/b.gguf"; then ok; else bad "concurrent writers gave a mixed file"; fi
done
[ "$(ls -a "$T" | grep -c '\.tmp\.')" -eq 0 ] || bad "concurrent writers left a temporary"
echo "fault_inject: $pass passed, $fail failed"
[ $fail -eq 0 ]
