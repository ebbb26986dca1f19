--
-- bad_input: every argument checked, with the right SQLSTATE, and nothing
-- left counted afterwards.
--   22004 null_value_not_allowed   NULL argument (no function is STRICT)
--   22023 invalid_parameter_value  bad host, port or timeout
--   3D000 invalid_catalog_name     unknown database
--
CREATE EXTENSION connthrottle;
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/outcome.psql
SELECT entries_created AS created0, entries_dropped AS dropped0, acquired AS acquired0,
       refused AS refused0 FROM connthrottle.table_stats() \gset
-- NULL for every argument of every function (a NULL timeout is not an
-- error: it means connthrottle.connection_wait_timeout).
SELECT call, pg_temp.outcome('SELECT connthrottle.' || call) AS outcome FROM (VALUES
  ($$try_acquire(NULL, 5432)$$),
  ($$try_acquire('bad-node', NULL)$$),
  ($$try_acquire('bad-node', 5432, NULL)$$),
  ($$acquire(NULL, 5432)$$),
  ($$acquire('bad-node', NULL)$$),
  ($$acquire('bad-node', 5432, NULL)$$),
  ($$force_acquire(NULL, 5432)$$),
  ($$force_acquire('bad-node', NULL)$$),
  ($$force_acquire('bad-node', 5432, NULL)$$),
  ($$release(NULL, 5432)$$),
  ($$release('bad-node', NULL)$$),
  ($$release('bad-node', 5432, NULL)$$),
  ($$reserve(NULL, ARRAY[5432])$$),
  ($$reserve(ARRAY['bad-node'], NULL)$$),
  ($$reserve(ARRAY['bad-node'], ARRAY[5432], NULL)$$),
  ($$try_reserve(NULL, 5432)$$),
  ($$try_reserve('bad-node', NULL)$$),
  ($$try_reserve('bad-node', 5432, NULL)$$),
  ($$use_reservation(NULL, 5432)$$),
  ($$use_reservation('bad-node', NULL)$$),
  ($$use_reservation('bad-node', 5432, NULL)$$),
  ($$is_local_node(NULL, 5432)$$),
  ($$is_local_node('bad-node', NULL)$$)
) AS v(call);
-- Bad hosts and ports for every function that takes them.
CREATE TEMP TABLE calls (call text);
INSERT INTO calls VALUES
  ('try_acquire(%s, %s)'), ('acquire(%s, %s)'), ('force_acquire(%s, %s)'),
  ('release(%s, %s)'), ('try_reserve(%s, %s)'), ('use_reservation(%s, %s)'),
  ('is_local_node(%s, %s)'), ('reserve(ARRAY[%s], ARRAY[%s])');
SELECT format(c.call, CASE WHEN length(b.host) > 20 THEN 'repeat(''h'', 256)'
                            ELSE quote_literal(b.host) END, b.port) AS call,
       pg_temp.outcome(format('SELECT connthrottle.' || c.call, quote_literal(b.host), b.port))
         AS outcome
  FROM (VALUES (1, '', 5432), (2, repeat('h', 256), 5432), (3, 'bad-node', 0),
               (4, 'bad-node', -1), (5, 'bad-node', 65536)) AS b(n, host, port),
       calls c
 ORDER BY b.n, c.call;
-- An unknown database.
SELECT call, pg_temp.outcome('SELECT connthrottle.' || call) AS outcome FROM (VALUES
  ($$try_acquire('bad-node', 5432, 'no_such_database')$$),
  ($$acquire('bad-node', 5432, 'no_such_database')$$),
  ($$force_acquire('bad-node', 5432, 'no_such_database')$$),
  ($$release('bad-node', 5432, 'no_such_database')$$),
  ($$reserve(ARRAY['bad-node'], ARRAY[5432], 'no_such_database')$$),
  ($$try_reserve('bad-node', 5432, 'no_such_database')$$),
  ($$use_reservation('bad-node', 5432, 'no_such_database')$$)
) AS v(call);
-- Negative timeouts.
SELECT call, pg_temp.outcome('SELECT connthrottle.' || call) AS outcome FROM (VALUES
  ($$acquire('bad-node', 5432, timeout => '-1ms')$$),
  ($$acquire('bad-node', 5432, timeout => '-1 day')$$),
  ($$reserve(ARRAY['bad-node'], ARRAY[5432], timeout => '-1s')$$)
) AS v(call);
-- Nothing of that took or left a slot, or a key in the table.
SELECT * FROM connthrottle.session_slots();
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT entries_in_use, uncounted_in_use, entries_created - :created0 AS created,
       entries_dropped - :dropped0 AS dropped, acquired - :acquired0 AS acquired,
       refused - :refused0 AS refused
  FROM connthrottle.table_stats();
SELECT connthrottle.audit();
-- The limits themselves are fine: a 255-byte host, ports 1 and 65535, a
-- timeout of a mixed-sign interval that is positive overall, and a very long
-- timeout (far beyond what fits in int64 microseconds once the months are
-- counted; on a free node it does not matter how long one would wait).
SELECT connthrottle.try_acquire(repeat('h', 255), 1);
SELECT connthrottle.try_acquire('bad-node', 65535);
SELECT connthrottle.acquire('bad-node', 65535, timeout => '-1 day 90000 seconds');
SELECT pg_temp.outcome($$SELECT connthrottle.acquire('bad-node', 1,
                                                     timeout => '100000000 years')$$);
SELECT pg_temp.outcome($$SELECT connthrottle.reserve(ARRAY['bad-node'], ARRAY[2],
                                                     timeout => '100000000 years')$$);
SELECT length(host), port, kind FROM connthrottle.session_slots();
SELECT connthrottle.release_all();
SELECT count(*) AS busy_nodes FROM connthrottle.node_stats();
SELECT entries_in_use, uncounted_in_use FROM connthrottle.table_stats();
SELECT connthrottle.audit();
DROP EXTENSION connthrottle;
