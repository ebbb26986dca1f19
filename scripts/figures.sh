#!/bin/sh
# Prints every stress-driver table of the README, each measured RUNS times
# (default 3) with the median and the spread, under a header naming the date,
# the machine, the commit and the load before the runs. As root (the driver
# starts its own PostgreSQL servers as the user `connthrottle`).
#
#   ./scripts/figures.sh [RUNS]          (about 4 minutes per table at RUNS=3)
#   TABLES="demo" ./scripts/figures.sh   (only the tables named)
#
# The counter-table benchmark has its own script: ./scripts/bench.sh.
set -eu
RUNS=${1:-3}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
"$ROOT/scripts/install-deps.sh"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" --target connthrottle_pg connthrottle-stress >/dev/null
cmake --install "$ROOT/build" --component postgresql >/dev/null
OUT=$(mktemp -d "${TMPDIR:-/tmp}/connthrottle-figures.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

echo "connthrottle figures: $(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
  "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'),"\
  "$(free -g | awk '/Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg)"

table() {
  name=$1
  shift
  case " ${TABLES:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  echo
  echo "### $name"
  echo "connthrottle-stress --compare_unthrottled $*"
  for i in $(seq "$RUNS"); do
    "$ROOT/build/bench/stress/connthrottle-stress" --compare_unthrottled --json \
      --progress=false "$@" >"$OUT/$name-$i.json" 2>"$OUT/$name-$i.err" || true
    if [ ! -s "$OUT/$name-$i.json" ]; then
      echo "run $i printed no report:" >&2
      tail -5 "$OUT/$name-$i.err" >&2
      exit 1
    fi
  done
  python3 "$ROOT/scripts/stress_table.py" "$OUT/$name"-*.json
}

table demo --duration=30s --compare_transports
table unsaturated-mix --duration=30s --clients=12
table short-fanout --duration=30s --clients=8 --mix=fanout=1 --tasks_per_worker=16 \
  --fanout_task=short
