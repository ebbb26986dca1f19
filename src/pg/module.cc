// module.cc — the extension's life in the server: _PG_init, the GUCs, the
// shared-memory hooks, and the backend-exit and transaction callbacks.
//
// Shared memory and locking: the counter table lives in one ShmemInitStruct
// segment ("connthrottle"), sized in shmem_request_hook for
// connthrottle.max_tracked_nodes keys and MaxBackends owners and laid out in
// shmem_startup_hook under AddinShmemInitLock. The table synchronises itself
// (its own per-entry locks and atomics, see src/owner_ops.cc); no LWLock is
// held while using it. A backend that exits in any orderly way gives back
// everything it holds in a before_shmem_exit callback; a crashed backend
// makes the postmaster re-initialise shared memory, and the table with it.
//
// C++ objects live behind the boundary in src/pg/bridge/, behind noexcept
// functions that return plain structs (bridge/outcome.h).

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
// clang-format on

#include <libpq-fe.h>

PG_MODULE_MAGIC;
void _PG_init(void);
}

#include "pg/admission.h"
#include "pg/bridge/backend_state.h"
#include "pg/bridge/lease_board.h"
#include "pg/bridge/node_conninfo.h"
#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"
#include "pg/communicator.h"
#include "pg/guc.h"
#include "pg/lease_manager.h"

namespace {

using connthrottle::pg::FullTable;

int max_shared_pool_size = 0;
int max_shared_pool_size_per_database = -1;  // off
int local_shared_pool_size = 0;
int max_tracked_nodes = 1024;
int full_table_policy = static_cast<int>(FullTable::kAdmitUncounted);
int connection_wait_timeout_ms = 60000;
char* local_node = nullptr;
int max_adaptive_executor_pool_size = 16;
int max_cached_conns_per_worker = 1;
int max_cached_connection_lifetime_ms = 10 * 60 * 1000;
int node_connection_timeout_ms = 30 * 1000;
int executor_slow_start_interval_ms = 10;
char* node_conninfo = nullptr;
enum Transport : int { kDirect = 0, kSharedPool = 1 };
int executor_transport = kSharedPool;
int pool_message_bytes = 64 * 1024;
int worker_leases = static_cast<int>(connthrottle::pg::LeaseMode::kAuto);
char* lease_database = nullptr;
char* lease_user = nullptr;
char* coordinator_id = nullptr;
// The settings shared_pool_settings.def declares, one member each.
connthrottle::pg::PoolSettings pool_settings;

const struct config_enum_entry kTransports[] = {
    {"direct", kDirect, false},
    {"shared_pool", kSharedPool, false},
    {nullptr, 0, false},
};

const struct config_enum_entry kLeaseModes[] = {
    {"off", static_cast<int>(connthrottle::pg::LeaseMode::kOff), false},
    {"auto", static_cast<int>(connthrottle::pg::LeaseMode::kAuto), false},
    {"on", static_cast<int>(connthrottle::pg::LeaseMode::kOn), false},
    {nullptr, 0, false},
};

const struct config_enum_entry kFullTablePolicies[] = {
    {"admit_uncounted", static_cast<int>(FullTable::kAdmitUncounted), false},
    {"refuse", static_cast<int>(FullTable::kRefuse), false},
    {nullptr, 0, false},
};

shmem_request_hook_type prev_shmem_request_hook = nullptr;
shmem_startup_hook_type prev_shmem_startup_hook = nullptr;
bool exit_callback_registered = false;
uint32 table_owners = 0;

size_t TableBytes() {
  return connthrottle::pg::RequiredBytes(static_cast<uint32_t>(max_tracked_nodes), table_owners);
}

void ShmemRequest() {
  if (prev_shmem_request_hook) prev_shmem_request_hook();
  // Every backend, autovacuum worker, background worker and WAL sender may
  // register once.
  table_owners = static_cast<uint32>(MaxBackends);
  // 64 more bytes to align the table on a cache line.
  RequestAddinShmemSpace(add_size(TableBytes(), 64));
  connthrottle::pg::SetPoolMessageBytes(pool_message_bytes);
  RequestAddinShmemSpace(connthrottle::pg::CommunicatorShmemBytes());
  RequestAddinShmemSpace(connthrottle::pg::AdmissionShmemBytes());
  RequestAddinShmemSpace(add_size(connthrottle::pg::LeaseBoardBytes(), 64));
}

// This coordinator's name at the workers: connthrottle.coordinator_id, or
// "<host name>:<port>".
void CoordinatorName(char* out, size_t size) {
  if (coordinator_id != nullptr && coordinator_id[0] != '\0') {
    snprintf(out, size, "%s", coordinator_id);
    return;
  }
  char host[256] = "coordinator";
  (void)gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  snprintf(out, size, "%.50s:%d", host, PostPortNumber);
}

void LeaseBoardInit() {
  bool found = false;
  char* raw = static_cast<char*>(ShmemInitStruct(
      "connthrottle lease board", add_size(connthrottle::pg::LeaseBoardBytes(), 64), &found));
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t{63});
  char id[64];
  CoordinatorName(id, sizeof(id));
  // A new incarnation at every start and crash-restart: the workers' grants
  // to the one before end on their own.
  uint64 incarnation = 0;
  while (!found && incarnation == 0) {
    if (!pg_strong_random(&incarnation, sizeof(incarnation))) {
      incarnation = static_cast<uint64>(GetCurrentTimestamp());
    }
    incarnation &= PG_INT64_MAX;
  }
  connthrottle::pg::LeaseBoardAttach(aligned, found, id, incarnation);
}

