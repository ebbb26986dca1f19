#!/bin/sh
# The test command: installs dependencies, then configures, builds and runs
# every test — first the sanitizer builds (AddressSanitizer+UBSan over every
# core test, ThreadSanitizer over the threaded ones), then the regular build,
# whose ctest summary is the last thing printed. Exits non-zero on any failure.
#
#   sudo ./scripts/test.sh            (as root on a fresh Debian 12 machine)
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=$(nproc)

"$ROOT/scripts/install-deps.sh"

configure_and_build() {
  dir=$1
  shift
  cmake -S "$ROOT" -B "$ROOT/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$ROOT/$dir" -j"$JOBS"
}

echo "== AddressSanitizer + UndefinedBehaviorSanitizer: core tests"
configure_and_build build-asan -DCONNTHROTTLE_ASAN=ON -DCONNTHROTTLE_BUILD_BENCHMARKS=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$ROOT/build-asan" -L core --output-on-failure -j"$JOBS"

echo "== ThreadSanitizer: threaded core tests"
configure_and_build build-tsan -DCONNTHROTTLE_TSAN=ON -DCONNTHROTTLE_BUILD_BENCHMARKS=OFF
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir "$ROOT/build-tsan" -L threads --output-on-failure -j"$JOBS"

echo "== Regular build: every test"
configure_and_build build
ctest --test-dir "$ROOT/build" --output-on-failure -j"$JOBS"
