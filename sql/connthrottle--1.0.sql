-- connthrottle 1.0: the SQL face of the shared connection counters.
-- Needs shared_preload_libraries = 'connthrottle'.

\echo Use "CREATE EXTENSION connthrottle" to load this file. \quit

-- The schema is made by CREATE EXTENSION when it does not exist. One that
-- existed before, owned by another role, could hold objects that shadow ours
-- or let its owner replace them: refuse it.
DO $$
BEGIN
  IF (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'connthrottle')
     NOT IN ((SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), 10) THEN
    RAISE EXCEPTION 'connthrottle: schema "connthrottle" exists and belongs to another role'
      USING ERRCODE = '42501',
            HINT = 'Drop or rename that schema, or make it belong to the role that creates the extension.';
  END IF;
END
$$;

-- Fails, with what to set, unless the library was preloaded.
CREATE FUNCTION connthrottle._assert_preloaded() RETURNS void
  LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_assert_preloaded';
SELECT connthrottle._assert_preloaded();

-- ---------------------------------------------------------------------------
-- Slots held by this session. A slot is the right to hold one open connection
-- to a node's database; the session holds it until release(), release_all(),
-- or the end of the session.

-- Optional acquire: takes a slot only if one is free now. Returns whether it did.
CREATE FUNCTION connthrottle.try_acquire(host text, port integer,
                                         database name DEFAULT current_database())
  RETURNS boolean LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_try_acquire';

-- Waiting acquire: waits for a slot up to timeout (NULL: connthrottle.connection_wait_timeout).
-- Query cancel, statement_timeout and pg_terminate_backend end the wait.
CREATE FUNCTION connthrottle.acquire(host text, port integer,
                                     database name DEFAULT current_database(),
                                     timeout interval DEFAULT NULL)
  RETURNS void LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_acquire';

-- Forced acquire: counts the connection even above the limit.
CREATE FUNCTION connthrottle.force_acquire(host text, port integer,
                                           database name DEFAULT current_database())
  RETURNS void LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_force_acquire';

-- Gives back the most recent slot this session holds for the node; false if none.
CREATE FUNCTION connthrottle.release(host text, port integer,
                                     database name DEFAULT current_database())
  RETURNS boolean LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_release';

-- Gives back every slot this session holds; returns how many.
CREATE FUNCTION connthrottle.release_all()
  RETURNS integer LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_release_all';

CREATE FUNCTION connthrottle.session_slots(OUT host text, OUT port integer,
                                           OUT database name, OUT kind text)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_session_slots';

-- ---------------------------------------------------------------------------
-- Reservations for the current transaction (COPY-style work): one slot per
-- node, taken up front in the global order (host, then port), given back at
-- commit or abort unless used.

-- Reserves every node not reserved or held yet, waiting for each; all or
-- nothing. Returns the number of reservations taken.
CREATE FUNCTION connthrottle.reserve(hosts text[], ports integer[],
                                     database name DEFAULT current_database(),
                                     timeout interval DEFAULT NULL)
  RETURNS integer LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_reserve';

-- Reserves one node only if a slot is free now.
CREATE FUNCTION connthrottle.try_reserve(host text, port integer,
                                         database name DEFAULT current_database())
  RETURNS boolean LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_try_reserve';

-- Opens "the connection" a reservation was for: the slot becomes a session slot
-- without being counted again. False when there is no unused reservation.
CREATE FUNCTION connthrottle.use_reservation(host text, port integer,
                                             database name DEFAULT current_database())
  RETURNS boolean LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_use_reservation';

CREATE FUNCTION connthrottle.reservations(OUT host text, OUT port integer,
                                          OUT database name, OUT used boolean)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_reservations';

-- ---------------------------------------------------------------------------
-- Statistics, readable by pg_monitor.

-- Every busy (node, database): slots held now (connections, of which forced
-- and reserved), waiters, cumulative figures since the key became busy, and
-- of the connections those idle in sessions' caches (cached).
CREATE FUNCTION connthrottle.node_stats(
    OUT host text, OUT port integer, OUT database name, OUT database_oid oid,
    OUT connections integer, OUT forced integer, OUT reserved integer, OUT waiters integer,
    OUT acquired bigint, OUT refused bigint, OUT waited bigint, OUT wait_time interval,
    OUT forced_total bigint, OUT wakeups bigint, OUT cached integer)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_node_stats';

CREATE VIEW connthrottle.nodes AS SELECT * FROM connthrottle.node_stats();

