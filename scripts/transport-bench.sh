#!/bin/sh
# Builds and runs bench/transport_benchmark (the direct transport, the shared
# pool and unthrottled, on two real workers it starts) and prints the table
# the README shows: executions per second, median and min–max of
# REPETITIONS runs (default 3), with the date, commit and machine.
#
#   ./scripts/transport-bench.sh            (after ./scripts/install-deps.sh)
set -eu
cd "$(dirname "$0")/.."
REPETITIONS=${REPETITIONS:-3}
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target transport_benchmark >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
build/bench/transport_benchmark --benchmark_repetitions="$REPETITIONS" \
  --benchmark_format=json "$@" >"$out"
echo "transport_benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git describe --always --dirty --abbrev=7)," \
  "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "executions per second, median of $REPETITIONS runs (min–max); limit 8 per worker"
python3 bench/transport_table.py <"$out"
