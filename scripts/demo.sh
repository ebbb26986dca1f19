#!/bin/sh
# The main job: on a fresh Debian 12 machine, as root, installs the packages,
# builds connthrottle, installs the extension into PostgreSQL 15, and runs the
# demo — connthrottle-stress with its own local cluster (a coordinator and two
# workers), a mixed workload (fan-out, router and COPY) for 30 seconds
# through the direct transport, then with throttling off, then throttled
# through the shared pool (the communicator), side by side. The report, the JSON,
# the connection time series and chart.png go to demo/.
#
#   ./scripts/demo.sh                 (as root; extra arguments go to the driver)
#   ./scripts/demo.sh --duration=10s --clients=64
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

"$ROOT/scripts/install-deps.sh"
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$ROOT/build" -j"$(nproc)" --target connthrottle_pg connthrottle-stress
cmake --install "$ROOT/build" --component postgresql >/dev/null

# Timing (the monitor's cadence, a client completing nothing for 5 s) is
# reported, not judged: on a busy machine it says more about the machine than
# about connthrottle. Pass --judge_timing=true to judge it too.
exec "$ROOT/build/bench/stress/connthrottle-stress" --duration=30s --compare_unthrottled \
  --compare_transports \
  --judge_timing=false --out="$ROOT/demo" "$@"
