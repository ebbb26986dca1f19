--
-- waiting: acquire() waits for a slot until its timeout, and fails with
-- 53300 (too_many_connections) naming the node when none frees. Other
-- backends hold and wait through dblink connections to this server.
-- connthrottle.conf: max_shared_pool_size = 2, connection_wait_timeout = 100ms.
--
CREATE EXTENSION connthrottle;
CREATE EXTENSION dblink;
-- A backstop: nothing here may hang the run.
SET statement_timeout = '60s';
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
-- Waits (in shared memory, which is live inside a statement) until `node`
-- has `waiters` queued waiters; 60 s at most (only a failing run waits long).
CREATE FUNCTION pg_temp.wait_for_waiters(node text, waiters int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..6000 LOOP
    IF coalesce((SELECT n.waiters FROM connthrottle.node_stats() n WHERE n.host = node), 0)
       = wait_for_waiters.waiters THEN
      RETURN;
    END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RAISE EXCEPTION 'node % never had % waiters', node, waiters;
END $$;
SELECT format('dbname=%s host=%s port=%s', current_database(),
              split_part(current_setting('unix_socket_directories'), ',', 1),
              current_setting('port')) AS connstr \gset
SELECT dblink_connect('holder', :'connstr');
SELECT dblink_connect('waiter', :'connstr');
SHOW connthrottle.connection_wait_timeout;
-- A free node: acquire() takes a slot at once.
SELECT connthrottle.acquire('wait-free', 5432);
SELECT connthrottle.acquire('wait-free', 5432, timeout => '50ms');
SELECT host, connections, waiters, acquired, refused, waited FROM connthrottle.node_stats();
SELECT connthrottle.release_all();
-- Another backend fills wait-full (limit 2).
SELECT * FROM dblink('holder', $$SELECT connthrottle.try_acquire('wait-full', 5432)::text
                                 FROM generate_series(1, 2)$$) AS t(granted text);
SELECT host, connections, waiters, acquired FROM connthrottle.node_stats();
-- A given timeout: the wait ends after it with 53300; the message names the
-- node and the detail the timeout given.
SELECT clock_timestamp() AS start \gset
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432, timeout => '50ms')$$);
SELECT clock_timestamp() - :'start' >= interval '50ms' AS waited_50ms,
       clock_timestamp() - :'start' < interval '30s' AS returned_promptly;
-- NULL timeout: connthrottle.connection_wait_timeout applies, and the detail
-- names it.
SELECT clock_timestamp() AS start \gset
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432)$$);
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432, timeout => NULL)$$);
SELECT clock_timestamp() - :'start' >= interval '200ms' AS waited_2x100ms;
SET connthrottle.connection_wait_timeout = '30ms';
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432)$$);
RESET connthrottle.connection_wait_timeout;
-- A timeout given explicitly is reported as given, even when it happens to
-- equal the setting.
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432, timeout => '100ms')$$);
-- A zero timeout does not wait; a negative one is refused (22023) before
-- anything is counted.
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432, timeout => '0')$$);
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432, timeout => '-1ms')$$);
-- statement_timeout ends a wait (connection_wait_timeout -1: no limit).
SET connthrottle.connection_wait_timeout = -1;
SET statement_timeout = '100ms';
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('wait-full', 5432)$$);
SET statement_timeout = '60s';
RESET connthrottle.connection_wait_timeout;
-- After the failed waits: nothing is queued or held by this session; the
-- holder's two slots are all there is. Seven waits queued: six timed out
-- (refused), and statement_timeout cancelled one (a cancel is not a refusal).
SELECT * FROM connthrottle.session_slots();
SELECT host, connections, forced, reserved, waiters, acquired, refused, waited,
       wait_time > '0' AS has_wait_time
  FROM connthrottle.node_stats();
SELECT connthrottle.audit();
--
-- A release wakes a waiter: this session holds wait-wake's two slots while
-- the waiter backend waits (10 s at most); releasing one hands it over.
--
SELECT connthrottle.try_acquire('wait-wake', 5432) FROM generate_series(1, 2);
SELECT dblink_send_query('waiter',
  $$SELECT connthrottle.acquire('wait-wake', 5432, timeout => '10s')::text$$);
