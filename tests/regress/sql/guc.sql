--
-- guc: the connthrottle.* settings. Values come from connthrottle.conf
-- (max_shared_pool_size = 2, max_tracked_nodes = 64,
-- connection_wait_timeout = 100ms); the others are module.cc's defaults.
--
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
SHOW connthrottle.max_shared_pool_size;
SHOW connthrottle.max_shared_pool_size_per_database;
SHOW connthrottle.local_shared_pool_size;
SHOW connthrottle.max_tracked_nodes;
SHOW connthrottle.full_table_policy;
SHOW connthrottle.connection_wait_timeout;
SHOW connthrottle.local_node;
-- Definitions: context, type, range, defaults (boot_val) and where the
-- value comes from. (The executor's settings are not tested here.)
SELECT name, setting, unit, context, vartype, source, min_val, max_val, enumvals, boot_val
  FROM pg_settings
 WHERE name IN ('connthrottle.max_shared_pool_size', 'connthrottle.local_shared_pool_size',
                'connthrottle.max_shared_pool_size_per_database',
                'connthrottle.max_tracked_nodes', 'connthrottle.full_table_policy',
                'connthrottle.connection_wait_timeout', 'connthrottle.local_node')
 ORDER BY name;
-- The prefix is reserved: no made-up connthrottle.* placeholders.
SET connthrottle.no_such_setting = 1;
-- Server-wide settings cannot be SET in a session.
SET connthrottle.max_shared_pool_size = 5;
SET connthrottle.max_shared_pool_size_per_database = 5;
SET connthrottle.local_shared_pool_size = 5;
SET connthrottle.full_table_policy = refuse;
SET connthrottle.local_node = 'none';
SET connthrottle.max_tracked_nodes = 8;
-- Bad values are refused (ALTER SYSTEM checks them like a reload would).
ALTER SYSTEM SET connthrottle.max_shared_pool_size = -2;
ALTER SYSTEM SET connthrottle.max_shared_pool_size = 1048576;
ALTER SYSTEM SET connthrottle.local_shared_pool_size = -2;
-- 0 would refuse every connection: -1 is "off".
ALTER SYSTEM SET connthrottle.max_shared_pool_size_per_database = 0;
ALTER SYSTEM SET connthrottle.max_shared_pool_size_per_database = -2;
ALTER SYSTEM SET connthrottle.max_tracked_nodes = 0;
ALTER SYSTEM SET connthrottle.full_table_policy = 'bogus';
ALTER SYSTEM SET connthrottle.connection_wait_timeout = -2;
ALTER SYSTEM SET connthrottle.local_node = 'nonsense';
ALTER SYSTEM SET connthrottle.local_node = 'host:70000';
ALTER SYSTEM SET connthrottle.local_node = 'host:0';
ALTER SYSTEM SET connthrottle.local_node = 'host:';
ALTER SYSTEM SET connthrottle.local_node = ':5432';
ALTER SYSTEM SET connthrottle.local_node = 'host:54x';
ALTER SYSTEM SET connthrottle.local_node = 'host: 5432';
SELECT format('ALTER SYSTEM SET connthrottle.local_node = %L', repeat('h', 256) || ':5432')
\gexec
-- None of that reached postgresql.auto.conf.
SELECT count(*) FROM pg_file_settings WHERE name LIKE 'connthrottle.%' AND sourcefile LIKE '%auto.conf';
-- connection_wait_timeout is per session.
SET connthrottle.connection_wait_timeout = '2s';
SHOW connthrottle.connection_wait_timeout;
SET connthrottle.connection_wait_timeout = 250;
SHOW connthrottle.connection_wait_timeout;
SET connthrottle.connection_wait_timeout = -1;
SHOW connthrottle.connection_wait_timeout;
BEGIN;
SET LOCAL connthrottle.connection_wait_timeout = '5min';
SHOW connthrottle.connection_wait_timeout;
COMMIT;
SHOW connthrottle.connection_wait_timeout;
RESET connthrottle.connection_wait_timeout;
SHOW connthrottle.connection_wait_timeout;
-- A reload applies at once, to the next decision: with the limit raised to
-- 3 a third slot is granted, and with throttling off (-1) every acquire is
-- granted and still counted.
ALTER SYSTEM SET connthrottle.max_shared_pool_size = 3;
SELECT pg_reload_conf();
\set wait_setting connthrottle.max_shared_pool_size
\set wait_value 3
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.max_shared_pool_size;
SELECT connthrottle.try_acquire('guc-node', 5432) FROM generate_series(1, 4);
SELECT host, port, connections, acquired, refused FROM connthrottle.node_stats();
ALTER SYSTEM SET connthrottle.max_shared_pool_size = -1;
SELECT pg_reload_conf();
\set wait_value -1
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.max_shared_pool_size;
SELECT connthrottle.try_acquire('guc-node', 5432) FROM generate_series(1, 3);
SELECT host, port, connections, acquired, refused FROM connthrottle.node_stats();
-- Back to the configuration file's 2: the 6 slots held stay held, new
-- acquires are refused.
ALTER SYSTEM RESET connthrottle.max_shared_pool_size;
SELECT pg_reload_conf();
\set wait_value 2
\i :abs_srcdir/sql/wait_for_setting.psql
SHOW connthrottle.max_shared_pool_size;
SELECT connthrottle.try_acquire('guc-node', 5432);
SELECT connthrottle.release_all();
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT connthrottle.audit();
DROP EXTENSION connthrottle;
