#!/usr/bin/env bash
# Runs the whole test suite (scripts/test.sh) several times in a row while a CPU
# hog keeps every core busy: a test that waits for time instead of for its
# event, or asserts how long something took, fails here.
#
#   bash scripts/stress-test.sh            # three runs
#   RUNS=1 bash scripts/stress-test.sh     # one
#
# The hog is one busy loop per core (nice 0, like the tests), started here and
# stopped when the script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
cores="$(nproc)"

hogs=()
stop_hogs() {
  [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true
}
trap stop_hogs EXIT
for _ in $(seq "$cores"); do
  # A subshell that only spins: no output, no I/O.
  ( while :; do :; done ) &
  hogs+=("$!")
done
echo "stress-test: $cores busy loops running (pids ${hogs[*]}); $runs runs of scripts/test.sh"

failed=0
for run in $(seq "$runs"); do
  started=$(date +%s)
  if bash scripts/test.sh; then result=passed; else result=FAILED; failed=$((failed + 1)); fi
  echo "stress-test: run $run of $runs $result in $(( $(date +%s) - started )) s"
done
if [ "$failed" -gt 0 ]; then
  echo "stress-test: $failed of $runs runs failed; the failing tests are named above (search for 'FAILED' or 'panicked')" >&2
  exit 1
fi
echo "stress-test: all $runs runs passed under load"
