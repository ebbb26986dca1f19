// functions.cc — the SQL functions of schema connthrottle.
//
// Every function is written in the same shape: read and check the arguments
// with PostgreSQL calls (which may raise errors), call a noexcept function of
// session.cc with plain values, then raise its Outcome with ereport. Only
// plain structs and pointers live in these frames, so an error raised here
// unwinds nothing that owns a resource; the C++ objects live in session.cc.
// Functions are not STRICT: a NULL argument is an error with SQLSTATE 22004.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "utils/snapmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/pmsignal.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"
// clang-format on
}

#include "pg/bridge/session.h"
#include "pg/communicator.h"
#include "pg/guc.h"

namespace {

using connthrottle::pg::ActiveClientBackends;
using connthrottle::pg::Outcome;
using connthrottle::pg::Settings;

void Raise(const Outcome& o) {
  if (o.sqlstate == 0) return;
  ereport(ERROR, (errcode(o.sqlstate), errmsg("%s", o.message),
                  o.detail[0] != '\0' ? errdetail("%s", o.detail) : 0));
}

void RequireTable() {
  if (!connthrottle::pg::TableReady()) {
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("connthrottle must be loaded via shared_preload_libraries"),
                    errhint("Add connthrottle to shared_preload_libraries in postgresql.conf and "
                            "restart the server.")));
  }
}

void RequireNotNull(FunctionCallInfo fcinfo, int n, const char* name) {
  if (PG_ARGISNULL(n)) {
    ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                    errmsg("connthrottle: argument \"%s\" must not be NULL", name)));
  }
}

const char* TextArg(FunctionCallInfo fcinfo, int n, const char* name) {
  RequireNotNull(fcinfo, n, name);
  return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

int32 IntArg(FunctionCallInfo fcinfo, int n, const char* name) {
  RequireNotNull(fcinfo, n, name);
  return PG_GETARG_INT32(n);
}

// A node's host as counters and connections use it: host names and
// addresses in lower case without trailing dots, so that "W1", "w1." and
// "w1" share one counter; a Unix-socket directory (starting with '/') as
// given. A libpq host list ("a,b") would let one node's slot cover
// connections to several, so it is refused.
char* CanonicalHost(char* host) {
  if (strchr(host, ',') != nullptr) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: host \"%s\" is a list of hosts", host),
                    errhint("Give one host per node.")));
  }
  if (host[0] == '/') return host;
  for (char* p = host; *p != '\0'; ++p) *p = pg_ascii_tolower(static_cast<unsigned char>(*p));
  size_t n = strlen(host);
  while (n > 1 && host[n - 1] == '.') host[--n] = '\0';
  return host;
}

const char* HostArg(FunctionCallInfo fcinfo, int n) {
  RequireNotNull(fcinfo, n, "host");
  return CanonicalHost(text_to_cstring(PG_GETARG_TEXT_PP(n)));
}

// The nodes of connthrottle.worker_node, read directly (the caller need not
// have SELECT on it: the check below is what protects it).
struct CatalogNode {
  char* host;
  int32 port;
};

int ReadCatalog(CatalogNode** out) {
  Oid relid = RangeVarGetRelid(
      makeRangeVar(const_cast<char*>("connthrottle"), const_cast<char*>("worker_node"), -1),
      AccessShareLock, false);
  Relation rel = table_open(relid, AccessShareLock);
  TupleDesc desc = RelationGetDescr(rel);
  const int host_att = 2, port_att = 3;  // node_id, host, port, added_at
  if (desc->natts < port_att ||
      strcmp(NameStr(TupleDescAttr(desc, host_att - 1)->attname), "host") != 0 ||
      strcmp(NameStr(TupleDescAttr(desc, port_att - 1)->attname), "port") != 0) {
    elog(ERROR, "connthrottle: connthrottle.worker_node does not have the expected columns");
  }
  Snapshot snapshot = ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
  SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, nullptr);
  int count = 0, size = 16;
  *out = static_cast<CatalogNode*>(palloc(sizeof(CatalogNode) * size));
  while (HeapTuple tuple = systable_getnext(scan)) {
    bool host_null = false, port_null = false;
    Datum host = heap_getattr(tuple, host_att, desc, &host_null);
    Datum port = heap_getattr(tuple, port_att, desc, &port_null);
    if (host_null || port_null) continue;
    if (count == size) {
      size *= 2;
      *out = static_cast<CatalogNode*>(repalloc(*out, sizeof(CatalogNode) * size));
    }
    (*out)[count++] = {TextDatumGetCString(host), DatumGetInt32(port)};
  }
  systable_endscan(scan);
  table_close(rel, AccessShareLock);
  return count;
}

bool InCatalog(const CatalogNode* catalog, int n, const char* host, int32 port) {
  for (int i = 0; i < n; ++i) {
    if (catalog[i].port == port && strcmp(catalog[i].host, host) == 0) return true;
  }
  return false;
}

// Connections to nodes are made with the server's OS user's credentials
// (~/.pgpass, client certificates, Kerberos, trust rules): a role that is
// not a superuser may only reach the nodes a superuser put in the catalog.
void RequireCatalogNodes(const connthrottle::pg::NodeRef* nodes, int count, const char* what) {
  if (superuser()) return;
  CatalogNode* catalog = nullptr;
  const int n = ReadCatalog(&catalog);
  for (int i = 0; i < count; ++i) {
    if (!InCatalog(catalog, n, nodes[i].host, nodes[i].port)) {
      ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                      errmsg("connthrottle: node %s:%d is not in connthrottle.worker_node",
                             nodes[i].host, nodes[i].port),
                      errdetail("Only superusers may %s on nodes outside the catalog.", what)));
    }
  }
}

