#!/bin/sh
# Model-checks model/connthrottle.pml with spin. Exits non-zero on any
# violation, on an incomplete exhaustive search, or when spin does NOT find
# a second believed holder of an entry lock in a bug variant.
#
#   model/check.sh            quick: the bug variants ABA_BUG and
#                             NO_JUDGE_HAZARD must be refuted (exhaustive
#                             search, stops at the violation, seconds), then
#                             time-boxed supertrace (bitstate) runs of the
#                             protocol: NOT exhaustive (README, "Running")
#   model/check.sh --full     exhaustive runs (-DCOLLAPSE); hours, GBs
#   model/check.sh --bug      ABA_BUG, LOCK_OWNER and NO_JUDGE_HAZARD: spin
#                             must find a second believed holder of an
#                             entry lock
#
# Work files go to a temporary directory (or $MODEL_WORKDIR).
set -eu
MODEL=$(cd "$(dirname "$0")" && pwd)/connthrottle.pml
MODE=${1:---quick}
WORK=${MODEL_WORKDIR:-$(mktemp -d)}
[ -n "${MODEL_WORKDIR:-}" ] || trap 'rm -rf "$WORK"' EXIT
command -v spin >/dev/null || { echo "check.sh: spin is not installed (apt-get install spin)"; exit 2; }
CC=${CC:-cc}
MEMLIM=${MODEL_MEMLIM:-3000}  # MB

# run NAME KIND DEFINES...: KIND is safety or liveness; prints spin's figures
# and leaves pan's output in $WORK/NAME/out. With $SEARCH=bitstate the
# search is a supertrace (bitstate hashing, an under-approximation) stopped
# after $BUDGET seconds; with exhaustive it is a full search (-DCOLLAPSE,
# lossless compression) that must complete.
run() {
  name=$1 kind=$2
  shift 2
  dir=$WORK/$name
  mkdir -p "$dir"
  cp "$MODEL" "$dir/"
  (cd "$dir" && spin "$@" -a connthrottle.pml >spin.out 2>&1) || { cat "$dir/spin.out"; return 1; }
  if [ "$kind" = safety ]; then
    flags="-DNOCLAIM -DSAFETY"
    runflags=""
  else
    flags="-DNFAIR=4"
    runflags="-a -f"
  fi
  if [ "$SEARCH" = bitstate ]; then
    flags="$flags -DBITSTATE"
    runflags="$runflags -w28"
    limit="timeout -s INT $BUDGET"
  else
    flags="$flags -DCOLLAPSE -DMEMLIM=$MEMLIM"
    limit=${BUG_LIMIT:+timeout -s INT $BUG_LIMIT}
  fi
  # shellcheck disable=SC2086
  (cd "$dir" && $CC -O2 -w $flags -o pan pan.c)
  start=$(date +%s)
  # shellcheck disable=SC2086
  (cd "$dir" && $limit ./pan -m1000000 $runflags >out 2>&1) || true
  end=$(date +%s)
  stored=$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$dir/out")
  depth=$(sed -n 's/.*depth reached \([0-9]*\).*/\1/p' "$dir/out")
  errors=$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$dir/out")
  elapsed=$(sed -n 's/^pan: elapsed time \([0-9.e+]*\).*/\1/p' "$dir/out")
  echo "$name ($kind $*): states stored $stored, depth $depth, errors ${errors:-?}, pan ${elapsed:-?} s (wall $((end - start)) s)"
}

incomplete() { grep -q "Search not completed" "$WORK/$1/out"; }
failed() { ! grep -q "errors: 0" "$WORK/$1/out"; }

expect_pass() {
  if failed "$1" || { [ "$SEARCH" = exhaustive ] && incomplete "$1"; }; then
    echo "FAIL: $1"
    grep -E "violated|acceptance cycle|invalid end state|Search not completed|error" "$WORK/$1/out" | head -5
    echo "  replay: set MODEL_WORKDIR to keep the work files, then" \
      "(cd \$MODEL_WORKDIR/$1 && spin -t -p connthrottle.pml)"
    status=1
  fi
}

expect_violation() {
  if grep -q "assertion violated.*believe" "$WORK/$1/out"; then
    echo "ok: $1: spin found a second believed holder of an entry lock"
  else
    echo "FAIL: $1: spin did not find the entry-lock ABA"
    status=1
  fi
}

status=0
SEARCH=exhaustive
BUDGET=${MODEL_BUDGET:-50}  # seconds per bitstate run in --quick
BUG_LIMIT=600               # seconds a bug variant may take to be refuted
case "$MODE" in
  --quick)
    # Not exhaustive (see README): the bug variants, which spin refutes in
    # seconds, then time-boxed supertrace runs.
    run aba_bug safety -DABA_BUG -DOPS=1 -DMAXDEATH=0 && expect_violation aba_bug
    run no_judge_hazard safety -DNO_JUDGE_HAZARD -DOPS=1 -DMAXDEATH=1 && expect_violation no_judge_hazard
    BUG_LIMIT=
    SEARCH=bitstate
    run safety_death safety -DOPS=1 -DMAXDEATH=1 -DFORCED -DGIVEUP && expect_pass safety_death
    run safety_zombie safety -DE=1 -DOPS=1 -DMAXDEATH=1 -DGIVEUP && expect_pass safety_zombie
    run liveness liveness -DOPS=1 -DMAXDEATH=0 && expect_pass liveness
    ;;
  --full)
    BUG_LIMIT=
    run safety_full safety -DOPS=2 -DMAXDEATH=1 && expect_pass safety_full
    run safety_full_forced safety -DOPS=2 -DMAXDEATH=1 -DFORCED -DGIVEUP && expect_pass safety_full_forced
    run safety_full_zombie safety -DE=1 -DOPS=2 -DMAXDEATH=1 -DFORCED -DGIVEUP && expect_pass safety_full_zombie
    run safety_two_deaths safety -DOPS=1 -DMAXDEATH=2 && expect_pass safety_two_deaths
    run liveness_full liveness -DOPS=2 -DMAXDEATH=0 -DGIVEUP && expect_pass liveness_full
    run liveness_death liveness -DOPS=1 -DMAXDEATH=1 && expect_pass liveness_death
    ;;
  --bug)
    run aba_bug safety -DABA_BUG -DOPS=2 -DMAXDEATH=0 && expect_violation aba_bug
    run lock_owner safety -DLOCK_OWNER -DOPS=2 -DMAXDEATH=0 && expect_violation lock_owner
    run no_judge_hazard safety -DNO_JUDGE_HAZARD -DOPS=1 -DMAXDEATH=1 && expect_violation no_judge_hazard
    ;;
  *)
    echo "usage: $0 [--quick|--full|--bug]" >&2
    exit 2
    ;;
esac
[ "$status" = 0 ] && echo "model check $MODE: passed" || echo "model check $MODE: FAILED"
exit "$status"