-- Who holds and who waits: one row per backend (pid) and busy node it holds
-- slots of or waits for. Read without locks, for diagnosis.
CREATE FUNCTION connthrottle.holders(
    OUT pid integer, OUT host text, OUT port integer, OUT database name,
    OUT connections integer, OUT forced integer, OUT reserved integer, OUT waiting boolean)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_holders';
CREATE VIEW connthrottle.holders AS SELECT * FROM connthrottle.holders();

-- Table-wide figures; cumulative ones include keys that are no longer busy.
-- wakeups: times a queued waiter was woken (by a release, a departure, a
-- reclamation or a changed limit) and re-checked its node; wakeups / waited
-- near 1 means waiters are woken by the release that frees their slot.
CREATE FUNCTION connthrottle.table_stats(
    OUT capacity integer, OUT entries_in_use integer, OUT owners integer,
    OUT max_owners integer, OUT uncounted_in_use bigint, OUT full_table_events bigint,
    OUT entries_created bigint, OUT entries_dropped bigint, OUT acquired bigint,
    OUT refused bigint, OUT waited bigint, OUT wait_time interval, OUT forced_total bigint,
    OUT wakeups bigint)
  RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_table_stats';

-- The communicator (the background worker behind executor_transport =
-- 'shared_pool') and its pool, as it published them last (about every
-- 100 ms): its pid (NULL while it is not running), how many times it has
-- started, the pooled connections open and tasks queued now, and
-- cumulative figures since it last started. connections_started is the
-- number of worker backends the pool has cost the workers; reloads counts
-- the configuration reloads the communicator has applied; resets counts the
-- DISCARD ALLs run on pooled connections after tasks, closed_reset_failed the
-- connections closed because one failed, closed_for_pools those given to
-- another pool (role, connection parameters) of the same node and database,
-- notifications_dropped the NOTIFY messages tasks' LISTENs brought in,
-- tasks_over_memory the tasks failed (54000) because their results would have
-- taken the pool beyond connthrottle.pool_response_memory, out_of_memory the
-- allocation failures on the pool's thread (53200).
CREATE FUNCTION connthrottle.pool_stats(
    OUT pid integer, OUT starts bigint, OUT connections bigint, OUT tasks_queued bigint,
    OUT connections_started bigint, OUT connections_opened bigint,
    OUT connections_failed bigint, OUT closed_idle bigint, OUT closed_dead bigint,
    OUT closed_in_transaction bigint, OUT closed_for_waiters bigint,
    OUT optional_refused bigint, OUT tasks_run bigint, OUT tasks_retried bigint,
    OUT tasks_cancelled bigint, OUT tasks_handed_back bigint, OUT closed_over_limit bigint,
    OUT reloads bigint, OUT resets bigint, OUT closed_reset_failed bigint,
    OUT closed_for_pools bigint, OUT notifications_dropped bigint, OUT tasks_over_memory bigint,
    OUT out_of_memory bigint)
  RETURNS record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_pool_stats';

-- Whether host:port is this server (connthrottle.local_node).
CREATE FUNCTION connthrottle.is_local_node(host text, port integer)
  RETURNS boolean LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'connthrottle_is_local_node';

-- Raises an error listing every difference between the counters and what the
-- registered backends hold; returns nothing when they agree.
CREATE FUNCTION connthrottle.audit()
  RETURNS void LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_audit';

-- ---------------------------------------------------------------------------
-- The catalog of worker nodes, and running commands on them with the
-- adaptive executor (throttled parallel fan-out, local-execution failover).

CREATE TABLE connthrottle.worker_node (
  node_id serial PRIMARY KEY,
  host text NOT NULL CHECK (length(host) BETWEEN 1 AND 255),
  -- One spelling per node, as the functions canonicalise hosts: ASCII lower
  -- case without trailing dots (Unix-socket directories as given), and never
  -- a libpq host list.
  CHECK (strpos(host, ',') = 0),
  CHECK (left(host, 1) = '/' OR (host = translate(host, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                                                  'abcdefghijklmnopqrstuvwxyz')
                                 AND right(host, 1) <> '.')),
  port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
  added_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (host, port)
);
SELECT pg_catalog.pg_extension_config_dump('connthrottle.worker_node', '');