Oid DatabaseArg(FunctionCallInfo fcinfo, int n) {
  RequireNotNull(fcinfo, n, "database");
  return get_database_oid(NameStr(*PG_GETARG_NAME(n)), false);
}

// The wait of a call with a timeout argument: NULL means
// connthrottle.connection_wait_timeout; a timeout too long to represent
// means no limit.
connthrottle::pg::Wait WaitArg(FunctionCallInfo fcinfo, int n, const Settings& settings) {
  if (PG_ARGISNULL(n))
    return connthrottle::pg::BeginWait(settings.connection_wait_timeout_ms, true);
  Interval* interval = PG_GETARG_INTERVAL_P(n);
  // Months count as 30 days, as interval comparison does.
  __int128 us = static_cast<__int128>(interval->time) +
                (static_cast<__int128>(interval->day) +
                 static_cast<__int128>(interval->month) * DAYS_PER_MONTH) *
                    USECS_PER_DAY;
  if (us < 0) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: timeout must not be negative")));
  }
  // Beyond a thousand years is no limit at all.
  constexpr __int128 kNoLimitUs = static_cast<__int128>(1000) * 366 * USECS_PER_DAY;
  return connthrottle::pg::BeginWait(us >= kNoLimitUs ? -1 : static_cast<int64>(us / 1000), false);
}

// The interrupt check the core polls while waiting: it only reads whether
// something is pending. The error, if any, is raised after the core returned.
bool InterruptCheck() { return InterruptPending || ConfigReloadPending || !PostmasterIsAlive(); }

// Handles what made a wait stop. Raises the query-cancel, statement-timeout
// or termination error if that is what is pending; otherwise returns so that
// the caller waits again with its remaining time.
void HandleInterrupt(Settings* settings) {
  if (ConfigReloadPending) {
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    *settings = connthrottle::pg::CurrentSettings();
  }
  if (!PostmasterIsAlive()) {
    ereport(FATAL, (errcode(ERRCODE_ADMIN_SHUTDOWN),
                    errmsg("terminating connection due to unexpected postmaster exit")));
  }
  CHECK_FOR_INTERRUPTS();
}

// Runs `attempt`, a core call that may wait, showing the Extension wait
// event, until it ends other than by an interrupt. An interrupt (reload,
// cancel, terminate) is handled here, after the core has returned, and the
// call resumed with the settings as they are now. Raises the final error.
template <typename Attempt>
void WaitInterruptibly(Settings* settings, Attempt attempt) {
  for (;;) {
    pgstat_report_wait_start(PG_WAIT_EXTENSION);
    Outcome o = attempt(*settings);
    pgstat_report_wait_end();
    if (!o.interrupted) return Raise(o);
    HandleInterrupt(settings);
  }
}

// Full-table events seen when this backend last looked, and when it last
// warned (0: never).
uint64 full_table_events_seen = 0;
TimestampTz uncounted_warned_at = 0;

void BeginSlotWork() {
  RequireTable();
  connthrottle::pg::EnsureBackendExitCallback();
  full_table_events_seen = connthrottle::pg::FullTableEvents();
}

// After a call that may have taken slots: when the table was full meanwhile
// and connections went through uncounted (full_table_policy
// admit_uncounted), says so with a WARNING, at most once a minute per
// backend. The common case costs one atomic load.
void WarnIfUncounted() {
  const uint64 events = connthrottle::pg::FullTableEvents();
  if (events == full_table_events_seen) return;
  full_table_events_seen = events;
  const TimestampTz now = GetCurrentTimestamp();
  if (uncounted_warned_at != 0 &&
      !TimestampDifferenceExceeds(uncounted_warned_at, now, 60 * 1000)) {
    return;
  }
  connthrottle::pg::TableRow t{};
  if (!connthrottle::pg::TableStatistics(&t).ok() || t.uncounted_in_use == 0) return;
  uncounted_warned_at = now;
  ereport(WARNING,
          (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
           errmsg("connthrottle: %llu connections to worker nodes are not counted",
                  static_cast<unsigned long long>(t.uncounted_in_use)),
           errdetail("All %u entries of the shared table (connthrottle.max_tracked_nodes) are "
                     "busy and connthrottle.full_table_policy is 'admit_uncounted', so these "
                     "connections bypass every limit.",
                     t.capacity),
           errhint("Raise connthrottle.max_tracked_nodes (needs a restart), or set "
                   "connthrottle.full_table_policy to 'refuse'. This warning is repeated at "
                   "most once a minute per session.")));
}

// The executor's interrupt check: only what will raise an error (cancel,
// statement timeout, termination, postmaster death).
bool ExecutorInterruptCheck() {
  return QueryCancelPending || ProcDiePending || !PostmasterIsAlive();
}

// After an execution stopped on an interrupt: raise it.
void RaiseExecutorInterrupt(Settings* settings) {
  HandleInterrupt(settings);
  ereport(ERROR,
          (errcode(ERRCODE_QUERY_CANCELED), errmsg("connthrottle: the execution was interrupted")));
}

// An error RunLocalTask caught outside a subtransaction of its own (starting
// the subtransaction failed): the execution is stopped and the glue raises it
// again once the C++ frames have returned. nullptr when none.
ErrorData* local_task_error = nullptr;

// Receives a local task's rows as the executor produces them
// (SPI_execute_extended's dest): counts them and keeps the first row's value
// when it has one column (the task's result, should it return one row), so
// that a task returning millions of rows costs no memory — SPI_execute would
// keep them all in SPI_tuptable. Each statement that returns rows starts
// afresh (rStartup): the last one's rows are the task's, as over libpq.
struct RowCounter {
  DestReceiver pub;  // first: the executor sees a DestReceiver
  bool started = false;
  uint64 rows = 0;
  bool single_column = false;
  bool has_first = false;
  char* first = nullptr;  // malloc'd; nullptr for NULL

