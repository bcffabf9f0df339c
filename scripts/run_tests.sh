#!/usr/bin/env bash
# run_tests.sh BUILD JOBS TEST... — the cmocka test binaries of `make test-run`, JOBS at a time (most are
# single-threaded, and CI has a time limit), each into its own log; the logs are printed whole, in the
# order given, each with its seconds, so a failure reads as it did when they ran one after another.
# Exit status 1 when any test failed. QLAB and the other environment variables pass through.
set -u
build=$1 jobs=$2
shift 2
logs=$build/tests/logs
mkdir -p "$logs"
run_one() {
  local t=$1 t0=$(date +%s) rc=0
  "$build/tests/$t" >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc $(($(date +%s) - t0))" >"$logs/$t.rc"
}
export -f run_one
export build logs
rm -f "$logs"/*.rc
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_one {}'
fail=0
for t in "$@"; do
  echo "== $t"
  cat "$logs/$t.log"
  read -r rc secs <"$logs/$t.rc" || { rc=1; secs=?; }
  [ "$rc" = 0 ] || { fail=1; echo "!! $t exited with status $rc"; }
  echo "-- $t: $secs s"
done
exit $fail
