--
-- hardening: who may make the server connect where, with whose credentials,
-- and the limits that cannot be split or bypassed by a plain role.
--
-- A schema "connthrottle" made beforehand by another role is refused. (DROP
-- EXTENSION leaves the schema CREATE EXTENSION made; it is empty.)
DROP SCHEMA IF EXISTS connthrottle;
CREATE ROLE regress_schema_squatter;
CREATE SCHEMA connthrottle AUTHORIZATION regress_schema_squatter;
CREATE EXTENSION connthrottle;
DROP SCHEMA connthrottle;
DROP ROLE regress_schema_squatter;
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
-- The SQL and PL/pgSQL functions run with a fixed search_path (and qualify
-- what they call), so objects a caller creates cannot stand in for them.
SELECT p.proname, p.proconfig
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'connthrottle'
   AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'c')
 ORDER BY p.proname, p.oid::regprocedure::text;
CREATE ROLE regress_hardening_user LOGIN;
GRANT EXECUTE ON FUNCTION connthrottle.run_tasks(text[], integer[], text[], boolean),
                          connthrottle.distribute(text, text, text[], integer[]),
                          connthrottle.force_acquire(text, integer, name),
                          connthrottle.try_acquire(text, integer, name),
                          connthrottle.is_local_node(text, integer)
  TO regress_hardening_user;
--
-- Hosts are canonical: ASCII lower case, no trailing dot; one counter per
-- node whatever the spelling. Host lists are refused everywhere.
--
SELECT connthrottle.add_node('HARD-Node.example.', 5432) > 0 AS added;
SELECT host, port FROM connthrottle.worker_node;
SELECT pg_temp.outcome($$SELECT connthrottle.add_node('hard-node.example', 5432)$$);
SELECT pg_temp.outcome($$SELECT connthrottle.add_node('hard-node.example,evil', 5432)$$);
SELECT pg_temp.outcome($$SELECT connthrottle.add_node('.', 5432)$$);
SELECT connthrottle.try_acquire('HARD-NODE.EXAMPLE', 5432),
       connthrottle.try_acquire('hard-node.example.', 5432),
       connthrottle.try_acquire('Hard-Node.Example', 5432);
SELECT host, port, connections FROM connthrottle.nodes;
SELECT connthrottle.release_all();
SELECT call, pg_temp.outcome('SELECT ' || call) FROM (VALUES
  ($$connthrottle.try_acquire('w1,w2', 5432)$$),
  ($$connthrottle.reserve(ARRAY['w1,w2'], ARRAY[5432])$$),
  ($$* FROM connthrottle.run_tasks(ARRAY['w1,w2'], ARRAY[5432], ARRAY['SELECT 1'])$$)
) AS v(call);
-- The table refuses non-canonical rows put there by hand.
SELECT pg_temp.outcome($$INSERT INTO connthrottle.worker_node (host, port, added_at)
                          VALUES ('W1', 1, '2000-01-01')$$);
SELECT pg_temp.outcome($$INSERT INTO connthrottle.worker_node (host, port, added_at)
                          VALUES ('w1.', 1, '2000-01-01')$$);
SELECT pg_temp.outcome($$INSERT INTO connthrottle.worker_node (host, port, added_at)
                          VALUES ('a,b', 1, '2000-01-01')$$);
SELECT pg_temp.outcome($$SELECT connthrottle.remove_node('HARD-node.example.', 5432)$$);
--
-- A role that is not a superuser reaches catalog nodes only: a socket
-- directory that does not exist stands for a node (nothing listens there).
--
SELECT connthrottle.add_node('/nonexistent-connthrottle-dir', 5432) > 0 AS added;
SET ROLE regress_hardening_user;
SELECT call, pg_temp.outcome('SELECT ' || call) FROM (VALUES
  ($$* FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[1], ARRAY['SELECT 1'])$$),
  ($$* FROM connthrottle.run_tasks(ARRAY['/nonexistent-connthrottle-dir', '/tmp'],
                                   ARRAY[5432, 5432], ARRAY['SELECT 1', 'SELECT 1'])$$),
  ($$* FROM connthrottle.run_tasks(ARRAY['/nonexistent-connthrottle-dir'], ARRAY[5433],
                                   ARRAY['SELECT 1'])$$),
  ($$* FROM connthrottle.distribute('SELECT 1', 't', ARRAY['scan-target.invalid'], ARRAY[22])$$),
  ($$connthrottle.force_acquire('/nonexistent-connthrottle-dir', 5432)$$),
  ($$connthrottle.is_local_node('scan-target.invalid', 5432)$$)
) AS v(call);
-- A catalog node is tried (and here cannot be connected to).
SELECT host, success, sqlstate
  FROM connthrottle.run_tasks(ARRAY['/nonexistent-connthrottle-dir'], ARRAY[5432],
                              ARRAY['SELECT 1']);
