#!/bin/sh
# Runs bench/pgbench.sh through the shared pool against two builds of the
# extension, taking turns: A, B, A, B, ... RUNS times each, so that both see
# the same machine. Each build is a staged install:
#
#   DESTDIR=/tmp/stage-a cmake --install build --component postgresql
#   (check out the other commit, build)
#   DESTDIR=/tmp/stage-b cmake --install build --component postgresql
#   bench/compare-installs.sh /tmp/stage-a /tmp/stage-b
#
# Prints each run's TPS per cell and, per cell, the median of each build and
# the ratio B / A of the medians. Installs the last build it ran (B) when
# done. Settings as pgbench.sh's (CLIENTS, WORKLOADS, DURATION, WARMUP);
# defaults: router and fan-out at 8 and 64 clients, 15 s, 3 runs each.
set -eu
A=$1
B=$2
RUNS=${RUNS:-3}
export CLIENTS=${CLIENTS:-"8 64"}
export WORKLOADS=${WORKLOADS:-"fanout router"}
export DURATION=${DURATION:-15}
export MODES=pool
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
echo "connthrottle compare-installs: $(date -u '+%Y-%m-%d %H:%M UTC'), A=$A B=$B, $(nproc) cores," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
  for which in A B; do
    dir=$A
    [ "$which" = B ] && dir=$B
    cp -r "$dir"/. /
    RUNS=1 "$SRC/bench/pgbench.sh" 2>/dev/null |
      awk -F'|' -v w="$which" -v r="$run" '$2 ~ /fanout|router|copy/ {
        gsub(/ /, "", $2); gsub(/ /, "", $3); gsub(/ /, "", $5); print w, r, $2, $3, $5 }' |
      tee -a "$OUT"
  done
done
echo
echo "| workload | clients | A TPS, median (runs) | B TPS, median (runs) | B / A |"
echo "| --- | ---: | ---: | ---: | ---: |"
python3 - "$OUT" <<'PY'
import statistics, sys
cells = {}
for line in open(sys.argv[1]):
    w, r, workload, clients, tps = line.split()
    cells.setdefault((workload, int(clients)), {"A": [], "B": []})[w].append(float(tps))
for (workload, clients), v in sorted(cells.items()):
    a, b = statistics.median(v["A"]), statistics.median(v["B"])
    fmt = lambda xs: " ".join(f"{x:.0f}" for x in xs)
    print(f"| {workload} | {clients} | {a:.0f} ({fmt(v['A'])}) | {b:.0f} ({fmt(v['B'])}) | {b / a:.3f} |")
PY
