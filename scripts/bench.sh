#!/bin/sh
# Builds the counter-table benchmark and prints its ratio table (README,
# "Benchmarks"). Extra arguments go to the benchmark binary.
#   ./scripts/bench.sh [--benchmark_filter=...]
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ "$(id -u)" = 0 ]; then "$ROOT/scripts/install-deps.sh"; fi
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" --target counter_table_benchmark
"$ROOT/build/bench/counter_table_benchmark" \
  --benchmark_repetitions=5 --benchmark_min_time=0.2 \
  --benchmark_enable_random_interleaving=true \
  --benchmark_display_aggregates_only=true \
  --benchmark_out="$ROOT/build/bench.json" --benchmark_out_format=json "$@"
echo
echo "measured $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" describe --always --dirty --abbrev=7 2>/dev/null || echo '?')," \
  "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg); 5 repetitions: median, largest CV shown"
# Busy keys (another slot keeps every count above zero) first, then keys
# falling to zero at every release (FallingToZero*, issue 14).
python3 "$ROOT/bench/ratios.py" "$ROOT/build/bench.json"