-- Strict mode raises the first task error with its SQLSTATE.
SELECT pg_temp.outcome($$SELECT count(*) FROM connthrottle.run_tasks(
  ARRAY['/nonexistent-connthrottle-dir'], ARRAY[5432], ARRAY['SELECT 1'], raise_on_error => true)$$)
  ~ '^08001: could not connect to node /nonexistent-connthrottle-dir:5432' AS raised_08001;
SELECT connthrottle.is_local_node('/nonexistent-connthrottle-dir', 5432);
-- Settings that keep slots or choose how to connect are not for this role.
SELECT pg_temp.outcome($$SET connthrottle.max_cached_conns_per_worker = 1000$$);
SELECT pg_temp.outcome($$SET connthrottle.max_cached_connection_lifetime = '1d'$$);
SELECT pg_temp.outcome($$SET connthrottle.node_conninfo = 'sslmode=require'$$);
RESET ROLE;
-- connthrottle_user carries what a role needs, in one grant: the catalog
-- wrappers read worker_node.
CREATE ROLE regress_hardening_app LOGIN IN ROLE connthrottle_user;
SET ROLE regress_hardening_app;
SELECT host, success, sqlstate FROM connthrottle.run_on_all_nodes('SELECT 1');
-- (the node cannot be connected to: the error is the node's, not a privilege's)
SELECT substr(pg_temp.outcome($$SELECT * FROM connthrottle.distribute('SELECT 1', 'public.t')$$),
              1, 60) AS outcome;
SELECT pg_temp.outcome($$SELECT connthrottle.force_acquire('x', 1)$$);
RESET ROLE;
DROP ROLE regress_hardening_app;
SELECT connthrottle.remove_node('/nonexistent-connthrottle-dir', 5432);
--
-- connthrottle.node_conninfo: allowed libpq keywords only.
--
SELECT name, context, setting FROM pg_settings WHERE name IN (
  'connthrottle.node_conninfo', 'connthrottle.max_cached_conns_per_worker',
  'connthrottle.max_cached_connection_lifetime') ORDER BY name;
SET connthrottle.node_conninfo = 'sslmode=prefer connect_timeout=5 keepalives_idle=30 application_name=coord target_session_attrs=read-write';
SHOW connthrottle.node_conninfo;
SET connthrottle.node_conninfo = 'host=evil.example';
SET connthrottle.node_conninfo = 'sslmode=disable passfile=/tmp/pgpass';
SET connthrottle.node_conninfo = 'options=''-c role=x''';
SET connthrottle.node_conninfo = 'dbname=postgres';
SET connthrottle.node_conninfo = 'user=postgres';
SET connthrottle.node_conninfo = 'service=foo';
SET connthrottle.node_conninfo = 'not a conninfo';
SHOW connthrottle.node_conninfo;
RESET connthrottle.node_conninfo;
--
-- A full table lets connections through uncounted (admit_uncounted): a
-- WARNING says so, at most once a minute per session; table_stats counts them.
--
SELECT capacity FROM connthrottle.table_stats();
SELECT count(*) FILTER (WHERE connthrottle.try_acquire('fill-' || i, 5432)) AS counted
  FROM generate_series(1, 64) i;
SELECT connthrottle.try_acquire('fill-65', 5432);
SELECT connthrottle.try_acquire('fill-66', 5432);
SELECT kind, count(*) FROM connthrottle.session_slots() GROUP BY kind ORDER BY kind;
SELECT entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
SELECT connthrottle.release_all();
SELECT entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
SELECT connthrottle.audit();
DROP EXTENSION connthrottle;
DROP ROLE regress_hardening_user;
