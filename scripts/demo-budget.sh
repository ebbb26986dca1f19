#!/bin/sh
# The second demo (issue 28): one budget per worker across coordinators. On a
# fresh Debian 12 machine, as root: installs the packages, builds connthrottle,
# installs the extension, and runs connthrottle-stress with its own local
# cluster of two coordinators and two workers. Each worker keeps a budget of 8
# connections (connthrottle.worker_budget) and admits no coordinator
# connection without a lease; each coordinator may use all 8
# (max_shared_pool_size) and leases what the worker grants. Coordinator c2
# goes idle from 10 s to 20 s of the 30 s run: the monitor samples each
# worker's pg_stat_activity every 10 ms and judges every sample's sum over both
# coordinators against the budget, and the report shows c2's share going to c1
# and coming back (the time each took), then the same workload on a static
# split (4 each, no leases) beside it. The report, the JSON, the series and
# chart.png (connections per coordinator and worker, completions per second
# per coordinator) go to demo-budget/.
#
#   ./scripts/demo-budget.sh                 (as root; extra arguments go to the driver)
#   ./scripts/demo-budget.sh --duration=60s --idle_from=20s --idle_for=20s
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

"$ROOT/scripts/install-deps.sh"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" --target connthrottle_pg connthrottle-stress
cmake --install "$ROOT/build" --component postgresql >/dev/null

# The fan-out tasks wait 10 ms each (--fanout_task=sleep): work bound by the
# connections, as remote queries waiting on I/O are, so that a larger share
# shows as more throughput on a two-core machine. Timing is reported, not
# judged (see demo.sh).
exec "$ROOT/build/bench/stress/connthrottle-stress" --coordinators=2 --worker_budget=8 \
  --limit=8 --clients=16 --workers=2 --worker_max_connections=30 --duration=30s \
  --idle_from=10s --idle_for=10s --mix=fanout=3,router=1 --fanout_task=sleep \
  --compare_static_split --judge_timing=false --out="$ROOT/demo-budget" "$@"