void ShmemStartup() {
  if (prev_shmem_startup_hook) prev_shmem_startup_hook();
  const size_t bytes = TableBytes();
  bool found = false;
  LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
  char* raw = static_cast<char*>(ShmemInitStruct("connthrottle", add_size(bytes, 64), &found));
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t{63});
  connthrottle::pg::Outcome outcome = connthrottle::pg::SetUpTable(
      aligned, bytes, static_cast<uint32_t>(max_tracked_nodes), table_owners, found);
  connthrottle::pg::SetPoolMessageBytes(pool_message_bytes);
  connthrottle::pg::CommunicatorShmemInit();
  connthrottle::pg::AdmissionShmemInit();
  LeaseBoardInit();
  LWLockRelease(AddinShmemInitLock);
  if (!outcome.ok()) {
    ereport(FATAL, (errcode(outcome.sqlstate), errmsg("%s", outcome.message)));
  }
}

void OnBackendExit(int, Datum) { connthrottle::pg::BackendExit(); }

void TransactionEnd(XactEvent event, void*) {
  switch (event) {
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
      connthrottle::pg::EndTransaction();
      break;
    default:
      break;
  }
}

bool CheckLocalNode(char** newval, void**, GucSource) {
  const char* value = *newval;
  if (value == nullptr || value[0] == '\0' || strcmp(value, "none") == 0) return true;
  const char* colon = strrchr(value, ':');
  if (colon == nullptr || colon == value || colon[1] == '\0') {
    GUC_check_errdetail("Use '' to detect the local node, 'none', or 'host:port'.");
    return false;
  }
  // Digits only: strtol alone would also take " 5" or "+5".
  char* end = nullptr;
  long port = isdigit(static_cast<unsigned char>(colon[1])) ? strtol(colon + 1, &end, 10) : 0;
  if (end == nullptr || *end != '\0' || port < 1 || port > 65535) {
    GUC_check_errdetail("The port must be a number from 1 to 65535.");
    return false;
  }
  if (colon - value > 255) {
    GUC_check_errdetail("The host name must be at most 255 bytes long.");
    return false;
  }
  return true;
}

// connthrottle.node_conninfo: libpq keywords added to every connection to a
// worker node. Only the keywords NodeConninfoKeywordAllowed names: nothing
// that changes where a connection goes or who it authenticates as.
bool CheckNodeConninfo(char** newval, void**, GucSource) {
  const char* value = *newval;
  if (value == nullptr || value[0] == '\0') return true;
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(value, &error);
  if (options == nullptr) {
    GUC_check_errdetail("%s", error != nullptr ? error : "out of memory");
    if (error != nullptr) PQfreemem(error);
    return false;
  }
  bool ok = true;
  for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr && !connthrottle::pg::NodeConninfoKeywordAllowed(o->keyword)) {
      GUC_check_errdetail("The libpq keyword \"%s\" may not be set here.", o->keyword);
      GUC_check_errhint(
          "Allowed: sslmode, sslrootcert, sslcert, sslkey, sslcrl, sslcrldir, sslsni, "
          "ssl_min_protocol_version, ssl_max_protocol_version, sslcompression, channel_binding, "
          "gssencmode, krbsrvname, connect_timeout, keepalives, keepalives_idle, "
          "keepalives_interval, keepalives_count, tcp_user_timeout, target_session_attrs, "
          "application_name.");
      ok = false;
      break;
    }
  }
  PQconninfoFree(options);
  return ok;
}