  void Forget() {
    free(first);
    first = nullptr;
    has_first = false;
  }
};

bool RowCounterReceive(TupleTableSlot* slot, DestReceiver* self) {
  auto* r = reinterpret_cast<RowCounter*>(self);
  if (r->rows++ == 0 && r->single_column) {
    bool isnull = false;
    const Datum d = slot_getattr(slot, 1, &isnull);
    if (!isnull) {
      Oid output = InvalidOid;
      bool varlena = false;
      getTypeOutputInfo(TupleDescAttr(slot->tts_tupleDescriptor, 0)->atttypid, &output, &varlena);
      char* text = OidOutputFunctionCall(output, d);
      r->first = strdup(text);
      pfree(text);
      if (r->first == nullptr) {
        ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
      }
    }
    r->has_first = true;
  }
  return true;
}

void RowCounterStartup(DestReceiver* self, int /*operation*/, TupleDesc desc) {
  auto* r = reinterpret_cast<RowCounter*>(self);
  r->Forget();
  r->started = true;
  r->rows = 0;
  r->single_column = desc->natts == 1;
}

void RowCounterNothing(DestReceiver* /*self*/) {}

// Runs one task in this backend (local-execution failover) inside an internal
// subtransaction, as PL/pgSQL's exception blocks do: every error is caught,
// the subtransaction rolled back, and the error described in `out`, so that
// nothing ever unwinds through the C++ executor that called this. Starting
// the subtransaction is inside the PG_TRY too: an error there cannot be
// rolled back here, so it is kept in local_task_error and the execution
// stopped (out->abort_call); run_tasks raises it after the executor returned.
void RunLocalTask(const char* sql, connthrottle::pg::LocalTaskOutcome* out) {
  MemoryContext oldcontext = CurrentMemoryContext;
  ResourceOwner oldowner = CurrentResourceOwner;
  volatile bool in_subtransaction = false;
  RowCounter counter;
  counter.pub.receiveSlot = RowCounterReceive;
  counter.pub.rStartup = RowCounterStartup;
  counter.pub.rShutdown = RowCounterNothing;
  counter.pub.rDestroy = RowCounterNothing;
  counter.pub.mydest = DestTuplestore;  // not DestNone: SPI would call a SELECT "UTILITY"
  RowCounter* volatile rows = &counter;
  PG_TRY();
  {
    BeginInternalSubTransaction(nullptr);
    in_subtransaction = true;
    MemoryContextSwitchTo(oldcontext);
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "connthrottle: SPI_connect failed");
    SPIExecuteOptions options{};
    options.read_only = false;
    options.dest = &counter.pub;
    int rc = SPI_execute_extended(sql, &options);
    if (rc < 0) elog(ERROR, "connthrottle: SPI_execute failed: %s", SPI_result_code_string(rc));
    const char* verb = "OK";
    switch (rc) {
      case SPI_OK_SELECT:
      case SPI_OK_SELINTO:
        verb = "SELECT";
        break;
      case SPI_OK_INSERT:
      case SPI_OK_INSERT_RETURNING:
        verb = "INSERT 0";
        break;
      case SPI_OK_UPDATE:
      case SPI_OK_UPDATE_RETURNING:
        verb = "UPDATE";
        break;
      case SPI_OK_DELETE:
      case SPI_OK_DELETE_RETURNING:
        verb = "DELETE";
        break;
      case SPI_OK_UTILITY:
        verb = nullptr;
        break;
      default:
        break;
    }
    if (verb != nullptr) {
      snprintf(out->command_tag, sizeof(out->command_tag), "%s " UINT64_FORMAT, verb,
               static_cast<uint64>(SPI_processed));
    } else {
      strlcpy(out->command_tag, "UTILITY", sizeof(out->command_tag));
    }
    // Rows returned, as a remote task counts them (a DML's rows are counted
    // only with RETURNING; a utility statement's, like SHOW's, as sent).
    const bool returns_rows = rc == SPI_OK_SELECT || rc == SPI_OK_INSERT_RETURNING ||
                              rc == SPI_OK_UPDATE_RETURNING || rc == SPI_OK_DELETE_RETURNING ||
                              (rc == SPI_OK_UTILITY && counter.started);
    if (returns_rows) {
      out->row_count = static_cast<int64_t>(counter.rows);
      if (counter.rows == 1 && counter.has_first) {
        out->has_value = true;
        out->value = counter.first;  // freed by the session
        counter.first = nullptr;
      }
    }
    counter.Forget();
    SPI_finish();
    ReleaseCurrentSubTransaction();
    in_subtransaction = false;
    MemoryContextSwitchTo(oldcontext);
    CurrentResourceOwner = oldowner;
    out->ok = true;
  }
  PG_CATCH();
  {
    MemoryContextSwitchTo(oldcontext);
    rows->Forget();
    ErrorData* edata = CopyErrorData();
    FlushErrorState();
    if (!in_subtransaction) {
      // Nothing to roll back to here: stop the execution, raise it later.
      local_task_error = edata;
      out->abort_call = true;
      out->cancelled = true;
      strlcpy(out->message, edata->message != nullptr ? edata->message : "error",
              sizeof(out->message));
      out->ok = false;
      return;
    }
    RollbackAndReleaseCurrentSubTransaction();
    MemoryContextSwitchTo(oldcontext);
    CurrentResourceOwner = oldowner;
    strlcpy(out->message, edata->message != nullptr ? edata->message : "error",
            sizeof(out->message));
    strlcpy(out->sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(out->sqlstate));
    out->cancelled = edata->sqlerrcode == ERRCODE_QUERY_CANCELED;
    FreeErrorData(edata);
    out->ok = false;
  }
  PG_END_TRY();
}

