--
-- slots: optional, forced and released slots, and the statistics that show
-- them. connthrottle.conf sets max_shared_pool_size = 2 and
-- max_tracked_nodes = 64. The nodes used here are not this server, so the
-- remote limit (2) applies.
--
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
SHOW connthrottle.max_shared_pool_size;
-- Table-wide cumulative figures include earlier suites: remember them.
SELECT entries_created AS created0, entries_dropped AS dropped0, acquired AS acquired0,
       refused AS refused0, forced_total AS forced0, full_table_events AS full0,
       wakeups AS wakeups0
  FROM connthrottle.table_stats() \gset
-- Two slots, then the limit refuses the third optional acquire.
SELECT connthrottle.try_acquire('slot-a', 5432);
SELECT connthrottle.try_acquire('slot-a', 5432);
SELECT connthrottle.try_acquire('slot-a', 5432);
-- A forced acquire is granted above the limit and counted as forced.
SELECT connthrottle.force_acquire('slot-a', 5432);
-- Another database of the same node shares the node's limit: refused too.
SELECT connthrottle.try_acquire('slot-a', 5432, 'postgres');
-- Another node has its own.
SELECT connthrottle.try_acquire('slot-b', 5432, 'postgres');
-- Every column of node_stats (wait_time exact: no acquire here ever waits).
SELECT host, port, connections, forced,
       reserved, waiters, acquired, refused, waited, wait_time, forced_total, wakeups
  FROM connthrottle.node_stats() ORDER BY host, port;
-- The nodes view shows the same.
\d connthrottle.nodes
SELECT host, port, connections, forced, reserved, waiters, acquired, refused
  FROM connthrottle.nodes ORDER BY host, port;
-- This session's slots, oldest first.
SELECT * FROM connthrottle.session_slots();
-- The holders view names this backend for each node it holds slots of.
SELECT pid = pg_backend_pid() AS me, host, port, connections, forced, reserved, waiting
  FROM connthrottle.holders ORDER BY host, port;
SELECT connthrottle.audit();
-- release() gives back the most recent slot for the node: the forced one.
SELECT connthrottle.release('slot-a', 5432);
SELECT host, connections, forced, acquired, refused, forced_total
  FROM connthrottle.node_stats() ORDER BY host, port;
SELECT * FROM connthrottle.session_slots();
-- Still at the limit (2 connections): refused.
SELECT connthrottle.try_acquire('slot-a', 5432);
-- Below it after one more release: granted.
SELECT connthrottle.release('slot-a', 5432);
SELECT connthrottle.try_acquire('slot-a', 5432);
-- Nothing held for these: release() says so and changes nothing.
SELECT connthrottle.release('slot-c', 5432);
SELECT connthrottle.release('slot-a', 5433);
SELECT connthrottle.release('slot-a', 5432, 'template1');
SELECT host, connections FROM connthrottle.node_stats() ORDER BY host, port;
-- release_all() gives back everything and says how many.
SELECT connthrottle.release_all();
SELECT connthrottle.release_all();
SELECT * FROM connthrottle.session_slots();
-- An entry whose count reaches zero is not listed and no longer in use.
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT entries_in_use, uncounted_in_use,
       entries_created - :created0 AS created, entries_dropped - :dropped0 AS dropped,
       acquired - :acquired0 AS acquired, refused - :refused0 AS refused,
       forced_total - :forced0 AS forced_total
  FROM connthrottle.table_stats();
-- A key that comes back finds its entry (a zombie since its count fell to
-- zero) and its cumulative figures with it; they restart only when the entry
-- has been given to another key.
SELECT connthrottle.try_acquire('slot-a', 5432);
SELECT host, connections, acquired, refused, forced_total FROM connthrottle.node_stats();
SELECT connthrottle.release('slot-a', 5432);
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
-- table_stats: every column (cumulative ones as deltas; owners counts the
-- registered backends, which includes this one).
SELECT capacity, entries_in_use, owners >= 1 AS owners_ok,
       max_owners = current_setting('max_connections')::int
                    + current_setting('autovacuum_max_workers')::int + 1
                    + current_setting('max_worker_processes')::int
                    + current_setting('max_wal_senders')::int AS max_owners_is_maxbackends,
       uncounted_in_use, full_table_events - :full0 AS full_table_events,
       entries_created - :created0 AS entries_created, entries_dropped - :dropped0 AS entries_dropped,
       acquired - :acquired0 AS acquired, refused - :refused0 AS refused,
       waited >= 0 AS waited_ok, wait_time >= '0' AS wait_time_ok,
       forced_total - :forced0 AS forced_total, wakeups - :wakeups0 AS wakeups
  FROM connthrottle.table_stats();
SELECT connthrottle.audit();
--
-- A full table: 64 busy keys fill it. Under full_table_policy
-- admit_uncounted (the default) a new key's connection is let through
-- uncounted, and the event is counted.
--
SELECT count(*) FILTER (WHERE connthrottle.try_acquire('slot-full', p)) AS granted
  FROM generate_series(1, 64) AS p;
SELECT entries_in_use, uncounted_in_use, full_table_events - :full0 AS full_table_events
  FROM connthrottle.table_stats();
SELECT connthrottle.try_acquire('slot-full', 65);
SELECT connthrottle.force_acquire('slot-full', 66);
SELECT host, port, kind FROM connthrottle.session_slots() WHERE port > 64;
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT entries_in_use, uncounted_in_use, full_table_events - :full0 AS full_table_events
  FROM connthrottle.table_stats();
SELECT connthrottle.audit();
SELECT connthrottle.release('slot-full', 65);
SELECT connthrottle.release('slot-full', 66);
SELECT entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
-- Under refuse, every way of taking a slot for a new key fails with 53400
-- (configuration_limit_exceeded), reservations included, and every event is
-- counted.
ALTER SYSTEM SET connthrottle.full_table_policy = 'refuse';
SELECT pg_reload_conf();
\set wait_setting connthrottle.full_table_policy
\set wait_value refuse
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.full_table_policy;
SELECT pg_temp.outcome($$SELECT connthrottle.try_acquire('slot-full', 65)$$);
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('slot-full', 65, timeout => '10ms')$$);
SELECT pg_temp.outcome($$SELECT connthrottle.force_acquire('slot-full', 65)$$);
BEGIN;
SELECT left(pg_temp.outcome($$SELECT connthrottle.try_reserve('slot-full', 65)$$), 5)
  AS sqlstate;
SELECT left(pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['slot-full'], ARRAY[65],
                                                          timeout => '10ms')$$), 5)
  AS sqlstate;
SELECT * FROM connthrottle.reservations();
COMMIT;
-- Keys already in the table are unaffected.
SELECT connthrottle.try_acquire('slot-full', 1);
SELECT entries_in_use, uncounted_in_use, full_table_events - :full0 AS full_table_events
  FROM connthrottle.table_stats();
ALTER SYSTEM RESET connthrottle.full_table_policy;
SELECT pg_reload_conf();
\set wait_value admit_uncounted
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.full_table_policy;
SELECT connthrottle.release_all();
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
SELECT connthrottle.audit();
DROP EXTENSION connthrottle;
