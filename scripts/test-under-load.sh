#!/bin/sh
# Runs the README's test command RUNS times (default 3) in a fresh clone of
# this repository while one CPU-bound process per core runs beside it, and
# prints how many runs passed. A test that passes only on an idle machine
# fails here.
#
#   ./scripts/test-under-load.sh [RUNS]
#
# The clone is of the committed HEAD (uncommitted changes are not tested); it
# is made under ${TMPDIR:-/tmp} and removed at the end. Each run's log is kept
# beside it as test-under-load-N.log in the current directory.
set -eu
RUNS=${1:-3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/connthrottle-load.XXXXXX")
HOGS=""

cleanup() {
  for p in $HOGS; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

git clone -q "$SRC" "$WORK/repo"
echo "connthrottle: test under load at $(git -C "$WORK/repo" rev-parse --short HEAD)," \
  "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
for _ in $(seq "$(nproc)"); do
  sh -c 'while :; do :; done' &
  HOGS="$HOGS $!"
done
echo "CPU hogs running: $HOGS"

passed=0
failed=0
for i in $(seq "$RUNS"); do
  log="$OUT/test-under-load-$i.log"
  start=$(date +%s)
  # Each run from scratch: no build directory survives from the previous one.
  rm -rf "$WORK/repo/build" "$WORK/repo/build-asan" "$WORK/repo/build-tsan"
  if (cd "$WORK/repo" && ./scripts/test.sh) >"$log" 2>&1; then
    passed=$((passed + 1))
    verdict=passed
  else
    failed=$((failed + 1))
    verdict=FAILED
  fi
  echo "run $i: $verdict in $(($(date +%s) - start)) s, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "$(grep -E 'tests passed|tests failed' "$log" | tr '\n' ' ')"
  grep -E '^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Not Run)\)' "$log" || true
done
echo "under load: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