// Reads parallel host/port (and optionally command) arrays.
// The name of database `db` as a `name` Datum, or NULL when it is gone.
void DatabaseName(Oid db, Datum* value, bool* isnull) {
  char* name = get_database_name(db);
  *isnull = name == nullptr;
  *value = name != nullptr ? DirectFunctionCall1(namein, CStringGetDatum(name)) : Datum{0};
}

// Text, or NULL for a null pointer.
void TextOrNull(const char* text, Datum* value, bool* isnull) {
  *isnull = text == nullptr;
  *value = text != nullptr ? CStringGetTextDatum(text) : Datum{0};
}

// Text from a worker, checked to be valid in this database's encoding before
// it becomes a datum (workers are asked for it in that encoding).
void VerifiedTextOrNull(const char* text, Datum* value, bool* isnull) {
  if (text != nullptr) pg_verifymbstr(text, static_cast<int>(strlen(text)), false);
  TextOrNull(text, value, isnull);
}

// An interval of `us` microseconds.
Datum MicrosecondsInterval(int64 us) {
  Interval* interval = static_cast<Interval*>(palloc0(sizeof(Interval)));
  interval->time = us;
  return IntervalPGetDatum(interval);
}

// Returns `count` rows from a set-returning function in materialize mode:
// fill(i, values, nulls) sets row i's N columns (nulls start false).
template <int N, typename Fill>
Datum ReturnRows(FunctionCallInfo fcinfo, int count, Fill fill) {
  InitMaterializedSRF(fcinfo, 0);
  ReturnSetInfo* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
  for (int i = 0; i < count; ++i) {
    Datum values[N];
    bool nulls[N] = {};
    fill(i, values, nulls);
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
  }
  return static_cast<Datum>(0);
}

int NodeArrays(FunctionCallInfo fcinfo, int hosts_arg, int ports_arg, int commands_arg,
               connthrottle::pg::NodeRef** nodes, const char*** commands) {
  RequireNotNull(fcinfo, hosts_arg, "hosts");
  RequireNotNull(fcinfo, ports_arg, "ports");
  if (commands_arg >= 0) RequireNotNull(fcinfo, commands_arg, "commands");
  ArrayType* hosts = PG_GETARG_ARRAYTYPE_P(hosts_arg);
  ArrayType* ports = PG_GETARG_ARRAYTYPE_P(ports_arg);
  ArrayType* cmds = commands_arg >= 0 ? PG_GETARG_ARRAYTYPE_P(commands_arg) : nullptr;
  const char* names = cmds != nullptr ? "hosts, ports and commands" : "hosts and ports";
  if (ARR_NDIM(hosts) > 1 || ARR_NDIM(ports) > 1 || (cmds != nullptr && ARR_NDIM(cmds) > 1)) {
    ereport(ERROR, (errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
                    errmsg("connthrottle: %s must be one-dimensional arrays", names)));
  }
  if (array_contains_nulls(hosts) || array_contains_nulls(ports) ||
      (cmds != nullptr && array_contains_nulls(cmds))) {
    ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                    errmsg("connthrottle: %s must not contain NULL", names)));
  }
  Datum* host_values = nullptr;
  Datum* port_values = nullptr;
  Datum* cmd_values = nullptr;
  int nhosts = 0, nports = 0, ncmds = 0;
  deconstruct_array(hosts, TEXTOID, -1, false, TYPALIGN_INT, &host_values, nullptr, &nhosts);
  deconstruct_array(ports, INT4OID, 4, true, TYPALIGN_INT, &port_values, nullptr, &nports);
  if (cmds != nullptr) {
    deconstruct_array(cmds, TEXTOID, -1, false, TYPALIGN_INT, &cmd_values, nullptr, &ncmds);
  }
  if (nhosts != nports || (cmds != nullptr && ncmds != nhosts)) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    cmds != nullptr ? errmsg("connthrottle: %s differ in length (%d, %d and %d)",
                                             names, nhosts, nports, ncmds)
                                    : errmsg("connthrottle: %s differ in length (%d and %d)", names,
                                             nhosts, nports)));
  }

  *nodes = static_cast<connthrottle::pg::NodeRef*>(
      palloc(sizeof(connthrottle::pg::NodeRef) * (nhosts > 0 ? nhosts : 1)));
  if (commands != nullptr) {
    *commands = static_cast<const char**>(palloc(sizeof(char*) * (nhosts > 0 ? nhosts : 1)));
  }
  for (int i = 0; i < nhosts; ++i) {
    (*nodes)[i].host = CanonicalHost(TextDatumGetCString(host_values[i]));
    (*nodes)[i].port = DatumGetInt32(port_values[i]);
    if (commands != nullptr) (*commands)[i] = TextDatumGetCString(cmd_values[i]);
  }
  return nhosts;
}

connthrottle::pg::ExecutorSettings ExecutorSettingsNow() {
  connthrottle::pg::ExecutorSettings e = connthrottle::pg::CurrentExecutorSettings();
  e.database = get_database_name(MyDatabaseId);
  e.user = GetUserNameFromId(GetUserId(), false);
  e.client_encoding = GetDatabaseEncodingName();
  return e;
}

// Appends `value` in COPY text format.
void AppendCopyValue(StringInfo line, const char* value) {
  if (value == nullptr) {
    appendStringInfoString(line, "\\N");
    return;
  }
  for (const char* p = value; *p != '\0'; ++p) {
    switch (*p) {
      case '\\':
        appendStringInfoString(line, "\\\\");
        break;
      case '\t':
        appendStringInfoString(line, "\\t");
        break;
      case '\n':
        appendStringInfoString(line, "\\n");
        break;
      case '\r':
        appendStringInfoString(line, "\\r");
        break;
      default:
        appendStringInfoChar(line, *p);
    }
  }
}

