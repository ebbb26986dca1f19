#!/bin/sh
# Runs the connthrottle pg_regress suites on a temporary instance that
# preloads the extension (connthrottle.conf).
#   run.sh <source dir> <build dir>
# The extension must already be installed into the server (ctest fixture
# install_extension). PostgreSQL refuses to run as root: as root, the suites
# run as the unprivileged user connthrottle (CONNTHROTTLE_REGRESS_USER) from a
# copy of tests/regress in a fresh temporary directory it owns, since it may
# not be able to read the source tree. Prints pg_regress's summary; on failure
# prints regression.diffs and keeps the temporary directory for inspection.
set -eu

if [ $# -ne 2 ]; then
  echo "usage: $0 <source dir> <build dir>" >&2
  exit 2
fi
source_dir=$1
build_dir=$2  # unused for now: the installed extension is what is tested
: "$build_dir"

suites="create_extension guc slots waiting reservations privileges bad_input local_node hardening"

pg_config=${PG_CONFIG:-pg_config}
bindir=$("$pg_config" --bindir)
pg_regress=$("$pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress
if [ ! -x "$pg_regress" ]; then
  echo "$0: pg_regress not found at $pg_regress" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/connthrottle-regress.XXXXXX")
keep=no
cleanup() {
  if [ "$keep" = no ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir "$work/input" "$work/output"
cp -R "$source_dir/tests/regress/sql" "$source_dir/tests/regress/expected" \
  "$source_dir/tests/regress/connthrottle.conf" "$work/input/"

run_as=
if [ "$(id -u)" -eq 0 ]; then
  user=${CONNTHROTTLE_REGRESS_USER:-connthrottle}
  if ! id "$user" >/dev/null 2>&1; then
    echo "$0: running as root needs the user $user (useradd --system --no-create-home" \
      "--shell /usr/sbin/nologin $user)" >&2
    exit 1
  fi
  chown -R "$user" "$work"
  run_as="runuser -u $user --"
  if ! $run_as test -w "$work/output"; then
    echo "$0: $user cannot write to $work (set TMPDIR to a directory it can reach)" >&2
    exit 1
  fi
fi

status=0
# TMPDIR: pg_regress puts the temporary instance's socket directory there.
# shellcheck disable=SC2086  # $run_as and $suites are word lists
(cd "$work" && TMPDIR=$work $run_as "$pg_regress" \
  --temp-instance="$work/output/tmp_check" \
  --temp-config="$work/input/connthrottle.conf" \
  --inputdir="$work/input" \
  --outputdir="$work/output" \
  --bindir="$bindir" \
  --dbname=contrib_regression \
  --no-locale --encoding=UTF8 \
  $suites) || status=$?

if [ "$status" -ne 0 ]; then
  keep=yes
  rm -rf "$work/output/tmp_check"  # the stopped instance's data directory
  if [ -f "$work/output/regression.diffs" ]; then
    echo "---- $work/output/regression.diffs ----"
    cat "$work/output/regression.diffs"
  fi
  # The server's log only when something went wrong beyond a difference.
  log=$work/output/log/postmaster.log
  if [ -f "$log" ] && { [ "$status" -ne 1 ] || grep -qE 'PANIC|terminated by signal' "$log"; }; then
    echo "---- last lines of $log ----"
    tail -n 40 "$log"
  fi
  echo "$0: pg_regress failed (exit $status); output kept in $work" >&2
  exit 1
fi
