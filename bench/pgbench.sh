#!/bin/sh
# Issue 11's workload with pgbench as the client: a coordinator with the
# extension, 2 workers (max_connections 60), connthrottle.max_shared_pool_size
# 40, 32 shard tables (shard_0..shard_31, even ones on worker 1, odd ones on
# worker 2). For each workload and client count, three pgbench runs of
# DURATION seconds: throttled through the direct transport, throttled through
# the shared pool (connthrottle.executor_transport = shared_pool), and
# unthrottled (direct, max_shared_pool_size = -1); prints TPS, p50 latency and
# worker backends started per transaction (the workers' "connection
# received" log lines, every attempt included), the peak of coordinator
# connections on the busiest worker (its pg_stat_activity, sampled every
# 50 ms by one psql session per worker), Jain's fairness index over the
# clients' completed transactions and the longest time a client completed
# nothing (both from pgbench's per-transaction log), the CPU time per
# transaction of the coordinator's backends, the communicator and the
# workers (from /proc: each server's processes, its exited backends
# included), with the date, commit and machine. Each cell
# runs RUNS times (3), the modes taking turns; TPS is printed as the median
# (min-max), the other columns as the median (p50) or the worst run. All
# cells at 3 runs take about 55 minutes.
#
#   bench/pgbench.sh                       # every workload at 1, 8, 64, 128 clients, 30 s
#   RUNS=5 CLIENTS="64 128" WORKLOADS=fanout bench/pgbench.sh
#   CLIENTS="8 64" DURATION=10 WORKLOADS="fanout router" bench/pgbench.sh
#   MODES="pool unthrottled" CLIENTS=64 WORKLOADS=router bench/pgbench.sh
#   COORDINATOR_SETTINGS="connthrottle.max_adaptive_executor_pool_size = 8" MODES=pool bench/pgbench.sh
#
# Workloads: fanout (one run_tasks of 32 tasks, a count(*) per shard),
# router (one run_tasks of one single-row task on a random shard), copy
# (distribute of COPY_ROWS rows, 1,000 unless set, over both workers;
# through the pool in `pool` mode, as run_tasks). Needs the extension
# installed (scripts/demo.sh or `cmake --install build --component
# postgresql`) and pgbench (postgresql-client-15). As root the servers run as
# the user `connthrottle` (scripts/install-deps.sh creates it).
set -eu
CLIENTS=${CLIENTS:-"1 8 64 128"}
DURATION=${DURATION:-30}
# Seconds of the same workload before each measured run, not counted: the
# figures are the steady state (the shared pool's connections are opened,
# the direct transport's caches filled).
WARMUP=${WARMUP:-5}
WORKLOADS=${WORKLOADS:-"fanout router copy"}
# Runs of each cell: TPS is printed as the median (min-max), the ratios are
# of the medians.
RUNS=${RUNS:-3}
MODES=${MODES:-"direct pool unthrottled"}
COPY_ROWS=${COPY_ROWS:-1000}
LIMIT=${LIMIT:-40}
SRC=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=$(pg_config --bindir)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/connthrottle-pgbench.XXXXXX")
BASE=${BASE_PORT:-$((26000 + $$ % 2000 * 4))}
CPORT=$BASE
W1=$((BASE + 1))
W2=$((BASE + 2))

as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u connthrottle -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown connthrottle "$WORK"