// Which node a row goes to: a hash of its first column's text (NULL: node 0).
int NodeForRow(const char* first, int nodes) {
  if (first == nullptr || nodes <= 1) return 0;
  uint32 h = 2166136261u;
  for (const unsigned char* p = reinterpret_cast<const unsigned char*>(first); *p; ++p) {
    h = (h ^ *p) * 16777619u;
  }
  return static_cast<int>(h % static_cast<uint32>(nodes));
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_assert_preloaded);
PG_FUNCTION_INFO_V1(connthrottle_try_acquire);
PG_FUNCTION_INFO_V1(connthrottle_acquire);
PG_FUNCTION_INFO_V1(connthrottle_force_acquire);
PG_FUNCTION_INFO_V1(connthrottle_release);
PG_FUNCTION_INFO_V1(connthrottle_release_all);
PG_FUNCTION_INFO_V1(connthrottle_session_slots);
PG_FUNCTION_INFO_V1(connthrottle_reserve);
PG_FUNCTION_INFO_V1(connthrottle_try_reserve);
PG_FUNCTION_INFO_V1(connthrottle_use_reservation);
PG_FUNCTION_INFO_V1(connthrottle_reservations);
PG_FUNCTION_INFO_V1(connthrottle_node_stats);
PG_FUNCTION_INFO_V1(connthrottle_holders);
PG_FUNCTION_INFO_V1(connthrottle_table_stats);
PG_FUNCTION_INFO_V1(connthrottle_pool_stats);
PG_FUNCTION_INFO_V1(connthrottle_is_local_node);
PG_FUNCTION_INFO_V1(connthrottle_audit);
PG_FUNCTION_INFO_V1(connthrottle_run_tasks);
PG_FUNCTION_INFO_V1(connthrottle_distribute);

Datum connthrottle_assert_preloaded(PG_FUNCTION_ARGS) {
  RequireTable();
  PG_RETURN_VOID();
}

// try_acquire(host text, port int, database name) returns boolean
Datum connthrottle_try_acquire(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  BeginSlotWork();
  Settings settings = connthrottle::pg::CurrentSettings();
  bool acquired = false;
  Outcome o = connthrottle::pg::TryAcquire(host, port, database, settings, ActiveClientBackends(),
                                           &acquired);
  Raise(o);
  WarnIfUncounted();
  PG_RETURN_BOOL(acquired);
}

// acquire(host text, port int, database name, timeout interval) returns void
Datum connthrottle_acquire(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  BeginSlotWork();
  Settings settings = connthrottle::pg::CurrentSettings();
  connthrottle::pg::Wait wait = WaitArg(fcinfo, 3, settings);
  WaitInterruptibly(&settings, [&](const Settings& now) {
    return connthrottle::pg::AcquireWaiting(host, port, database, now, ActiveClientBackends(), wait,
                                            InterruptCheck);
  });
  WarnIfUncounted();
  PG_RETURN_VOID();
}

// force_acquire(host text, port int, database name) returns void
Datum connthrottle_force_acquire(PG_FUNCTION_ARGS) {
  // A forced slot ignores the limit: not for roles that merely run tasks.
  if (!superuser()) {
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                    errmsg("connthrottle: only superusers may force_acquire")));
  }
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  BeginSlotWork();
  Raise(connthrottle::pg::AcquireForced(host, port, database, connthrottle::pg::CurrentSettings()));
  WarnIfUncounted();
  PG_RETURN_VOID();
}

// release(host text, port int, database name) returns boolean
Datum connthrottle_release(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  RequireTable();
  bool released = false;
  Raise(connthrottle::pg::Release(host, port, database, &released));
  PG_RETURN_BOOL(released);
}

// release_all() returns integer
Datum connthrottle_release_all(PG_FUNCTION_ARGS) {
  RequireTable();
  int count = 0;
  Raise(connthrottle::pg::ReleaseAllSlots(&count));
  PG_RETURN_INT32(count);
}

// session_slots() returns setof (host text, port int, database name, kind text)
Datum connthrottle_session_slots(PG_FUNCTION_ARGS) {
  RequireTable();
  const int max = 4096;
  auto* rows =
      static_cast<connthrottle::pg::HeldSlot*>(palloc(sizeof(connthrottle::pg::HeldSlot) * max));
  int count = 0;
  Raise(connthrottle::pg::ListSlots(rows, max, &count));
  return ReturnRows<4>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    values[0] = CStringGetTextDatum(rows[i].host);
    values[1] = Int32GetDatum(rows[i].port);
    DatabaseName(rows[i].database, &values[2], &nulls[2]);
    values[3] = CStringGetTextDatum(rows[i].kind);
  });
}

// reserve(hosts text[], ports int[], database name, timeout interval) returns integer
Datum connthrottle_reserve(PG_FUNCTION_ARGS) {
  Oid database = DatabaseArg(fcinfo, 2);
  connthrottle::pg::NodeRef* nodes = nullptr;
  const int nhosts = NodeArrays(fcinfo, 0, 1, -1, &nodes, nullptr);
  BeginSlotWork();
  Settings settings = connthrottle::pg::CurrentSettings();
  connthrottle::pg::Wait wait = WaitArg(fcinfo, 3, settings);
  int reserved = 0;
  WaitInterruptibly(&settings, [&](const Settings& now) {
    return connthrottle::pg::Reserve(nodes, nhosts, database, GetUserId(), now,
                                     ActiveClientBackends(), wait, InterruptCheck, &reserved);
  });
  WarnIfUncounted();
  PG_RETURN_INT32(reserved);
}

// try_reserve(host text, port int, database name) returns boolean
Datum connthrottle_try_reserve(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  BeginSlotWork();
  bool reserved = false;
  Raise(connthrottle::pg::TryReserve(host, port, database, GetUserId(),
                                     connthrottle::pg::CurrentSettings(), ActiveClientBackends(),
                                     &reserved));
  WarnIfUncounted();
  PG_RETURN_BOOL(reserved);
}

