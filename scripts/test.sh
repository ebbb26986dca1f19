#!/bin/sh
# The test command: installs dependencies, then configures, builds and runs
# every test — first the sanitizer builds (AddressSanitizer+UBSan over the
# core and executor tests, ThreadSanitizer over the core tests), then the
# regular build (every test: core, extension, executor, stress smoke runs),
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

# The sanitizer builds leave the extension out: PostgreSQL cannot load an
# instrumented module. The executor's test runs there against plain servers.
SANITIZED="-DCONNTHROTTLE_BUILD_BENCHMARKS=OFF -DCONNTHROTTLE_BUILD_EXTENSION=OFF"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer: core and executor tests"
# shellcheck disable=SC2086
configure_and_build build-asan -DCONNTHROTTLE_ASAN=ON $SANITIZED
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$ROOT/build-asan" -L 'core|postgres' --no-tests=error --output-on-failure \
  -j"$JOBS"

echo "== ThreadSanitizer: core tests (threads and processes)"
# shellcheck disable=SC2086
configure_and_build build-tsan -DCONNTHROTTLE_TSAN=ON $SANITIZED
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir "$ROOT/build-tsan" -L core --no-tests=error --output-on-failure -j"$JOBS"

echo "== Regular build: every test"
configure_and_build build
ctest --test-dir "$ROOT/build" --output-on-failure -j"$JOBS"