stop_all() {
  for n in coordinator worker1 worker2; do
    [ -d "$WORK/$n" ] && as_server "$PGBIN/pg_ctl" -D "$WORK/$n" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap stop_all EXIT INT TERM

start_server() {  # name port max_connections extra-settings
  as_server "$PGBIN/initdb" -D "$WORK/$1" -A trust -U postgres -E UTF8 --no-sync \
    --no-instructions >"$WORK/$1.initdb.log" 2>&1
  cat >>"$WORK/$1/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$WORK'
max_connections = $3
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = '64MB'
log_connections = on
$4
EOF
  as_server "$PGBIN/pg_ctl" -D "$WORK/$1" -l "$WORK/$1.log" -w start >/dev/null || {
    echo "pgbench.sh: $1 did not start on port $2; its log:" >&2
    cat "$WORK/$1.log" >&2
    exit 1
  }
}

q() {  # port sql
  "$PGBIN/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2"
}

start_server worker1 "$W1" 60 ""
start_server worker2 "$W2" 60 ""
start_server coordinator "$CPORT" 300 "shared_preload_libraries = 'connthrottle'
connthrottle.max_shared_pool_size = $LIMIT
${COORDINATOR_SETTINGS:-}"
q "$CPORT" "CREATE EXTENSION connthrottle" >/dev/null
q "$CPORT" "SELECT connthrottle.add_node('127.0.0.1', $W1), connthrottle.add_node('127.0.0.1', $W2)" >/dev/null
for s in $(seq 0 31); do
  port=$W1
  [ $((s % 2)) = 1 ] && port=$W2
  q "$port" "CREATE TABLE shard_$s AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g;
             CREATE UNIQUE INDEX ON shard_$s (id)" >/dev/null
done
for port in "$W1" "$W2"; do q "$port" "CREATE TABLE copy_target(id int, v text)" >/dev/null; done

# The pgbench scripts.
hosts="" ports="" tasks=""
for s in $(seq 0 31); do
  port=$W1
  [ $((s % 2)) = 1 ] && port=$W2
  hosts="$hosts${hosts:+,}'127.0.0.1'"
  ports="$ports${ports:+,}$port"
  tasks="$tasks${tasks:+,}'SELECT count(*) FROM shard_$s'"
done
cat >"$WORK/fanout.sql" <<EOF
SELECT count(*) FROM connthrottle.run_tasks(ARRAY[$hosts], ARRAY[$ports], ARRAY[$tasks]) WHERE success;
EOF
cat >"$WORK/router.sql" <<EOF
\\set s random(0, 31)
\\set id random(1, 1000)
\\set port $W1 + :s % 2
SELECT result FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[:port],
  ARRAY['SELECT v FROM shard_' || :s || ' WHERE id = ' || :id]);
EOF
cat >"$WORK/copy.sql" <<EOF
SELECT sum(rows) FROM connthrottle.distribute('SELECT g, ''row '' || g FROM generate_series(1, $COPY_ROWS) g',
  'copy_target', ARRAY['127.0.0.1', '127.0.0.1'], ARRAY[$W1, $W2]);
EOF

# CPU time (clock ticks) a server has used so far, its exited backends
# included (the postmaster's cutime/cstime), and the communicator's alone:
# "total communicator".
cpu_of() {  # server name
  pm=$(head -1 "$WORK/$1/postmaster.pid")
  total=0 comm=0
  for pid in "$pm" $(pgrep -P "$pm"); do
    # Fields after the command's closing parenthesis: utime is the 12th.
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk -v pm="$pm" -v p="$pid" \
      '{ print $12 + $13 + (p == pm ? $14 + $15 : 0) }') || t=0
    total=$((total + ${t:-0}))
    grep -q 'connthrottle communicator' "/proc/$pid/cmdline" 2>/dev/null && comm=$((comm + ${t:-0}))
  done
  echo "$total $comm"
}
cpu_now() {  # coordinator-without-communicator communicator workers
  set -- $(cpu_of coordinator) $(cpu_of worker1) $(cpu_of worker2)
  echo "$(($1 - $2)) $2 $(($3 + $5))"
}
# Microseconds per transaction from two cpu_now samples: "coordinator
# backends/communicator/workers".
cpu_per() {  # transactions before... after...
  awk -v n="$1" -v hz="$(getconf CLK_TCK)" -v b1="$2" -v b2="$3" -v b3="$4" -v a1="$5" -v a2="$6" -v a3="$7" \
    'BEGIN { if (n <= 0) { print "-"; exit }
      f = 1e6 / hz / n; printf "%.0f/%.0f/%.0f", (a1 - b1) * f, (a2 - b2) * f, (a3 - b3) * f }'
}

received() {  # connection attempts the workers have logged so far
  cat "$WORK/worker1.log" "$WORK/worker2.log" | grep -c "connection received" || true
}

echo "connthrottle pgbench: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$SRC" describe --always --dirty --abbrev=7 2>/dev/null || echo '?')," \
  "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "limit $LIMIT, workers' max_connections 60, 32 shards over 2 workers, ${DURATION} s per run after ${WARMUP} s of warm-up, $RUNS run(s) per cell, copy of $COPY_ROWS rows"