// use_reservation(host text, port int, database name) returns boolean
Datum connthrottle_use_reservation(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  Oid database = DatabaseArg(fcinfo, 2);
  RequireTable();
  bool used = false;
  Raise(connthrottle::pg::UseReservation(host, port, database, GetUserId(), &used));
  PG_RETURN_BOOL(used);
}

// reservations() returns setof (host text, port int, database name, used boolean)
Datum connthrottle_reservations(PG_FUNCTION_ARGS) {
  RequireTable();
  const int max = 4096;
  auto* rows = static_cast<connthrottle::pg::ReservationRow*>(
      palloc(sizeof(connthrottle::pg::ReservationRow) * max));
  int count = 0;
  Raise(connthrottle::pg::ListReservations(rows, max, &count));
  return ReturnRows<4>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    values[0] = CStringGetTextDatum(rows[i].host);
    values[1] = Int32GetDatum(rows[i].port);
    DatabaseName(rows[i].database, &values[2], &nulls[2]);
    values[3] = BoolGetDatum(rows[i].used);
  });
}

// node_stats() returns setof (host, port, database, database_oid, connections,
// forced, reserved, waiters, acquired, refused, waited, wait_time,
// forced_total, wakeups, cached)
Datum connthrottle_node_stats(PG_FUNCTION_ARGS) {
  RequireTable();
  const int max = static_cast<int>(connthrottle::pg::Capacity());
  auto* rows = static_cast<connthrottle::pg::NodeRow*>(
      palloc(sizeof(connthrottle::pg::NodeRow) * (max > 0 ? max : 1)));
  int count = 0;
  Raise(connthrottle::pg::NodeStats(rows, max, &count));
  return ReturnRows<15>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const connthrottle::pg::NodeRow& r = rows[i];
    values[0] = CStringGetTextDatum(r.host);
    values[1] = Int32GetDatum(r.port);
    DatabaseName(r.database, &values[2], &nulls[2]);
    values[3] = ObjectIdGetDatum(r.database);
    values[4] = Int32GetDatum(static_cast<int32>(r.connections));
    values[5] = Int32GetDatum(static_cast<int32>(r.forced));
    values[6] = Int32GetDatum(static_cast<int32>(r.reserved));
    values[7] = Int32GetDatum(static_cast<int32>(r.waiters));
    values[8] = Int64GetDatum(static_cast<int64>(r.acquired));
    values[9] = Int64GetDatum(static_cast<int64>(r.refused));
    values[10] = Int64GetDatum(static_cast<int64>(r.waited));
    values[11] = MicrosecondsInterval(r.wait_time_us);
    values[12] = Int64GetDatum(static_cast<int64>(r.forced_total));
    values[13] = Int64GetDatum(static_cast<int64>(r.wakeups));
    values[14] = Int32GetDatum(static_cast<int32>(r.cached));
  });
}

// holders() returns setof (pid, host, port, database, connections, forced,
// reserved, waiting)
Datum connthrottle_holders(PG_FUNCTION_ARGS) {
  RequireTable();
  const connthrottle::pg::HolderRow* rows = nullptr;
  int count = 0;
  Raise(connthrottle::pg::Holders(&rows, &count));
  return ReturnRows<8>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const connthrottle::pg::HolderRow& r = rows[i];
    values[0] = Int32GetDatum(r.pid);
    values[1] = CStringGetTextDatum(r.host);
    values[2] = Int32GetDatum(r.port);
    DatabaseName(r.database, &values[3], &nulls[3]);
    values[4] = Int32GetDatum(static_cast<int32>(r.connections));
    values[5] = Int32GetDatum(static_cast<int32>(r.forced));
    values[6] = Int32GetDatum(static_cast<int32>(r.reserved));
    values[7] = BoolGetDatum(r.waiting);
  });
}

// The tuple descriptor of a function returning one record.
TupleDesc RecordResult(FunctionCallInfo fcinfo, const char* function) {
  TupleDesc desc;
  if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE) {
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("connthrottle: %s must return a record", function)));
  }
  return BlessTupleDesc(desc);
}

// table_stats() returns one row of table-wide figures
Datum connthrottle_table_stats(PG_FUNCTION_ARGS) {
  RequireTable();
  TupleDesc desc = RecordResult(fcinfo, "table_stats");
  connthrottle::pg::TableRow t{};
  Raise(connthrottle::pg::TableStatistics(&t));
  Datum values[14] = {
      Int32GetDatum(static_cast<int32>(t.capacity)),
      Int32GetDatum(static_cast<int32>(t.entries_in_use)),
      Int32GetDatum(static_cast<int32>(t.owners)),
      Int32GetDatum(static_cast<int32>(t.max_owners)),
      Int64GetDatum(static_cast<int64>(t.uncounted_in_use)),
      Int64GetDatum(static_cast<int64>(t.full_table_events)),
      Int64GetDatum(static_cast<int64>(t.entries_created)),
      Int64GetDatum(static_cast<int64>(t.entries_dropped)),
      Int64GetDatum(static_cast<int64>(t.acquired)),
      Int64GetDatum(static_cast<int64>(t.refused)),
      Int64GetDatum(static_cast<int64>(t.waited)),
      MicrosecondsInterval(t.wait_time_us),
      Int64GetDatum(static_cast<int64>(t.forced_total)),
      Int64GetDatum(static_cast<int64>(t.wakeups)),
  };
  bool nulls[14] = {false};
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// pool_stats() returns one row: the communicator (pid, starts) and the
// figures it published, in the order of pool_stats.h (the SQL script's
// columns come from the same list)
Datum connthrottle_pool_stats(PG_FUNCTION_ARGS) {
  constexpr int kColumns = 2 + connthrottle::pg::kPoolStatCount;
  RequireTable();
  TupleDesc desc = RecordResult(fcinfo, "pool_stats");
  // A script older than the library shows the columns it has; a newer one
  // would read past the values.
  if (desc->natts > kColumns) {
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("connthrottle: pool_stats has %d columns, this library fills %d",
                           desc->natts, kColumns)));
  }
  const connthrottle::pg::CommunicatorStats c = connthrottle::pg::ReadCommunicatorStats();
  Datum values[kColumns];
  bool nulls[kColumns] = {false};
  values[0] = Int32GetDatum(c.pid);
  nulls[0] = c.pid == 0;
  values[1] = Int64GetDatum(static_cast<int64>(c.epoch));
  for (int k = 0; k < connthrottle::pg::kPoolStatCount; ++k) {
    values[2 + k] = Int64GetDatum(c.figures.values[k]);
  }
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// is_local_node(host text, port int) returns boolean
Datum connthrottle_is_local_node(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  // Resolving a name may send it to a DNS server: only catalog nodes, unless
  // a superuser asks.
  connthrottle::pg::NodeRef node{host, port};
  RequireCatalogNodes(&node, 1, "call is_local_node");
  bool local = false;
  Raise(connthrottle::pg::IsLocalNode(host, port, connthrottle::pg::CurrentSettings(), &local));
  PG_RETURN_BOOL(local);
}

