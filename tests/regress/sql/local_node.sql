--
-- local_node: which node is this server (connthrottle.local_node), and the
-- local node's own limit (connthrottle.local_shared_pool_size). The server's
-- port varies from run to run: current_setting('port') is used throughout.
--
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
-- The local node's limit counts client backends: wait until the backends of
-- earlier suites have gone (they exit asynchronously), leaving this one.
DO $$
BEGIN
  FOR i IN 1..6000 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') = 1;
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
SELECT current_setting('port')::int AS port \gset
SELECT split_part(current_setting('unix_socket_directories'), ',', 1) AS socket_dir \gset
-- '' (the default): this server's port on a name of this machine.
SHOW connthrottle.local_node;
SELECT CASE WHEN host = :'socket_dir' THEN '<socket dir>' ELSE host END AS host, port_offset,
       connthrottle.is_local_node(host, :port + port_offset) AS local
  FROM (VALUES ('localhost', 0), ('127.0.0.1', 0), ('::1', 0), (:'socket_dir', 0),
               ('localhost', 1), ('127.0.0.1', -1), ('192.0.2.1', 0))
       AS v(host, port_offset);
-- Slots for the local node: local_shared_pool_size = 0 allows half of
-- max_connections (50 here).
SELECT connthrottle.try_acquire('localhost', :port) FROM generate_series(1, 3);
SELECT host = 'localhost' AS is_localhost, port = :port AS is_server_port, connections
  FROM connthrottle.node_stats();
SELECT connthrottle.release_all();
--
-- local_shared_pool_size = 2: at most 2 slots, and only while fewer than 2
-- client backends are connected (this session is the only one; background
-- processes such as the logical replication launcher are not clients).
--
ALTER SYSTEM SET connthrottle.local_shared_pool_size = 2;
SELECT pg_reload_conf();
\set wait_setting connthrottle.local_shared_pool_size
\set wait_value 2
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_shared_pool_size;
SELECT count(*) AS client_backends FROM pg_stat_activity WHERE backend_type = 'client backend';
SELECT connthrottle.try_acquire('localhost', :port) FROM generate_series(1, 3);
SELECT connthrottle.release_all();
--
-- local_shared_pool_size = -1: never connect to self. Optional and waiting
-- acquires of the local node are refused at once (a local acquire never
-- waits); forced ones are counted; other nodes keep their limit.
--
ALTER SYSTEM SET connthrottle.local_shared_pool_size = -1;
SELECT pg_reload_conf();
\set wait_setting connthrottle.local_shared_pool_size
\set wait_value -1
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_shared_pool_size;
SELECT connthrottle.try_acquire('localhost', :port);
SELECT connthrottle.try_acquire('127.0.0.1', :port);
SELECT clock_timestamp() AS start \gset
-- (This session is the only client backend.)
SELECT regexp_replace(pg_temp.outcome(format(
         $$SELECT connthrottle.acquire('localhost', %s, timeout => '60s')$$, :port)),
       'localhost:[0-9]+', 'localhost:<port>') AS outcome;
-- Local acquires never wait: well under the 60s timeout it was given.
SELECT clock_timestamp() - :'start' < interval '30s' AS did_not_wait;
BEGIN;
SELECT connthrottle.try_reserve('localhost', :port);
SELECT * FROM connthrottle.reservations();
COMMIT;
SELECT connthrottle.force_acquire('localhost', :port);
SELECT connthrottle.try_acquire('localhost', :port + 1);
SELECT host, port - :port AS port_offset, kind FROM connthrottle.session_slots();
SELECT host, port - :port AS port_offset, connections, forced, waiters, acquired, refused
  FROM connthrottle.node_stats() ORDER BY port;
SELECT connthrottle.release_all();
--
-- 'none': no node is local, so the remote limit (2) applies to this server's
-- own address too.
--
ALTER SYSTEM SET connthrottle.local_node = 'none';
SELECT pg_reload_conf();
\set wait_setting connthrottle.local_node
\set wait_value none
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_node;
SELECT connthrottle.is_local_node('localhost', :port);
SELECT connthrottle.is_local_node(:'socket_dir', :port);
SELECT connthrottle.try_acquire('localhost', :port) FROM generate_series(1, 3);
SELECT connthrottle.release_all();
--
-- 'host:port' names the local node exactly: that name and port, no other
-- name of this machine.
--
\set wait_value localhost: :port
ALTER SYSTEM SET connthrottle.local_node = :'wait_value';
SELECT pg_reload_conf();
\i :abs_srcdir/sql/wait_for_setting.psql
SELECT current_setting('connthrottle.local_node') = 'localhost:' || :port AS local_node_set;
SELECT CASE WHEN host = :'socket_dir' THEN '<socket dir>' ELSE host END AS host, port_offset,
       connthrottle.is_local_node(host, :port + port_offset) AS local
  FROM (VALUES ('localhost', 0), ('localhost', 1), ('127.0.0.1', 0), (:'socket_dir', 0))
       AS v(host, port_offset);
-- Still local_shared_pool_size = -1 for it.
SELECT connthrottle.try_acquire('localhost', :port);
SELECT connthrottle.try_acquire('127.0.0.1', :port);
SELECT connthrottle.release_all();
ALTER SYSTEM SET connthrottle.local_node = 'coordinator.example:6543';
SELECT pg_reload_conf();
\set wait_value coordinator.example:6543
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_node;
SELECT connthrottle.is_local_node('coordinator.example', 6543);
SELECT connthrottle.is_local_node('coordinator.example', 6544);
SELECT connthrottle.is_local_node('localhost', :port);
SELECT connthrottle.try_acquire('coordinator.example', 6543);
-- The last ':' separates the port, so an IPv6 address needs no brackets.
ALTER SYSTEM SET connthrottle.local_node = 'fd00::1:6543';
SELECT pg_reload_conf();
\set wait_value fd00::1:6543
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_node;
SELECT connthrottle.is_local_node('fd00::1', 6543);
SELECT connthrottle.is_local_node('fd00::1:6543', 6543);
-- Back to the defaults.
ALTER SYSTEM RESET connthrottle.local_node;
ALTER SYSTEM RESET connthrottle.local_shared_pool_size;
SELECT pg_reload_conf();
\set wait_value ''
\i :abs_srcdir/sql/wait_for_setting.psql
\set wait_setting connthrottle.local_shared_pool_size
\set wait_value 0
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.local_node;
SHOW connthrottle.local_shared_pool_size;
SELECT connthrottle.is_local_node('localhost', :port);
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT connthrottle.audit();
DROP EXTENSION connthrottle;