echo
# The peak of connthrottle's connections on either worker, sampled until the
# file $WORK/sampling disappears.
sample_peak() {
  for port in "$W1" "$W2"; do
    (
      "$PGBIN/psql" -X -q -A -t -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        >"$WORK/peak.$port" 2>/dev/null <<'EOF' &
SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' \watch 0.05
EOF
      watcher=$!
      while [ -e "$WORK/sampling" ]; do sleep 0.2; done
      kill "$watcher" 2>/dev/null
      wait "$watcher" 2>/dev/null
    ) &
  done
}
peak_of() { cat "$WORK"/peak.* 2>/dev/null | sort -n | tail -1; }

# Jain's index over the clients' transactions, and the longest time (s) a
# client completed nothing: from the run's start (the earliest transaction's
# start) to its first completion, between two, and from its last to the
# run's last. pgbench's log: client, transaction, latency (us), script,
# completion time (s, us).
fairness() {
  cat "$WORK"/pgbench_log.* 2>/dev/null | awk '
    { t = $5 + $6 / 1e6; c = $1; n[c]++
      if (!(c in last)) first[c] = t; else if (t - last[c] > gap[c]) gap[c] = t - last[c]
      last[c] = t; s = t - $3 / 1e6; if (start == "" || s < start) start = s; if (t > end) end = t }
    END { if (length(n) == 0) { print "- -"; exit }
      for (c in n) { sum += n[c]; sq += n[c] * n[c]; k++
        g = gap[c]; if (first[c] - start > g) g = first[c] - start; if (end - last[c] > g) g = end - last[c]
        if (g > worst) worst = g }
      printf "%.3f %.1f\n", sum * sum / (k * sq), worst }'
}

# Summaries over the runs of one cell (space-separated values; "-" ignored).
summary() {  # median|min|max|sum printf-format values...
  what=$1 format=$2
  shift 2
  printf '%s\n' "$@" | grep -v '^-$' | grep -v '^$' | sort -g | awk -v w="$what" -v f="$format" '
    { a[NR] = $1; s += $1 }
    END { if (NR == 0) { print "-"; exit }
      if (w == "median") v = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      else if (w == "min") v = a[1]
      else if (w == "max") v = a[NR]
      else v = s
      printf f "\n", v }'
}
# "median (min-max)" over the runs, or the one value.
spread() {
  [ "$RUNS" -gt 1 ] && [ "$(summary median %.0f "$@")" != - ] || { summary median %.0f "$@"; return; }
  echo "$(summary median %.0f "$@") ($(summary min %.0f "$@")-$(summary max %.0f "$@"))"
}
ratio() { awk -v t="$1" -v u="$2" 'BEGIN {if (t != "-" && u > 0) printf "%.2f", t / u; else print "-"}'; }

