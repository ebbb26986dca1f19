--
-- reservations: slots reserved for the current transaction, taken in the
-- global order (host, then port), given back at its end unless used.
-- connthrottle.conf: max_shared_pool_size = 2.
--
CREATE EXTENSION connthrottle;
CREATE EXTENSION dblink;
SET statement_timeout = '60s';
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
-- Duplicates collapse; the listing is in the global order.
BEGIN;
SELECT connthrottle.reserve(ARRAY['res-b', 'res-a', 'res-b', 'res-a', 'res-a'],
                            ARRAY[5432, 5433, 5432, 5433, 5432]);
SELECT * FROM connthrottle.reservations();
SELECT host, port, connections, forced, reserved, waiters, acquired
  FROM connthrottle.node_stats() ORDER BY host, port;
-- Reserved already: nothing more is taken.
SELECT connthrottle.reserve(ARRAY['res-a'], ARRAY[5433]);
SELECT connthrottle.try_reserve('res-b', 5432);
SELECT * FROM connthrottle.reservations();
-- Using a reservation turns it into a session slot without counting again.
SELECT connthrottle.use_reservation('res-a', 5433);
SELECT connthrottle.use_reservation('res-a', 5433);
SELECT connthrottle.use_reservation('res-c', 5432);
SELECT * FROM connthrottle.reservations();
SELECT * FROM connthrottle.session_slots();
SELECT host, port, connections, reserved, acquired FROM connthrottle.node_stats()
 ORDER BY host, port;
-- COMMIT gives back the unused ones; the used one stays a session slot.
COMMIT;
SELECT * FROM connthrottle.reservations();
SELECT * FROM connthrottle.session_slots();
SELECT host, port, connections, reserved FROM connthrottle.node_stats() ORDER BY host, port;
SELECT connthrottle.release('res-a', 5433);
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
-- ROLLBACK gives them back too, and so does an aborted transaction.
BEGIN;
SELECT connthrottle.reserve(ARRAY['res-b', 'res-a'], ARRAY[5432, 5432]);
SELECT host, port, connections, reserved FROM connthrottle.node_stats() ORDER BY host, port;
ROLLBACK;
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT * FROM connthrottle.reservations();
BEGIN;
SELECT connthrottle.reserve(ARRAY['res-b', 'res-a'], ARRAY[5432, 5432]);
SELECT 1 / 0;
ROLLBACK;
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
-- Outside a transaction block the statement is the transaction.
SELECT connthrottle.reserve(ARRAY['res-a'], ARRAY[5432]);
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
-- A node this session already holds a slot for needs no reservation.
SELECT connthrottle.try_acquire('res-held', 5432);
BEGIN;
SELECT connthrottle.reserve(ARRAY['res-held', 'res-new'], ARRAY[5432, 5432]);
SELECT * FROM connthrottle.reservations();
SELECT connthrottle.try_reserve('res-held', 5432);
SELECT * FROM connthrottle.reservations();
SELECT host, connections, reserved FROM connthrottle.node_stats() ORDER BY host;
COMMIT;
SELECT connthrottle.release_all();
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
-- An empty list reserves nothing.
SELECT connthrottle.reserve(ARRAY[]::text[], ARRAY[]::integer[]);
--
-- At the limit. Another backend fills res-full (limit 2).
--
SELECT format('dbname=%s host=%s port=%s', current_database(),
              split_part(current_setting('unix_socket_directories'), ',', 1),
              current_setting('port')) AS connstr \gset
SELECT dblink_connect('holder', :'connstr');
SELECT * FROM dblink('holder', $$SELECT connthrottle.try_acquire('res-full', 5432)::text
                                 FROM generate_series(1, 2)$$) AS t(granted text);
BEGIN;
-- try_reserve never waits: refused.
SELECT connthrottle.try_reserve('res-full', 5432);
SELECT * FROM connthrottle.reservations();
-- reserve() waits for res-full and fails (53300) naming it. All or nothing:
-- res-a, taken before res-full in the global order, is given back, and
-- res-z, after it, was never taken (one slot acquired in all, not two).
SELECT acquired AS acquired0, refused AS refused0 FROM connthrottle.table_stats() \gset
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['res-z', 'res-full', 'res-a'],
                                                     ARRAY[5432, 5432, 5432],
                                                     timeout => '50ms')$$);
SELECT * FROM connthrottle.reservations();
SELECT host, connections, reserved, waiters FROM connthrottle.node_stats() ORDER BY host;
SELECT acquired - :acquired0 AS acquired, refused - :refused0 AS refused
  FROM connthrottle.table_stats();
-- NULL timeout: connthrottle.connection_wait_timeout (100ms) applies.
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['res-full'], ARRAY[5432])$$);
COMMIT;
-- Once the holder gives one back, the reservation is granted.
SELECT * FROM dblink('holder', $$SELECT connthrottle.release('res-full', 5432)::text$$)
  AS t(released text);
BEGIN;
SELECT connthrottle.reserve(ARRAY['res-z', 'res-full', 'res-a'], ARRAY[5432, 5432, 5432],
                            timeout => '1s');
SELECT * FROM connthrottle.reservations();
SELECT host, connections, reserved FROM connthrottle.node_stats() ORDER BY host;
COMMIT;
SELECT * FROM dblink('holder', $$SELECT connthrottle.release_all()$$) AS t(released int);
SELECT dblink_disconnect('holder');
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
--
-- Bad arrays.
--
-- Different lengths: 22023.
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', 'b'], ARRAY[5432])$$);
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a'], ARRAY[]::integer[])$$);
-- NULL elements: 22004.
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', NULL], ARRAY[5432, 5433])$$);
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', 'b'], ARRAY[5432, NULL])$$);
-- Several dimensions: 2202E (array_subscript_error).
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY[['a'], ['b']], ARRAY[[1], [2]])$$);
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', 'b'], ARRAY[[1, 2]])$$);
-- A bad element: 22023, and nothing taken for the good ones.
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', 'b'], ARRAY[5432, 0])$$);
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['a', ''], ARRAY[5432, 5432])$$);
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT * FROM connthrottle.reservations();
SELECT connthrottle.audit();
DROP EXTENSION dblink;
DROP EXTENSION connthrottle;