-- A host as the functions count it: ASCII lower case without trailing dots
-- (so that 'W1', 'w1.' and 'w1' are one node); a Unix-socket directory as
-- given. Refuses libpq host lists ('a,b').
CREATE FUNCTION connthrottle._canonical_host(host text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF pg_catalog.strpos(host, ',') > 0 THEN
    RAISE EXCEPTION 'connthrottle: host "%" is a list of hosts', host
      USING ERRCODE = '22023', HINT = 'Give one host per node.';
  END IF;
  IF pg_catalog.left(host, 1) = '/' THEN
    RETURN host;
  END IF;
  RETURN pg_catalog.rtrim(pg_catalog.translate(host, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                                               'abcdefghijklmnopqrstuvwxyz'), '.');
END
$$;

-- Adds a worker node; refuses NULL, bad hosts and ports, and duplicates.
-- The host is stored canonical (_canonical_host).
CREATE FUNCTION connthrottle.add_node(host text, port integer) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  id integer;
BEGIN
  IF host IS NULL OR port IS NULL THEN
    RAISE EXCEPTION 'connthrottle: host and port must not be NULL' USING ERRCODE = '22004';
  END IF;
  host := connthrottle._canonical_host(host);
  IF length(host) = 0 OR length(host) > 255 THEN
    RAISE EXCEPTION 'connthrottle: host name must be 1 to 255 bytes long, got %', length(host)
      USING ERRCODE = '22023';
  END IF;
  IF port < 1 OR port > 65535 THEN
    RAISE EXCEPTION 'connthrottle: port % is outside 1..65535', port USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM connthrottle.worker_node n WHERE n.host = add_node.host
                                                         AND n.port = add_node.port) THEN
    RAISE EXCEPTION 'connthrottle: node %:% is already in the catalog', host, port
      USING ERRCODE = '23505';
  END IF;
  INSERT INTO connthrottle.worker_node (host, port) VALUES (host, port) RETURNING node_id INTO id;
  RETURN id;
END
$$;

