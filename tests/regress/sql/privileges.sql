--
-- privileges: what a role without grants may do. Taking slots and reading
-- statistics affect or show every session, so they are not for PUBLIC; a
-- session's own state is.
--
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
CREATE ROLE regress_connthrottle_user LOGIN;
CREATE ROLE regress_connthrottle_monitor LOGIN IN ROLE pg_monitor;
-- The grants as installed, besides the owner's (the bootstrap superuser,
-- whose name depends on who runs the suites).
SELECT p.proname,
       (SELECT string_agg(g, ', ' ORDER BY g)
          FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                       || ' ' || a.privilege_type AS g
                  FROM aclexplode(p.proacl) a WHERE a.grantee <> p.proowner) grants) AS granted_to
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'connthrottle'
   AND p.proname IN ('_assert_preloaded', 'try_acquire', 'acquire', 'force_acquire', 'release',
                     'release_all', 'session_slots', 'reserve', 'try_reserve',
                     'use_reservation', 'reservations', 'node_stats', 'table_stats',
                     'is_local_node', 'audit')
 ORDER BY p.proname;
-- Of every function in the schema, only those that show or change the
-- session's own state are executable by PUBLIC.
SELECT regexp_replace(p.oid::regprocedure::text, '^connthrottle\.', '') AS executable_by_public
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'connthrottle' AND has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;
SELECT c.relname,
       (SELECT string_agg(g, ', ' ORDER BY g)
          FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                       || ' ' || a.privilege_type AS g
                  FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) grants) AS granted_to
  FROM pg_class c WHERE c.oid = 'connthrottle.nodes'::regclass;
SELECT (SELECT string_agg(g, ', ' ORDER BY g)
          FROM (SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                       || ' ' || a.privilege_type AS g
                  FROM aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner) grants)
         AS schema_granted_to
  FROM pg_namespace n WHERE n.nspname = 'connthrottle';
--
-- A plain role.
--
SET ROLE regress_connthrottle_user;
SELECT call, pg_temp.outcome('SELECT ' || call) FROM (VALUES
  ($$connthrottle.try_acquire('priv-node', 5432)$$),
  ($$connthrottle.acquire('priv-node', 5432)$$),
  ($$connthrottle.force_acquire('priv-node', 5432)$$),
  ($$connthrottle.reserve(ARRAY['priv-node'], ARRAY[5432])$$),
  ($$connthrottle.try_reserve('priv-node', 5432)$$),
  ($$connthrottle.use_reservation('priv-node', 5432)$$),
  ($$* FROM connthrottle.node_stats()$$),
  ($$* FROM connthrottle.table_stats()$$),
  ($$* FROM connthrottle.nodes$$),
  ($$connthrottle.audit()$$),
  ($$connthrottle._assert_preloaded()$$),
  ($$* FROM connthrottle.session_slots()$$),
  ($$* FROM connthrottle.reservations()$$),
  ($$connthrottle.release('priv-node', 5432)$$),
  ($$connthrottle.release_all()$$),
  ($$connthrottle.is_local_node('priv-node', 5432)$$)
) AS v(call);
-- The allowed ones, with their results.
SELECT * FROM connthrottle.session_slots();
SELECT * FROM connthrottle.reservations();
SELECT connthrottle.release('priv-node', 5432);
SELECT connthrottle.release_all();
RESET ROLE;
--
-- A member of pg_monitor reads the statistics, but takes no slots.
--
SELECT connthrottle.try_acquire('priv-node', 5432);
SET ROLE regress_connthrottle_monitor;
SELECT host, port, connections FROM connthrottle.node_stats();
SELECT host, port, connections FROM connthrottle.nodes;
SELECT capacity, entries_in_use FROM connthrottle.table_stats();
SELECT pg_temp.outcome($$SELECT connthrottle.try_acquire('priv-node', 5432)$$);
-- Slots belong to the session, not to the role: release() gives back the
-- slot this session took as superuser.
SELECT connthrottle.release('priv-node', 5432);
RESET ROLE;
SELECT connthrottle.release('priv-node', 5432);
--
-- GRANT EXECUTE makes taking slots usable; the slot belongs to the session.
--
GRANT EXECUTE ON FUNCTION connthrottle.try_acquire(text, integer, name)
  TO regress_connthrottle_user;
SET ROLE regress_connthrottle_user;
SELECT connthrottle.try_acquire('priv-node', 5432);
SELECT * FROM connthrottle.session_slots();
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('priv-node', 5432)$$);
SELECT connthrottle.release('priv-node', 5432);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION connthrottle.try_acquire(text, integer, name)
  FROM regress_connthrottle_user;
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT connthrottle.audit();
DROP ROLE regress_connthrottle_user;
DROP ROLE regress_connthrottle_monitor;
DROP EXTENSION connthrottle;