// Raising a limit must wake waiting backends at once. Each backend re-reads
// its configuration when woken (the interrupt check sees the reload), and
// the backend that applies the new value first wakes every waiter.
void AssignLimit(int, void*) {
  if (IsUnderPostmaster && connthrottle::pg::TableReady()) connthrottle::pg::WakeAllWaiters();
}

// The GUC flags of a pool setting's unit (shared_pool_settings.def).
#define CONNTHROTTLE_GUC_UNIT_ms GUC_UNIT_MS
#define CONNTHROTTLE_GUC_UNIT_kB GUC_UNIT_KB
#define CONNTHROTTLE_GUC_UNIT_count 0

// The settings shared_pool_settings.def declares. PGC_SIGHUP: the
// communicator reads the server's configuration, never a session's SET.
void DefinePoolSettings() {
#define CONNTHROTTLE_POOL_SETTING(field, unit, default_value, min, max, name, description,      \
                                  details)                                                      \
  DefineCustomIntVariable(name, description, details, &pool_settings.field, default_value, min, \
                          max, PGC_SIGHUP, CONNTHROTTLE_GUC_UNIT_##unit, nullptr, nullptr,      \
                          nullptr);
#include "connthrottle/executor/shared_pool_settings.def"
}

}  // namespace

namespace connthrottle::pg {

// Client backends connected now, for the local node's limit: live
// processes connected to a database that are neither background workers nor
// autovacuum workers. A PGPROC is live while its process owns its latch
// (ProcKill disowns it; a recycled PGPROC's pid stays stale), and every field
// read here is reset when a process takes the PGPROC. Auxiliary processes
// and the autovacuum launcher have no database; prepared transactions own no
// latch. Logical WAL senders are counted: nothing in PGPROC tells them apart.
// Unlocked reads: the count is a momentary figure whichever way it races.
int ActiveClientBackends() {
  int count = 0;
  for (uint32 i = 0; i < ProcGlobal->allProcCount; ++i) {
    const PGPROC* proc = &ProcGlobal->allProcs[i];
    if (proc->procLatch.owner_pid != 0 && OidIsValid(proc->databaseId) &&
        !proc->isBackgroundWorker && (proc->statusFlags & PROC_IS_AUTOVACUUM) == 0) {
      ++count;
    }
  }
  return count;
}

Settings CurrentSettings() {
  Settings s;
  s.max_shared_pool_size = max_shared_pool_size;
  s.max_shared_pool_size_per_database = max_shared_pool_size_per_database;
  s.local_shared_pool_size = local_shared_pool_size;
  s.max_connections = MaxConnections;
  s.full_table = static_cast<FullTable>(full_table_policy);
  s.connection_wait_timeout_ms = connection_wait_timeout_ms;
  s.server_port = PostPortNumber;
  s.local_node = local_node != nullptr ? local_node : "";
  return s;
}

ExecutorSettings CurrentExecutorSettings() {
  ExecutorSettings e;
  e.max_pool_size = max_adaptive_executor_pool_size;
  e.max_cached_per_node = max_cached_conns_per_worker;
  e.max_cached_lifetime_ms = max_cached_connection_lifetime_ms;
  e.node_connection_timeout_ms = node_connection_timeout_ms;
  e.slow_start_interval_ms = executor_slow_start_interval_ms;
  e.node_conninfo = node_conninfo != nullptr ? node_conninfo : "";
  return e;
}

bool UseSharedPool() { return executor_transport == kSharedPool; }
PoolSettings CurrentPoolSettings() { return pool_settings; }

LeaseServiceSettings CurrentLeaseServiceSettings() {
  LeaseServiceSettings l;
  l.mode = static_cast<LeaseMode>(worker_leases);
  // What a lease may reach: the node's limit under max_shared_pool_size
  // (-1 off and 0 derive: max_connections).
  l.cap = max_shared_pool_size > 0 ? max_shared_pool_size : MaxConnections;
  snprintf(l.database, sizeof(l.database), "%s", lease_database != nullptr ? lease_database : "");
  snprintf(l.user, sizeof(l.user), "%s", lease_user != nullptr ? lease_user : "");
  l.idle_release_ms = 10000;
  l.connect_timeout_ms = node_connection_timeout_ms;
  return l;
}

void EnsureBackendExitCallback() {
  if (exit_callback_registered) return;
  before_shmem_exit(OnBackendExit, 0);
  exit_callback_registered = true;
}

// The settings of the shared counter table: limits, the table, waiting,
// the local node.
void DefineThrottlingSettings() {
  DefineCustomEnumVariable(
      "connthrottle.worker_leases",
      "Whether this coordinator leases its connections from workers that keep a budget.",
      "auto: the communicator asks every worker it uses for a lease and holds its connections "
      "to it within the lease where the worker keeps a budget (connthrottle.worker_budget), as "
      "without leases elsewhere. on: no connection to a worker without a lease. off: never ask.",
      &worker_leases, static_cast<int>(connthrottle::pg::LeaseMode::kAuto), kLeaseModes, PGC_SIGHUP,
      0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable("connthrottle.lease_database",
                             "Database the lease connection to each worker logs in to.", nullptr,
                             &lease_database, "postgres", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.lease_user", "Role the lease connection to each worker logs in as.",
      "Empty: libpq's default (the server's operating-system user). It needs EXECUTE on "
      "connthrottle.lease_renew on the workers.",
      &lease_user, "", PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.coordinator_id", "This coordinator's name at the workers it leases from.",
      "Empty: '<host name>:<port>'. At most 63 printable bytes, without space, '/' or '\\'.",
      &coordinator_id, "", PGC_POSTMASTER, 0,
      [](char** newval, void**, GucSource) {
        if (**newval != '\0' && !connthrottle::pg::IsValidCoordinatorId(*newval)) {
          GUC_check_errdetail(
              "A coordinator id has at most 63 printable bytes and no space, '/' or '\\'.");
          return false;
        }
        return true;
      },
      nullptr, nullptr);
  DefineCustomIntVariable(
      "connthrottle.max_shared_pool_size",
      "Maximum number of connections to each worker node across all backends, databases "
      "and roles.",
      "-1 turns throttling off (connections are still counted); 0 uses max_connections.",
      &max_shared_pool_size, 0, -1, (1 << 20) - 1, PGC_SIGHUP, 0, nullptr,
      [](int newval, void* extra) { AssignLimit(newval, extra); }, nullptr);
  DefineCustomIntVariable(
      "connthrottle.max_shared_pool_size_per_database",
      "Maximum number of connections to each worker node for each database, below "
      "max_shared_pool_size.",
      "-1 (the default) turns the per-database bound off. A change applies to connections "
      "opened after it; the shared pool counts or closes its existing ones.",
      &max_shared_pool_size_per_database, -1, -1, (1 << 20) - 1, PGC_SIGHUP, 0,
      [](int* newval, void**, GucSource) {
        if (*newval != 0) return true;
        GUC_check_errdetail("0 would refuse every connection; -1 turns the bound off.");
        return false;
      },
      [](int newval, void* extra) { AssignLimit(newval, extra); }, nullptr);
  DefineCustomIntVariable(
      "connthrottle.local_shared_pool_size",
      "Maximum number of connections from this server to itself as a worker node.",
      "-1 never connects to the local node (tasks run locally); 0 uses half of "
      "max_connections. It also bounds the active client backends under which a "
      "connection to the local node may be opened.",
      &local_shared_pool_size, 0, -1, (1 << 20) - 1, PGC_SIGHUP, 0, nullptr,
      [](int newval, void* extra) { AssignLimit(newval, extra); }, nullptr);
  DefineCustomIntVariable("connthrottle.max_tracked_nodes",
                          "Number of worker nodes that can have connections counted at once.",
                          "Shared memory is reserved for this many nodes at server start; needs "
                          "max_tracked_nodes * (128 + 16 * MaxBackends) bytes, roughly.",
                          &max_tracked_nodes, 1024, 1, 1 << 20, PGC_POSTMASTER, 0, nullptr, nullptr,
                          nullptr);
  DefineCustomEnumVariable(
      "connthrottle.full_table_policy",
      "What a connection to a new node does when max_tracked_nodes are all busy.",
      "admit_uncounted lets it through without counting it; refuse raises an error. "
      "Either way connthrottle.table_stats() counts the event.",
      &full_table_policy, static_cast<int>(FullTable::kAdmitUncounted), kFullTablePolicies,
      PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
  DefineCustomIntVariable("connthrottle.connection_wait_timeout",
                          "How long a backend waits for a connection slot to a node at its limit.",
                          "-1 waits without limit (statement_timeout still applies).",
                          &connection_wait_timeout_ms, 60000, -1, INT_MAX, PGC_USERSET, GUC_UNIT_MS,
                          nullptr, nullptr, nullptr);
  DefineCustomStringVariable(
      "connthrottle.local_node", "Which worker node is this server.",
      "Empty detects it: this server's port on a host that resolves to this machine. "
      "'none' treats no node as local; 'host:port' names it.",
      &local_node, "", PGC_SIGHUP, 0, CheckLocalNode, nullptr, nullptr);
}

// The settings of the executor's transports: the direct one's pools and
// cache, connecting, the shared pool (DefinePoolSettings: from
// shared_pool_settings.def) and its message area.
void DefineExecutorSettings() {
  DefineCustomIntVariable(
      "connthrottle.max_adaptive_executor_pool_size",
      "Maximum number of connections one execution opens to each worker node.",
      "The first connection is waited for; the others are optional and opened by slow start.",
      &max_adaptive_executor_pool_size, 16, 1, 1000, PGC_USERSET, 0, nullptr, nullptr, nullptr);
  DefineCustomIntVariable(
      "connthrottle.max_cached_conns_per_worker",
      "Idle connections per worker node a session keeps for its next execution.",
      "Cached connections keep their slots, so one is kept only while its node has no "
      "waiters and fewer than its limit are cached: idle sessions never hold all of a "
      "node's slots.",
      &max_cached_conns_per_worker, 1, 0, 1000, PGC_SUSET, 0, nullptr, nullptr, nullptr);
  DefineCustomIntVariable("connthrottle.max_cached_connection_lifetime",
                          "How long a cached connection to a worker node may be reused.", nullptr,
                          &max_cached_connection_lifetime_ms, 10 * 60 * 1000, 0, INT_MAX, PGC_SUSET,
                          GUC_UNIT_MS, nullptr, nullptr, nullptr);
  DefineCustomIntVariable("connthrottle.node_connection_timeout",
                          "How long establishing a connection to a worker node may take.", nullptr,
                          &node_connection_timeout_ms, 30 * 1000, 10, INT_MAX, PGC_USERSET,
                          GUC_UNIT_MS, nullptr, nullptr, nullptr);
  DefineCustomIntVariable(
      "connthrottle.executor_slow_start_interval",
      "The slow-start interval of the adaptive executor.",
      "At most k new connections per node are opened per interval, k growing by one each "
      "interval.",
      &executor_slow_start_interval_ms, 10, 1, 10000, PGC_USERSET, GUC_UNIT_MS, nullptr, nullptr,
      nullptr);
  DefineCustomStringVariable(
      "connthrottle.node_conninfo",
      "Extra libpq keywords for every connection to a worker node, as 'keyword=value ...'.",
      "TLS, timeouts, keepalives, target_session_attrs and application_name only; host, "
      "port, dbname, user, password, passfile, service and options are refused.",
      &node_conninfo, "", PGC_SUSET, 0, CheckNodeConninfo, nullptr, nullptr);
  DefineCustomEnumVariable(
      "connthrottle.executor_transport", "How run_tasks reaches the worker nodes.",
      "direct: each session opens its own connections (it waits for a slot, and gives its "
      "connections back when others wait). shared_pool: the session hands its tasks to the "
      "connthrottle communicator, which runs them over long-lived connections shared by all "
      "sessions.",
      &executor_transport, kSharedPool, kTransports, PGC_USERSET, 0, nullptr, nullptr, nullptr);
  DefinePoolSettings();
  DefineCustomIntVariable(
      "connthrottle.pool_message_bytes", "Size of each session's message area for the shared pool.",
      "Shared memory holds one area per possible backend. An execution's tasks, and its "
      "results, must fit in it.",
      &pool_message_bytes, 64 * 1024, 4096, 64 * 1024 * 1024, PGC_POSTMASTER, GUC_UNIT_BYTE,
      nullptr, nullptr, nullptr);
}

}  // namespace connthrottle::pg

void _PG_init(void) {
  using connthrottle::pg::DefineExecutorSettings;
  using connthrottle::pg::DefineThrottlingSettings;
  // Shared memory can only be had at server start.
  if (!process_shared_preload_libraries_in_progress) return;

  DefineThrottlingSettings();
  DefineExecutorSettings();
  connthrottle::pg::RegisterAdmission();
  MarkGUCPrefixReserved("connthrottle");

  prev_shmem_request_hook = shmem_request_hook;
  shmem_request_hook = ShmemRequest;
  prev_shmem_startup_hook = shmem_startup_hook;
  shmem_startup_hook = ShmemStartup;
  RegisterXactCallback(TransactionEnd, nullptr);
  connthrottle::pg::RegisterCommunicator();
  connthrottle::pg::RegisterLeaseManager();
}