SELECT pg_temp.wait_for_waiters('wait-wake', 1);
SELECT host, connections, waiters FROM connthrottle.node_stats() WHERE host = 'wait-wake';
SELECT clock_timestamp() AS start \gset
SELECT connthrottle.release('wait-wake', 5432);
SELECT * FROM dblink_get_result('waiter') AS t(result text);
SELECT * FROM dblink_get_result('waiter') AS t(result text);
SELECT clock_timestamp() - :'start' < interval '1s' AS woken_promptly;
SELECT * FROM dblink('waiter', $$SELECT host, kind FROM connthrottle.session_slots()$$)
  AS t(host text, kind text);
SELECT host, connections, waiters, acquired, waited FROM connthrottle.node_stats()
 WHERE host = 'wait-wake';
--
-- Raising the limit by a reload wakes a waiter at once (the slot is taken
-- under the new limit).
--
SELECT dblink_send_query('waiter',
  $$SELECT connthrottle.acquire('wait-wake', 5432, timeout => '10s')::text$$);
SELECT pg_temp.wait_for_waiters('wait-wake', 1);
ALTER SYSTEM SET connthrottle.max_shared_pool_size = 3;
SELECT pg_reload_conf();
SELECT * FROM dblink_get_result('waiter') AS t(result text);
SELECT * FROM dblink_get_result('waiter') AS t(result text);
SELECT host, connections, waiters FROM connthrottle.node_stats() WHERE host = 'wait-wake';
ALTER SYSTEM RESET connthrottle.max_shared_pool_size;
SELECT pg_reload_conf();
-- Wait until the waiter backend has applied the reload too (it does so
-- between statements).
DO $$
BEGIN
  FOR i IN 1..6000 LOOP
    EXIT WHEN (SELECT v FROM dblink('waiter',
                 $q$SELECT current_setting('connthrottle.max_shared_pool_size')$q$) AS t(v text))
              = '2';
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
--
-- A wait that a reload interrupts goes on with the rest of its time, and its
-- error still names the setting that gave the timeout.
--
SELECT * FROM dblink('waiter', $$SET connthrottle.connection_wait_timeout = '1s'$$) AS t(r text);
SELECT * FROM dblink('waiter', $$SELECT current_setting('connthrottle.max_shared_pool_size')$$)
  AS t(max_shared_pool_size text);
SELECT dblink_send_query('waiter', $$SELECT connthrottle.acquire('wait-full', 5432)::text$$);
SELECT pg_temp.wait_for_waiters('wait-full', 1);
SELECT pg_reload_conf();
SELECT pg_temp.outcome($$SELECT * FROM dblink_get_result('waiter') AS t(result text)$$);
SELECT * FROM dblink_get_result('waiter') AS t(result text);
--
-- Query cancel ends a wait, and the canceled waiter is no longer counted.
--
SELECT dblink_send_query('waiter',
  $$SELECT connthrottle.acquire('wait-full', 5432, timeout => '5min')::text$$);
SELECT pg_temp.wait_for_waiters('wait-full', 1);
SELECT dblink_cancel_query('waiter');
SELECT pg_temp.outcome($$SELECT * FROM dblink_get_result('waiter') AS t(result text)$$);
SELECT * FROM dblink_get_result('waiter') AS t(result text);
SELECT host, connections, waiters FROM connthrottle.node_stats() WHERE host = 'wait-full';
--
-- A waiter that is terminated stops waiting, and its backend's exit gives
-- back the slot it held (wait-wake).
--
SELECT * FROM dblink('waiter', $$SELECT pg_backend_pid()$$) AS t(pid int) \gset waiter_
SELECT dblink_send_query('waiter',
  $$SELECT connthrottle.acquire('wait-full', 5432, timeout => '5min')::text$$);
SELECT pg_temp.wait_for_waiters('wait-full', 1);
SELECT pg_terminate_backend(:waiter_pid);
SELECT pg_temp.wait_for_waiters('wait-full', 0);
DO $$
BEGIN
  FOR i IN 1..6000 LOOP
    EXIT WHEN (SELECT connections FROM connthrottle.node_stats() WHERE host = 'wait-wake') = 1;
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
SELECT host, connections, waiters FROM connthrottle.node_stats() ORDER BY host;
SELECT dblink_disconnect('waiter');
-- Everything given back.
SELECT connthrottle.release_all();
SELECT * FROM dblink('holder', $$SELECT connthrottle.release_all()$$) AS t(released int);
SELECT dblink_disconnect('holder');
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT connthrottle.audit();
DROP EXTENSION dblink;
DROP EXTENSION connthrottle;