// How many run_tasks or distribute calls of this session are running. The
// executor, its connections and the rows of a call belong to the session, so
// a call made from inside another one (a task that runs locally calling
// run_tasks, distribute's query calling it) is refused instead of taking
// them over.
int executor_calls = 0;

void RequireNoExecutorCall(const char* function) {
  if (executor_calls == 0) return;
  ereport(ERROR,
          (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
           errmsg("connthrottle: %s cannot be called while run_tasks or distribute runs in this "
                  "session",
                  function),
           errdetail("A task that ran locally, or the query of distribute, called it.")));
}

// A SQLSTATE given as five characters, packed; `fallback` for anything else.
int PackedSqlstate(const char* state, int fallback) {
  if (state == nullptr || strlen(state) != 5) return fallback;
  for (int i = 0; i < 5; ++i) {
    if (!isdigit(static_cast<unsigned char>(state[i])) && !(state[i] >= 'A' && state[i] <= 'Z')) {
      return fallback;
    }
  }
  return MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);
}

// run_tasks(hosts text[], ports int[], commands text[], raise_on_error
// boolean) returns setof (task, host, port, success, result, sqlstate, error,
// ran_locally, connection, rows, queued, run)
Datum connthrottle_run_tasks(PG_FUNCTION_ARGS) {
  RequireNoExecutorCall("run_tasks");
  const bool raise_on_error = PG_NARGS() > 3 && !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
  connthrottle::pg::NodeRef* nodes = nullptr;
  const char** commands = nullptr;
  const int count = NodeArrays(fcinfo, 0, 1, 2, &nodes, &commands);
  RequireCatalogNodes(nodes, count, "run tasks");
  auto* tasks = static_cast<connthrottle::pg::TaskSpec*>(
      palloc(sizeof(connthrottle::pg::TaskSpec) * (count > 0 ? count : 1)));
  for (int i = 0; i < count; ++i) tasks[i] = {nodes[i].host, nodes[i].port, commands[i]};
  BeginSlotWork();
  Settings settings = connthrottle::pg::CurrentSettings();
  connthrottle::pg::ExecutorSettings executor = ExecutorSettingsNow();
  const connthrottle::pg::TaskRow* rows = nullptr;
  pgstat_report_wait_start(PG_WAIT_EXTENSION);
  // RunTasks never raises (RunLocalTask catches every error): the counter
  // needs no PG_TRY.
  ++executor_calls;
  local_task_error = nullptr;
  // The shared pool needs this backend's session slot (any backend
  // connected to a database has one).
  connthrottle::pg::ChannelOps channel{};
  const bool pooled = connthrottle::pg::UseSharedPool() && connthrottle::pg::ChannelAvailable();
  if (pooled) channel = connthrottle::pg::BackendChannelOps();
  Outcome o = connthrottle::pg::RunTasks(tasks, count, MyDatabaseId, settings, executor,
                                         ActiveClientBackends(), ExecutorInterruptCheck,
                                         RunLocalTask, pooled ? &channel : nullptr, &rows);
  --executor_calls;
  pgstat_report_wait_end();
  if (pooled) connthrottle::pg::RethrowChannelError();
  if (local_task_error != nullptr) {
    ErrorData* edata = local_task_error;
    local_task_error = nullptr;
    ReThrowError(edata);
  }
  if (o.interrupted) RaiseExecutorInterrupt(&settings);
  Raise(o);
  WarnIfUncounted();
  if (raise_on_error) {
    for (int i = 0; i < count; ++i) {
      if (rows[i].success) continue;
      ereport(ERROR, (errcode(PackedSqlstate(rows[i].sqlstate, ERRCODE_CONNECTION_FAILURE)),
                      errmsg("%s", rows[i].error != nullptr ? rows[i].error : "task failed"),
                      errcontext("connthrottle.run_tasks task %d on %s:%d", i + 1, rows[i].host,
                                 rows[i].port)));
    }
  }
  return ReturnRows<12>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const connthrottle::pg::TaskRow& r = rows[i];
    values[0] = Int32GetDatum(i + 1);
    values[1] = CStringGetTextDatum(r.host);
    values[2] = Int32GetDatum(r.port);
    values[3] = BoolGetDatum(r.success);
    VerifiedTextOrNull(r.result, &values[4], &nulls[4]);
    TextOrNull(r.sqlstate != nullptr && r.sqlstate[0] != '\0' ? r.sqlstate : nullptr, &values[5],
               &nulls[5]);
    VerifiedTextOrNull(r.error, &values[6], &nulls[6]);
    values[7] = BoolGetDatum(r.ran_locally);
    nulls[8] = r.connection < 0;
    values[8] = Int32GetDatum(r.connection);
    values[9] = Int64GetDatum(r.rows);
    values[10] = MicrosecondsInterval(r.queued_us);
    values[11] = MicrosecondsInterval(r.run_us);
  });
}