echo "| workload | clients | direct TPS | pool TPS | unthrottled TPS | pool / unthrottled | pool / direct | p50 ms, direct / pool / unthrottled | worker backends per transaction, direct / pool / unthrottled | failed, direct / pool / unthrottled | peak connections, busiest worker, direct / pool | Jain, direct / pool / unthrottled | longest idle client s, direct / pool / unthrottled | CPU µs per transaction (coordinator backends/communicator/workers), direct / pool |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | --- | --- | --- |"
for w in $WORKLOADS; do
  for c in $CLIENTS; do
    for mode in direct pool unthrottled; do
      eval "tps_$mode='' p50_$mode='' per_$mode='' failed_$mode='' peak_$mode='' jain_$mode='' idle_$mode='' cpu_$mode=''"
    done
    # The modes take turns run by run, so that a drift of the machine's
    # speed falls on all of them.
    run=0
    while [ "$run" -lt "$RUNS" ]; do
      run=$((run + 1))
      for mode in $MODES; do
        limit=$LIMIT transport=direct
        [ "$mode" = unthrottled ] && limit=-1
        [ "$mode" = pool ] && transport=shared_pool
        q "$CPORT" "ALTER SYSTEM SET connthrottle.max_shared_pool_size = $limit" >/dev/null
        q "$CPORT" "ALTER SYSTEM SET connthrottle.executor_transport = $transport" >/dev/null
        q "$CPORT" "SELECT pg_reload_conf()" >/dev/null
        # New backends (pgbench's) see the settings once the postmaster has reloaded.
        until [ "$(q "$CPORT" "SHOW connthrottle.max_shared_pool_size")" = "$limit" ] &&
          [ "$(q "$CPORT" "SHOW connthrottle.executor_transport")" = "$transport" ]; do :; done
        "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CPORT" -U postgres -c "$c" -j 2 -T "$WARMUP" \
          -f "$WORK/$w.sql" postgres >/dev/null 2>&1 || true
        before=$(received)
        cpu_before=$(cpu_now)
        rm -f "$WORK"/pgbench_log.* "$WORK"/peak.*
        touch "$WORK/sampling"
        sample_peak
        out="$WORK/$w-$c-$mode-$run.out"
        (cd "$WORK" && "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CPORT" -U postgres -c "$c" -j 2 \
          -T "$DURATION" -f "$WORK/$w.sql" -l --log-prefix=pgbench_log postgres \
          >"$out" 2>&1) || true
        cpu_after=$(cpu_now)
        rm -f "$WORK/sampling"
        wait
        after=$(received)
        peak=$(peak_of)
        set -- $(fairness)
        jain=$1 idle=$2
        tps=$(sed -n 's/^tps = \([0-9]*\)\.[0-9]* (without initial connection time)/\1/p' "$out")
        n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
        failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
        # Per-transaction log: the third field is the latency in microseconds.
        p50=$(cat "$WORK"/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n |
          awk '{a[NR] = $1} END {if (NR) printf "%.1f", a[int((NR + 1) / 2)] / 1000; else print "-"}')
        cpu=$(cpu_per "${n:-0}" $cpu_before $cpu_after)
        per=$(awk -v b="$before" -v a="$after" -v n="${n:-0}" 'BEGIN {if (n > 0) printf "%.3f", (a - b) / n; else print "-"}')
        eval "tps_$mode=\"\$tps_$mode \${tps:-0}\" p50_$mode=\"\$p50_$mode \$p50\"
          per_$mode=\"\$per_$mode \$per\" failed_$mode=\"\$failed_$mode \${failed:-0}\"
          peak_$mode=\"\$peak_$mode \${peak:--}\" jain_$mode=\"\$jain_$mode \$jain\"
          idle_$mode=\"\$idle_$mode \$idle\" cpu_$mode=\"\$cpu_$mode \$cpu\""
      done
    done
    # TPS: median (range); p50: median; worker backends per transaction,
    # peak and longest idle: the worst run; failed: all runs; Jain: the
    # least fair run. The ratios are of the medians.
    for mode in direct pool unthrottled; do
      eval "set -- \$tps_$mode"
      eval "TPS_$mode=\$(spread \"\$@\") MED_$mode=\$(summary median %.0f \"\$@\")"
      eval "set -- \$p50_$mode"
      eval "P50_$mode=\$(summary median %.1f \"\$@\")"
      eval "set -- \$per_$mode"
      eval "PER_$mode=\$(summary max %.3f \"\$@\")"
      eval "set -- \$failed_$mode"
      eval "FAILED_$mode=\$(summary sum %d \"\$@\")"
      eval "set -- \$peak_$mode"
      eval "PEAK_$mode=\$(summary max %d \"\$@\")"
      eval "set -- \$jain_$mode"
      eval "JAIN_$mode=\$(summary min %.3f \"\$@\")"
      eval "set -- \$idle_$mode"
      eval "IDLE_$mode=\$(summary max %.1f \"\$@\")"
      # CPU: the run whose total is the median.
      eval "set -- \$cpu_$mode"
      eval "CPU_$mode=\$(printf '%s\n' \"\$@\" | grep / | awk -F/ '{ print \$1 + \$2 + \$3, \$0 }' | sort -n |
        awk '{ a[NR] = \$2 } END { print NR ? a[int((NR + 1) / 2)] : \"-\" }')"
    done
    echo "| $w | $c | $TPS_direct | $TPS_pool | $TPS_unthrottled | $(ratio "$MED_pool" "$MED_unthrottled") | $(ratio "$MED_pool" "$MED_direct") | $P50_direct / $P50_pool / $P50_unthrottled | $PER_direct / $PER_pool / $PER_unthrottled | $FAILED_direct / $FAILED_pool / $FAILED_unthrottled | $PEAK_direct / $PEAK_pool | $JAIN_direct / $JAIN_pool / $JAIN_unthrottled | $IDLE_direct / $IDLE_pool / $IDLE_unthrottled | $CPU_direct / $CPU_pool |"
  done
done
