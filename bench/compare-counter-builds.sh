#!/bin/sh
# Runs two builds of counter_table_benchmark in turn (A, B, A, B, ...),
# RUNS times each, so that both see the same machine, and prints per
# benchmark each build's median time per operation, the spread (min-max) of
# its runs, and the ratio B / A of the medians.
#
#   bench/compare-counter-builds.sh OLD/build/bench/counter_table_benchmark \
#       build/bench/counter_table_benchmark ['Connthrottle_Optional(FixedKey)?/|FallingToZero']
set -eu
A=$1
B=$2
FILTER=${3:-'BM_Connthrottle_(Optional|OptionalFixedKey|FallingToZero[A-Za-z]*)/'}
RUNS=${RUNS:-5}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "connthrottle compare-counter-builds: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg), $RUNS runs each"
for run in $(seq 1 "$RUNS"); do
  for which in A B; do
    bin=$A
    [ "$which" = B ] && bin=$B
    "$bin" --benchmark_filter="$FILTER" --benchmark_min_time=0.2 \
      --benchmark_out="$OUT/$which.$run.json" --benchmark_out_format=json >/dev/null 2>&1
  done
done
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
times = {}
for which in "AB":
    for path in sorted(glob.glob(f"{out}/{which}.*.json")):
        for b in json.load(open(path))["benchmarks"]:
            if b.get("run_type") == "aggregate":
                continue
            times.setdefault(b["name"], {}).setdefault(which, []).append(b["real_time"])
print("| benchmark | A ns, median (min-max) | B ns, median (min-max) | B / A |")
print("| --- | ---: | ---: | ---: |")
for name, t in times.items():
    a, b = t.get("A", []), t.get("B", [])
    if not a or not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {ma:.1f} ({min(a):.1f}-{max(a):.1f}) | {mb:.1f} ({min(b):.1f}-{max(b):.1f}) | {mb / ma:.3f} |")
PY