// A distribute step that stopped on an interrupt raises it (cancel,
// statement_timeout, termination); the end of the transaction then abandons
// the stream, cancelling the workers' COPY.
static void RaiseDistributeOutcome(Settings* settings, const Outcome& o) {
  if (o.interrupted) RaiseExecutorInterrupt(settings);
  Raise(o);
}

// distribute(query text, target_table text, hosts text[], ports int[]) returns
// setof (host, port, rows, success, error): streams the query's rows with
// COPY into target_table on the nodes, each row to the node its first
// column's hash picks, with a slot reserved per node up front.
Datum connthrottle_distribute(PG_FUNCTION_ARGS) {
  RequireNoExecutorCall("distribute");
  const char* query = TextArg(fcinfo, 0, "query");
  const char* target = TextArg(fcinfo, 1, "target_table");
  connthrottle::pg::NodeRef* nodes = nullptr;
  const int count = NodeArrays(fcinfo, 2, 3, -1, &nodes, nullptr);
  RequireCatalogNodes(nodes, count, "distribute rows");
  if (count == 0) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: distribute needs at least one node")));
  }
  // The target is a table name as SQL writes it: "public.t", "t",
  // '"Mixed Case"'; each part quoted for the COPY command.
  char* schema_name = nullptr;
  char* table_name = nullptr;
  DeconstructQualifiedName(stringToQualifiedNameList(target), &schema_name, &table_name);
  const char* copy_sql =
      psprintf("COPY %s FROM STDIN", quote_qualified_identifier(schema_name, table_name));
  BeginSlotWork();
  const connthrottle::pg::DistributeRow* rows = nullptr;
  int nrows = 0;
  ++executor_calls;
  PG_TRY();
  {
    Settings settings = connthrottle::pg::CurrentSettings();
    connthrottle::pg::ExecutorSettings executor = ExecutorSettingsNow();
    connthrottle::pg::Wait wait =
        connthrottle::pg::BeginWait(settings.connection_wait_timeout_ms, /*from_setting=*/true);
    WaitInterruptibly(&settings, [&](const Settings& now) {
      return connthrottle::pg::BeginDistribute(nodes, count, copy_sql, MyDatabaseId, now, executor,
                                               ActiveClientBackends(), wait, InterruptCheck,
                                               ExecutorInterruptCheck);
    });
    // Rows are sent as the cursor yields them; an error ends the transaction,
    // whose end abandons the distribution (the workers roll their COPY back).
    if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "connthrottle: SPI_connect failed");
    SPIPlanPtr plan = SPI_prepare(query, 0, nullptr);
    if (plan == nullptr) {
      elog(ERROR, "connthrottle: cannot prepare query: %s", SPI_result_code_string(SPI_result));
    }
    Portal portal = SPI_cursor_open(nullptr, plan, nullptr, nullptr, true);
    StringInfoData line;
    initStringInfo(&line);
    // The output functions' strings of one batch of rows, freed after it.
    MemoryContext batch = AllocSetContextCreate(
        CurrentMemoryContext, "connthrottle distribute batch", ALLOCSET_DEFAULT_SIZES);
    for (;;) {
      SPI_cursor_fetch(portal, true, 1000);
      if (SPI_processed == 0) break;
      TupleDesc desc = SPI_tuptable->tupdesc;
      MemoryContext outer = MemoryContextSwitchTo(batch);
      for (uint64 r = 0; r < SPI_processed; ++r) {
        CHECK_FOR_INTERRUPTS();
        resetStringInfo(&line);
        HeapTuple tuple = SPI_tuptable->vals[r];
        char* first = desc->natts > 0 ? SPI_getvalue(tuple, desc, 1) : nullptr;
        for (int col = 1; col <= desc->natts; ++col) {
          if (col > 1) appendStringInfoChar(&line, '\t');
          AppendCopyValue(&line, col == 1 ? first : SPI_getvalue(tuple, desc, col));
        }
        appendStringInfoChar(&line, '\n');
        RaiseDistributeOutcome(&settings,
                               connthrottle::pg::DistributeOne(NodeForRow(first, count), line.data,
                                                               static_cast<size_t>(line.len)));
      }
      MemoryContextSwitchTo(outer);
      MemoryContextReset(batch);
      SPI_freetuptable(SPI_tuptable);
    }
    SPI_cursor_close(portal);
    SPI_finish();
    RaiseDistributeOutcome(&settings, connthrottle::pg::FinishDistribute(&rows, &nrows));
  }
  PG_CATCH();
  {
    --executor_calls;
    PG_RE_THROW();
  }
  PG_END_TRY();
  --executor_calls;
  WarnIfUncounted();
  return ReturnRows<5>(fcinfo, nrows, [&](int i, Datum* values, bool* nulls) {
    values[0] = CStringGetTextDatum(rows[i].host);
    values[1] = Int32GetDatum(rows[i].port);
    values[2] = Int64GetDatum(rows[i].rows);
    values[3] = BoolGetDatum(rows[i].success);
    VerifiedTextOrNull(rows[i].error, &values[4], &nulls[4]);
  });
}

// audit() returns void; raises when the counters disagree with their owners
Datum connthrottle_audit(PG_FUNCTION_ARGS) {
  RequireTable();
  Raise(connthrottle::pg::Audit());
  PG_RETURN_VOID();
}

}  // extern "C"
