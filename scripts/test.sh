#!/bin/sh
# The test command: installs dependencies, then configures, builds and runs
# every test — first the sanitizer builds (AddressSanitizer+UBSan over the
# core, executor and shared pool tests, ThreadSanitizer over the core and
# shared pool tests), then the
# regular build (every test: core, extension, executor, stress smoke runs),
# whose ctest summary is the last thing printed. Every stage runs even when an
# earlier one failed; the script exits non-zero if any stage failed.
#
#   ./scripts/test.sh          as root (a fresh Debian 12 machine has no sudo)
#   sudo ./scripts/test.sh     as a user with sudo
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=$(nproc)

"$ROOT/scripts/install-deps.sh" || exit 1

failed=""
configure_and_build() {
  dir=$1
  shift
  cmake -S "$ROOT" -B "$ROOT/$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null &&
    cmake --build "$ROOT/$dir" -j"$JOBS"
}

# The sanitizer builds leave the extension out: PostgreSQL cannot load an
# instrumented module. The executor's test runs there against plain servers.
SANITIZED="-DCONNTHROTTLE_BUILD_BENCHMARKS=OFF -DCONNTHROTTLE_BUILD_EXTENSION=OFF"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer: core and executor tests"
# shellcheck disable=SC2086
if configure_and_build build-asan -DCONNTHROTTLE_ASAN=ON $SANITIZED; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$ROOT/build-asan" -L 'core|postgres' --no-tests=error --output-on-failure \
    -j"$JOBS" || failed="$failed asan"
else
  failed="$failed asan-build"
fi

echo "== ThreadSanitizer: core tests (threads and processes) and the shared pool's"
# shellcheck disable=SC2086
if configure_and_build build-tsan -DCONNTHROTTLE_TSAN=ON $SANITIZED; then
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir "$ROOT/build-tsan" -L 'core|tsan' --no-tests=error --output-on-failure \
    -j"$JOBS" || failed="$failed tsan"
else
  failed="$failed tsan-build"
fi

echo "== Regular build: every test"
if configure_and_build build; then
  ctest --test-dir "$ROOT/build" --output-on-failure -j"$JOBS" || failed="$failed regular"
else
  failed="$failed regular-build"
fi

if [ -n "$failed" ]; then
  echo "connthrottle: FAILED stages:$failed (see their ctest output above)"
  exit 1
fi
