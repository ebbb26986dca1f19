// The backend-local side of the extension, in plain C++: the shared table,
// this backend's Owner, the slots it holds through SQL, its reservations,
// and local-node detection. No PostgreSQL header is included here or in
// session.cc, and none of these functions calls into PostgreSQL.
//
// The boundary (DESIGN.md): every function is noexcept and reports failure
// in an Outcome — a plain struct with the SQLSTATE to raise and a message in
// a fixed buffer — so the PostgreSQL glue (module.cc, functions.cc) raises
// the error itself, after every C++ frame that owned anything has returned.
// PostgreSQL errors never unwind through these functions: the glue calls them
// only with arguments it has already checked and converted.
//
// Thread-safety: a backend is single-threaded; all of this is per process.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_SESSION_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_SESSION_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/channel_ops.h"

namespace connthrottle::pg {

// What a call came to. sqlstate is a PostgreSQL SQLSTATE packed as by
// MAKE_SQLSTATE (0 when ok). `interrupted` means a waiting acquire stopped
// because the interrupt check fired: the glue then processes the interrupt.
struct Outcome {
  int sqlstate = 0;
  bool interrupted = false;
  char message[1024] = {0};
  char detail[512] = {0};

  bool ok() const { return sqlstate == 0 && !interrupted; }
};

enum class FullTable : int { kAdmitUncounted = 0, kRefuse = 1 };

// The configuration one call applies: GUC values read by the glue.
struct Settings {
  int max_shared_pool_size = 0;
  int local_shared_pool_size = 0;
  int max_connections = 100;  // the server's max_connections
  FullTable full_table = FullTable::kAdmitUncounted;
  int connection_wait_timeout_ms = 60000;  // -1: no limit
  int server_port = 5432;                  // PostPortNumber
  const char* local_node = "";             // "" detect, "none", or "host:port"
};

// One waiting SQL call's wait, fixed when the call begins and kept across
// the interrupts the glue handles (a config reload): the deadline does not
// move, the wait is counted once, and a timeout error names the timeout as
// it was given.
struct Wait {
  int64_t began_us = 0;       // when the call began (Unix microseconds)
  int64_t timeout_ms = -1;    // -1: no limit
  bool from_setting = false;  // the timeout is connthrottle.connection_wait_timeout
  bool resumed = false;       // set when a call returned interrupted
};
// A wait of `timeout_ms` (-1: no limit) beginning now.
Wait BeginWait(int64_t timeout_ms, bool from_setting) noexcept;

// ---- shared memory (postmaster) ----

// Bytes the table needs, or 0 when the sizes are invalid.
size_t RequiredBytes(uint32_t capacity, uint32_t max_owners);
// Lays out (found == false) or attaches (found == true) the table in a
// region of shared memory, and remembers it for this process.
Outcome SetUpTable(void* region, size_t bytes, uint32_t capacity, uint32_t max_owners, bool found);
bool TableReady();

// ---- slots held through SQL ----

// Optional acquire; *acquired tells whether a slot was taken.
Outcome TryAcquire(const char* host, int port, uint32_t database, const Settings& settings,
                   int active_client_backends, bool* acquired);
// Waiting acquire within `wait`. Returns with interrupted set when
// `interrupted()` returned true; the glue handles the interrupt and calls
// again with the same `wait`.
Outcome AcquireWaiting(const char* host, int port, uint32_t database, const Settings& settings,
                       int active_client_backends, Wait& wait, bool (*interrupted)());
Outcome AcquireForced(const char* host, int port, uint32_t database, const Settings& settings);
// Gives back the most recently taken slot this session holds for the node.
Outcome Release(const char* host, int port, uint32_t database, bool* released);
// Gives back every slot this session holds through SQL; *count says how many.
Outcome ReleaseAllSlots(int* count);

struct HeldSlot {
  char host[256];
  int port;
  uint32_t database;
  const char* kind;  // static string
};
// Copies up to `max` of this session's slots into `out`; *count is the number.
Outcome ListSlots(HeldSlot* out, int max, int* count);

// ---- reservations ----

struct NodeRef {
  const char* host;
  int port;
};
// Reserves a slot for every node not reserved or held yet, in global order,
// waiting for each; all or nothing. *reserved is the number newly taken.
Outcome Reserve(const NodeRef* nodes, int count, uint32_t database, uint32_t user,
                const Settings& settings, int active_client_backends, Wait& wait,
                bool (*interrupted)(), int* reserved);
Outcome TryReserve(const char* host, int port, uint32_t database, uint32_t user,
                   const Settings& settings, int active_client_backends, bool* reserved);
// Turns the reservation into a slot held by the session (the connection
// opened); *used is false when there is no unused reservation for the node.
Outcome UseReservation(const char* host, int port, uint32_t database, uint32_t user, bool* used);

struct ReservationRow {
  char host[256];
  int port;
  uint32_t database;
  uint32_t user;
  bool used;
};
Outcome ListReservations(ReservationRow* out, int max, int* count);

// At the end of every top-level transaction: gives back unused reservations.
void EndTransaction();

// ---- statistics ----

struct NodeRow {
  char host[256];
  int port;
  uint32_t database;
  uint32_t connections, forced, reserved, waiters;
  uint64_t acquired, refused, waited, forced_total, wakeups;
  uint32_t cached;  // of connections: parked in sessions' caches
  int64_t wait_time_us;
};
// Copies up to `max` busy keys into `out`.
Outcome NodeStats(NodeRow* out, int max, int* count);

struct HolderRow {
  int pid;
  char host[256];
  int port;
  uint32_t database;
  uint32_t connections, forced, reserved;
  bool waiting;
};
// Who holds and who waits; *rows stay valid until the next call.
Outcome Holders(const HolderRow** rows, int* count);

struct TableRow {
  uint32_t capacity, entries_in_use, owners, max_owners;
  uint64_t uncounted_in_use, full_table_events, entries_created, entries_dropped;
  uint64_t acquired, refused, waited, forced_total;
  int64_t wait_time_us;
  uint64_t wakeups;
};
Outcome TableStatistics(TableRow* out);
// OK, or an error whose message lists every difference (Audit()).
Outcome Audit();
// Acquires that found the table full, since the server started (cheap).
uint64_t FullTableEvents();
// Wakes every waiting backend (after a raised limit).
void WakeAllWaiters();
// Capacity of the table (the number of rows NodeStats may return).
uint32_t Capacity();

// ---- the adaptive executor ----

struct ExecutorSettings {
  int max_pool_size = 16;                  // connthrottle.max_adaptive_executor_pool_size
  int max_cached_per_node = 1;             // connthrottle.max_cached_conns_per_worker
  int max_cached_lifetime_ms = 600000;     // connthrottle.max_cached_connection_lifetime
  int node_connection_timeout_ms = 30000;  // connthrottle.node_connection_timeout
  int slow_start_interval_ms = 10;         // connthrottle.executor_slow_start_interval
  const char* node_conninfo = "";          // connthrottle.node_conninfo (checked keywords)
  const char* client_encoding = "";        // the coordinator database's encoding
  const char* database = "";               // libpq dbname of worker connections
  const char* user = "";                   // libpq user of worker connections
};

// What the glue's in-process runner (SPI, inside a subtransaction) reports.
// It must never raise: every error is caught and described here.
struct LocalTaskOutcome {
  bool ok = false;
  bool cancelled = false;   // the error was a query cancel or statement timeout
  bool abort_call = false;  // the error could not be contained: stop the execution
  char sqlstate[6] = {0};
  char message[1024] = {0};
  char command_tag[64] = {0};
  int64_t row_count = 0;   // rows returned
  bool has_value = false;  // one row of one column
  char* value = nullptr;   // malloc'd by the runner, freed by the session
};
using LocalRunner = void (*)(const char* sql, LocalTaskOutcome* out);

struct TaskSpec {
  const char* host;
  int port;
  const char* sql;
};

struct TaskRow {
  const char* host;  // owned by the session until its next call
  int port;
  bool success;
  const char* sqlstate;  // "" when none
  const char* result;    // the single value, or the command tag; nullptr on failure
  const char* error;     // nullptr on success
  bool ran_locally;
  int connection;
  int64_t rows;
  int64_t queued_us;
  int64_t run_us;
};

// Runs `tasks` with this backend's adaptive executor, or through the
// communicator's shared pool when `channel` is given (this backend's slot).
// Rows are valid until the next call into the session. Returns with
// interrupted set when the execution was cancelled (every remote query
// cancelled or withdrawn, every slot given back); the glue then raises the
// pending interrupt.
Outcome RunTasks(const TaskSpec* tasks, int count, uint32_t database, const Settings& settings,
                 const ExecutorSettings& executor, int active_client_backends,
                 bool (*interrupted)(), LocalRunner runner, const ChannelOps* channel,
                 const TaskRow** rows);

struct DistributeRow {
  const char* host;
  int port;
  int64_t rows;
  bool success;
  const char* error;  // nullptr on success
};

// COPY with reservations: reserves a slot per node (global order, waiting),
// then rows are sent one by one and a node is connected when its first row
// arrives; FinishDistribute reports each node. One distribution at a time;
// the end of the transaction abandons an unfinished one.
Outcome BeginDistribute(const NodeRef* nodes, int count, const char* copy_sql, uint32_t database,
                        const Settings& settings, const ExecutorSettings& executor,
                        int active_client_backends, Wait& wait, bool (*interrupted)(),
                        bool (*stream_interrupted)());
// DistributeOne and FinishDistribute wait on the workers' sockets looking at
// `stream_interrupted` (given to BeginDistribute) every 10 ms; when it fires
// they return with interrupted set (for DistributeOne the stream stays, to
// be abandoned by the transaction's end).
Outcome DistributeOne(int node, const char* row, size_t length);
Outcome FinishDistribute(const DistributeRow** rows, int* count);

// ---- connection parameters ----

// Whether connthrottle.node_conninfo may set the libpq keyword `keyword`:
// TLS, timeouts, keepalives, target_session_attrs, application_name and the
// like. Never host, port, dbname, user, password, passfile, service or
// options: those choose where a connection goes and who it claims to be.
bool NodeConninfoKeywordAllowed(const char* keyword);

// ---- local node ----

// Whether (host, port) is this server under `settings`.
Outcome IsLocalNode(const char* host, int port, const Settings& settings, bool* local);

// ---- backend exit ----

// Gives back every slot and reservation of this backend and unregisters it.
void BackendExit();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_SESSION_H_
