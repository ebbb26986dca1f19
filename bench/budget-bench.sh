#!/bin/sh
# One budget across coordinators (issue 28): two local coordinators leasing a
# worker budget of 8 from each of two local workers, against a static split
# of the same budget (each coordinator limited to 4, no leases), three runs of
# each case, and the table of bench/budget_table.py (README, "Benchmarks").
# The fan-out tasks wait 10 ms each (--fanout_task=sleep): work bound by the
# connections, as remote queries waiting on I/O are, not by this machine's
# two cores, which a CPU-bound task would measure instead.
#   ./bench/budget-bench.sh [--duration=20s] [--check]
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=20s
CHECK=
for a in "$@"; do
  case "$a" in
    --duration=*) DURATION=${a#--duration=} ;;
    --check) CHECK=--check ;;
    *) echo "usage: $0 [--duration=20s] [--check]" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" = 0 ]; then "$ROOT/scripts/install-deps.sh"; fi
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" --target connthrottle_pg connthrottle-stress >/dev/null
cmake --install "$ROOT/build" --component postgresql >/dev/null
OUT="$ROOT/build/budget-bench"
rm -rf "$OUT" && mkdir -p "$OUT"
STRESS="$ROOT/build/bench/stress/connthrottle-stress"
COMMON="--coordinators=2 --worker_budget=8 --limit=8 --clients=16 --workers=2
  --worker_max_connections=30 --mix=fanout=1 --fanout_task=sleep --progress=false
  --judge_timing=false --json"
for i in 1 2 3; do
  echo "run $i of 3: one busy, one idle; both busy; an idle window ..." >&2
  # shellcheck disable=SC2086
  "$STRESS" $COMMON --duration="$DURATION" --idle_from=0s --idle_for=inf \
    --compare_static_split --seed="$i" >"$OUT/idle-$i.json"
  # shellcheck disable=SC2086
  "$STRESS" $COMMON --duration="$DURATION" --seed="$i" >"$OUT/busy-$i.json"
  # shellcheck disable=SC2086
  "$STRESS" $COMMON --duration=24s --idle_from=8s --idle_for=8s --seed="$i" >"$OUT/window-$i.json"
done
echo
echo "measured $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" describe --always --dirty --abbrev=7 2>/dev/null || echo '?')," \
  "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg); budget 8 per worker, 2 workers, 2 coordinators x 8 clients, runs of $DURATION"
python3 "$ROOT/bench/budget_table.py" $CHECK \
  --idle "$OUT"/idle-1.json "$OUT"/idle-2.json "$OUT"/idle-3.json \
  --busy "$OUT"/busy-1.json "$OUT"/busy-2.json "$OUT"/busy-3.json \
  --window "$OUT"/window-1.json "$OUT"/window-2.json "$OUT"/window-3.json
