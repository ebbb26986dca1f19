--
-- create_extension: CREATE EXTENSION on a server that preloads connthrottle,
-- and the objects it makes.
--
CREATE EXTENSION connthrottle;
SELECT extname, extversion, extrelocatable, nspname AS schema
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'connthrottle';
-- The slot, reservation and statistics API (the extension has more objects,
-- tested elsewhere): each function with its result, volatility and
-- strictness (none is strict: a NULL argument is an error, see bad_input).
SELECT sig, to_regprocedure('connthrottle.' || sig) IS NOT NULL AS exists,
       pg_get_function_result(to_regprocedure('connthrottle.' || sig)) AS result,
       p.provolatile AS volatile, p.proisstrict AS strict
  FROM (VALUES (1, 'try_acquire(text, integer, name)'),
               (2, 'acquire(text, integer, name, interval)'),
               (3, 'force_acquire(text, integer, name)'),
               (4, 'release(text, integer, name)'),
               (5, 'release_all()'),
               (6, 'session_slots()'),
               (7, 'reserve(text[], integer[], name, interval)'),
               (8, 'try_reserve(text, integer, name)'),
               (9, 'use_reservation(text, integer, name)'),
               (10, 'reservations()'),
               (11, 'node_stats()'),
               (12, 'table_stats()'),
               (13, 'is_local_node(text, integer)'),
               (14, 'audit()')) AS v(n, sig)
  LEFT JOIN pg_proc p ON p.oid = to_regprocedure('connthrottle.' || sig)
 ORDER BY n;
-- Their arguments and defaults.
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'connthrottle'
   AND p.proname IN ('try_acquire', 'acquire', 'force_acquire', 'release', 'reserve',
                     'try_reserve', 'use_reservation', 'is_local_node')
 ORDER BY p.proname;
-- Every function in the schema is a member of the extension.
SELECT count(*) AS functions_outside_extension
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'connthrottle'
   AND NOT EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e');
-- The nodes view is node_stats() as a relation.
\d connthrottle.nodes
-- The statistics answer on a fresh server (nothing is busy).
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT capacity, entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
SELECT connthrottle.audit();
-- The extension lives in its own schema and cannot be moved.
CREATE EXTENSION connthrottle;
ALTER EXTENSION connthrottle SET SCHEMA public;
-- Dropping and creating again works, and the shared table is untouched.
DROP EXTENSION connthrottle;
SELECT count(*) AS functions_left
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'connthrottle';
CREATE EXTENSION connthrottle;
SELECT capacity FROM connthrottle.table_stats();
DROP EXTENSION connthrottle;