-- Removes a worker node; refuses one that is not in the catalog.
CREATE FUNCTION connthrottle.remove_node(host text, port integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF host IS NULL OR port IS NULL THEN
    RAISE EXCEPTION 'connthrottle: host and port must not be NULL' USING ERRCODE = '22004';
  END IF;
  host := connthrottle._canonical_host(host);
  DELETE FROM connthrottle.worker_node n WHERE n.host = remove_node.host AND n.port = remove_node.port;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'connthrottle: node %:% is not in the catalog', host, port
      USING ERRCODE = '42704';
  END IF;
END
$$;

-- The catalog, with the local node marked.
CREATE VIEW connthrottle.worker_nodes AS
  SELECT node_id, host, port, connthrottle.is_local_node(host, port) AS is_local, added_at
  FROM connthrottle.worker_node ORDER BY host, port;

-- Runs commands[i] on hosts[i]:ports[i], all in parallel, and returns one row
-- per task: result is the single value of a one-row one-column result, else
-- the command tag; a failed task has success false, the worker's SQLSTATE and
-- its error naming the node. With raise_on_error, the first failed task (in
-- task order) raises its error with its SQLSTATE instead.
CREATE FUNCTION connthrottle.run_tasks(hosts text[], ports integer[], commands text[],
    raise_on_error boolean DEFAULT false,
    OUT task integer, OUT host text, OUT port integer, OUT success boolean, OUT result text,
    OUT sqlstate text, OUT error text, OUT ran_locally boolean, OUT connection integer,
    OUT rows bigint, OUT queued interval, OUT run interval)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_run_tasks';

-- Runs one command on every node of the catalog. (Every name is qualified
-- and search_path is fixed: nothing a caller creates can stand in for them.)
CREATE FUNCTION connthrottle.run_on_all_nodes(command text, raise_on_error boolean DEFAULT false,
    OUT task integer, OUT host text, OUT port integer, OUT success boolean, OUT result text,
    OUT sqlstate text, OUT error text, OUT ran_locally boolean, OUT connection integer,
    OUT rows bigint, OUT queued interval, OUT run interval)
  RETURNS SETOF record LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT r.* FROM (SELECT pg_catalog.array_agg(n.host ORDER BY n.host, n.port) AS hosts,
                          pg_catalog.array_agg(n.port ORDER BY n.host, n.port) AS ports,
                          pg_catalog.array_agg(command ORDER BY n.host, n.port) AS commands
                   FROM connthrottle.worker_node n) a,
       connthrottle.run_tasks(coalesce(a.hosts, '{}'::text[]), coalesce(a.ports, '{}'::integer[]),
                              coalesce(a.commands, '{}'::text[]), raise_on_error) r
$$;

-- Streams the rows of `query` into the table `target_table` on the given
-- nodes with COPY, each row to the node a hash of its first column picks. A
-- slot per node is reserved up front (global order); a node's connection is
-- opened when its first row arrives. Returns rows sent per node.
CREATE FUNCTION connthrottle.distribute(query text, target_table text, hosts text[],
    ports integer[], OUT host text, OUT port integer, OUT rows bigint, OUT success boolean,
    OUT error text)
  RETURNS SETOF record LANGUAGE C VOLATILE AS 'MODULE_PATHNAME', 'connthrottle_distribute';

-- The same over every node of the catalog.
CREATE FUNCTION connthrottle.distribute(query text, target_table text,
    OUT host text, OUT port integer, OUT rows bigint, OUT success boolean, OUT error text)
  RETURNS SETOF record LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT d.* FROM (SELECT pg_catalog.array_agg(n.host ORDER BY n.host, n.port) AS hosts,
                          pg_catalog.array_agg(n.port ORDER BY n.host, n.port) AS ports
                   FROM connthrottle.worker_node n) a,
       connthrottle.distribute(query, target_table, coalesce(a.hosts, '{}'::text[]),
                               coalesce(a.ports, '{}'::integer[])) d
$$;

-- ---------------------------------------------------------------------------
-- Privileges. Nothing is executable by PUBLIC but the functions that only
-- show or change this session's own state. Taking slots affects every
-- session of the coordinator: grant it to the roles that run distributed
-- work, e.g.
--   GRANT EXECUTE ON FUNCTION connthrottle.acquire(text, integer, name, interval) TO app;
-- Statistics are for pg_monitor (and superusers).

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA connthrottle FROM PUBLIC;
REVOKE ALL ON connthrottle.nodes FROM PUBLIC;
REVOKE ALL ON connthrottle.holders FROM PUBLIC;
REVOKE ALL ON connthrottle.worker_node FROM PUBLIC;
REVOKE ALL ON connthrottle.worker_nodes FROM PUBLIC;
GRANT USAGE ON SCHEMA connthrottle TO PUBLIC;
GRANT EXECUTE ON FUNCTION connthrottle.session_slots() TO PUBLIC;
GRANT EXECUTE ON FUNCTION connthrottle.reservations() TO PUBLIC;
GRANT EXECUTE ON FUNCTION connthrottle.release(text, integer, name) TO PUBLIC;
GRANT EXECUTE ON FUNCTION connthrottle.release_all() TO PUBLIC;
-- is_local_node resolves host names (for non-superusers only catalog ones):
-- the catalog view's readers need it.
GRANT EXECUTE ON FUNCTION connthrottle.is_local_node(text, integer) TO pg_monitor;
GRANT EXECUTE ON FUNCTION connthrottle.node_stats() TO pg_monitor;
GRANT EXECUTE ON FUNCTION connthrottle.table_stats() TO pg_monitor;
GRANT EXECUTE ON FUNCTION connthrottle.pool_stats() TO pg_monitor;
GRANT SELECT ON connthrottle.nodes TO pg_monitor;
GRANT EXECUTE ON FUNCTION connthrottle.holders() TO pg_monitor;
GRANT SELECT ON connthrottle.holders TO pg_monitor;
GRANT SELECT ON connthrottle.worker_node, connthrottle.worker_nodes TO pg_monitor;

-- connthrottle_user: what a role needs to run distributed work, in one
-- grant (GRANT connthrottle_user TO app). Roles are cluster-wide: the role
-- is made by the first CREATE EXTENSION and kept by DROP EXTENSION; each
-- database's CREATE EXTENSION grants it that database's functions.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'connthrottle_user') THEN
    CREATE ROLE connthrottle_user NOLOGIN;
  END IF;
END
$$;
GRANT EXECUTE ON FUNCTION
    connthrottle.run_tasks(text[], integer[], text[], boolean),
    connthrottle.run_on_all_nodes(text, boolean),
    connthrottle.distribute(text, text, text[], integer[]),
    connthrottle.distribute(text, text),
    connthrottle.try_acquire(text, integer, name),
    connthrottle.acquire(text, integer, name, interval),
    connthrottle.reserve(text[], integer[], name, interval),
    connthrottle.try_reserve(text, integer, name),
    connthrottle.use_reservation(text, integer, name),
    connthrottle.is_local_node(text, integer)
  TO connthrottle_user;
GRANT SELECT ON connthrottle.worker_node, connthrottle.worker_nodes TO connthrottle_user;
