// functions_tasks.cc — the SQL functions that work on the nodes through the
// executor: run_tasks and distribute. Written in the shape of functions.cc;
// distribute also runs the caller's query with SPI and sends its rows as
// the cursor yields them.

extern "C" {
// clang-format off
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/wait_event.h"
// clang-format on
}

#include "pg/bridge/distribute.h"
#include "pg/bridge/tasks.h"
#include "pg/communicator.h"
#include "pg/guc.h"
#include "pg/local_task.h"
#include "pg/sql_args.h"
#include "pg/sql_call.h"
#include "pg/sql_results.h"
#include "pg/worker_catalog.h"

namespace pg = connthrottle::pg;

namespace {

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

pg::ExecutorSettings ExecutorSettingsNow() {
  pg::ExecutorSettings e = pg::CurrentExecutorSettings();
  e.database = get_database_name(MyDatabaseId);
  e.user = GetUserNameFromId(GetUserId(), false);
  e.client_encoding = GetDatabaseEncodingName();
  return e;
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

// Runs `tasks` with the transport connthrottle.executor_transport names
// (the shared pool needs this backend's session slot, which any backend
// connected to a database has), then raises what the execution left to
// raise: a lost communicator, an error a local task could not contain, an
// interrupt, the execution's own error.
const pg::TaskRow* RunTasksOrRaise(const pg::TaskSpec* tasks, int count) {
  pg::Settings settings = pg::CurrentSettings();
  pg::ExecutorSettings executor = ExecutorSettingsNow();
  const pg::TaskRow* rows = nullptr;
  pgstat_report_wait_start(PG_WAIT_EXTENSION);
  // RunTasks never raises (RunLocalTask catches every error): the counter
  // needs no PG_TRY.
  ++executor_calls;
  pg::ForgetLocalTaskError();
  pg::ChannelOps channel{};
  const bool pooled = pg::UseSharedPool() && pg::ChannelAvailable();
  if (pooled) channel = pg::BackendChannelOps();
  pg::Outcome o = pg::RunTasks(tasks, count, MyDatabaseId, settings, executor,
                               pg::ActiveClientBackends(), pg::ExecutorInterruptCheck,
                               pg::RunLocalTask, pooled ? &channel : nullptr, &rows);
  --executor_calls;
  pgstat_report_wait_end();
  if (pooled) pg::RethrowChannelError();
  pg::RethrowLocalTaskError();
  if (o.interrupted) pg::RaiseExecutorInterrupt(&settings);
  pg::Raise(o);
  return rows;
}

// run_tasks's raise_on_error: raises the first failed task's error.
void RaiseFirstFailedTask(const pg::TaskRow* rows, int count) {
  for (int i = 0; i < count; ++i) {
    if (rows[i].success) continue;
    ereport(ERROR, (errcode(PackedSqlstate(rows[i].sqlstate, ERRCODE_CONNECTION_FAILURE)),
                    errmsg("%s", rows[i].error != nullptr ? rows[i].error : "task failed"),
                    errcontext("connthrottle.run_tasks task %d on %s:%d", i + 1, rows[i].host,
                               rows[i].port)));
  }
}

// The COPY text format's escape for `c`, or nullptr when it stands as itself.
const char* CopyEscape(char c) {
  switch (c) {
    case '\\':
      return "\\\\";
    case '\t':
      return "\\t";
    case '\n':
      return "\\n";
    case '\r':
      return "\\r";
    default:
      return nullptr;
  }
}

// Appends `value` in COPY text format.
void AppendCopyValue(StringInfo line, const char* value) {
  if (value == nullptr) {
    appendStringInfoString(line, "\\N");
    return;
  }
  for (const char* p = value; *p != '\0'; ++p) {
    if (const char* escape = CopyEscape(*p)) {
      appendStringInfoString(line, escape);
    } else {
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

// A distribute step that stopped on an interrupt raises it (cancel,
// statement_timeout, termination); the end of the transaction then abandons
// the stream, cancelling the workers' COPY.
void RaiseDistributeOutcome(pg::Settings* settings, const pg::Outcome& o) {
  pg::RethrowChannelError();  // a wait on the latch that failed (shared pool)
  if (o.interrupted) pg::RaiseExecutorInterrupt(settings);
  pg::Raise(o);
}

// The COPY command for target_table, a table name as SQL writes it:
// "public.t", "t", '"Mixed Case"'; each part quoted.
const char* CopyCommand(const char* target) {
  char* schema_name = nullptr;
  char* table_name = nullptr;
  DeconstructQualifiedName(stringToQualifiedNameList(target), &schema_name, &table_name);
  return psprintf("COPY %s FROM STDIN", quote_qualified_identifier(schema_name, table_name));
}

// Sends the rows of SPI's current batch, each in COPY text format to the
// node its first column picks.
void SendBatch(int nodes, StringInfo line, pg::Settings* settings) {
  TupleDesc desc = SPI_tuptable->tupdesc;
  for (uint64 r = 0; r < SPI_processed; ++r) {
    CHECK_FOR_INTERRUPTS();
    resetStringInfo(line);
    HeapTuple tuple = SPI_tuptable->vals[r];
    char* first = desc->natts > 0 ? SPI_getvalue(tuple, desc, 1) : nullptr;
    for (int col = 1; col <= desc->natts; ++col) {
      if (col > 1) appendStringInfoChar(line, '\t');
      AppendCopyValue(line, col == 1 ? first : SPI_getvalue(tuple, desc, col));
    }
    appendStringInfoChar(line, '\n');
    RaiseDistributeOutcome(settings, pg::DistributeOne(NodeForRow(first, nodes), line->data,
                                                       static_cast<size_t>(line->len)));
  }
}

// Runs `query` and sends its rows as the cursor yields them; an error ends
// the transaction, whose end abandons the distribution (the workers roll
// their COPY back).
void SendQueryRows(const char* query, int nodes, pg::Settings* settings) {
  if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "connthrottle: SPI_connect failed");
  SPIPlanPtr plan = SPI_prepare(query, 0, nullptr);
  if (plan == nullptr) {
    elog(ERROR, "connthrottle: cannot prepare query: %s", SPI_result_code_string(SPI_result));
  }
  Portal portal = SPI_cursor_open(nullptr, plan, nullptr, nullptr, true);
  StringInfoData line;
  initStringInfo(&line);
  // The output functions' strings of one batch of rows, freed after it.
  MemoryContext batch = AllocSetContextCreate(CurrentMemoryContext, "connthrottle distribute batch",
                                              ALLOCSET_DEFAULT_SIZES);
  for (;;) {
    SPI_cursor_fetch(portal, true, 1000);
    if (SPI_processed == 0) break;
    MemoryContext outer = MemoryContextSwitchTo(batch);
    SendBatch(nodes, &line, settings);
    MemoryContextSwitchTo(outer);
    MemoryContextReset(batch);
    SPI_freetuptable(SPI_tuptable);
  }
  SPI_cursor_close(portal);
  SPI_finish();
}

// Reserves the nodes' slots, sends the query's rows and finishes the COPY;
// *rows and *nrows are the nodes' results.
void Distribute(const pg::NodeRef* nodes, int count, const char* query, const char* copy_sql,
                const pg::DistributeRow** rows, int* nrows) {
  pg::Settings settings = pg::CurrentSettings();
  pg::ExecutorSettings executor = ExecutorSettingsNow();
  if (pg::UseSharedPool() && pg::ChannelAvailable()) {
    // The communicator waits for the nodes' connections; this backend waits
    // for its answer, looking at interrupts.
    const pg::ChannelOps channel = pg::BackendChannelOps();
    pgstat_report_wait_start(PG_WAIT_EXTENSION);
    const pg::Outcome o =
        pg::BeginPooledDistribute(nodes, count, copy_sql, MyDatabaseId, settings, executor,
                                  pg::ActiveClientBackends(), pg::ExecutorInterruptCheck, channel);
    pgstat_report_wait_end();
    RaiseDistributeOutcome(&settings, o);
  } else {
    pg::Wait wait = pg::BeginWait(settings.connection_wait_timeout_ms, /*from_setting=*/true);
    pg::WaitInterruptibly(&settings, [&](const pg::Settings& now) {
      return pg::BeginDistribute(nodes, count, copy_sql, MyDatabaseId, now, executor,
                                 pg::ActiveClientBackends(), wait, pg::InterruptCheck,
                                 pg::ExecutorInterruptCheck);
    });
  }
  SendQueryRows(query, count, &settings);
  RaiseDistributeOutcome(&settings, pg::FinishDistribute(rows, nrows));
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_run_tasks);
PG_FUNCTION_INFO_V1(connthrottle_distribute);

// run_tasks(hosts text[], ports int[], commands text[], raise_on_error
// boolean) returns setof (task, host, port, success, result, sqlstate, error,
// ran_locally, connection, rows, queued, run)
Datum connthrottle_run_tasks(PG_FUNCTION_ARGS) {
  RequireNoExecutorCall("run_tasks");
  const bool raise_on_error = PG_NARGS() > 3 && !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
  pg::NodeRef* nodes = nullptr;
  const char** commands = nullptr;
  const int count = pg::NodeArrays(fcinfo, 0, 1, 2, &nodes, &commands);
  pg::RequireCatalogNodes(nodes, count, "run tasks");
  auto* tasks = static_cast<pg::TaskSpec*>(palloc(sizeof(pg::TaskSpec) * (count > 0 ? count : 1)));
  for (int i = 0; i < count; ++i) tasks[i] = {nodes[i].host, nodes[i].port, commands[i]};
  pg::BeginSlotWork();
  const pg::TaskRow* rows = RunTasksOrRaise(tasks, count);
  pg::WarnIfUncounted();
  if (raise_on_error) RaiseFirstFailedTask(rows, count);
  return pg::ReturnRows<12>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const pg::TaskRow& r = rows[i];
    values[0] = Int32GetDatum(i + 1);
    values[1] = CStringGetTextDatum(r.host);
    values[2] = Int32GetDatum(r.port);
    values[3] = BoolGetDatum(r.success);
    pg::VerifiedTextOrNull(r.result, &values[4], &nulls[4]);
    pg::TextOrNull(r.sqlstate != nullptr && r.sqlstate[0] != '\0' ? r.sqlstate : nullptr,
                   &values[5], &nulls[5]);
    pg::VerifiedTextOrNull(r.error, &values[6], &nulls[6]);
    values[7] = BoolGetDatum(r.ran_locally);
    nulls[8] = r.connection < 0;
    values[8] = Int32GetDatum(r.connection);
    values[9] = Int64GetDatum(r.rows);
    values[10] = pg::MicrosecondsInterval(r.queued_us);
    values[11] = pg::MicrosecondsInterval(r.run_us);
  });
}

// distribute(query text, target_table text, hosts text[], ports int[]) returns
// setof (host, port, rows, success, error): streams the query's rows with
// COPY into target_table on the nodes, each row to the node its first
// column's hash picks, with a slot reserved per node up front.
Datum connthrottle_distribute(PG_FUNCTION_ARGS) {
  RequireNoExecutorCall("distribute");
  const char* query = pg::TextArg(fcinfo, 0, "query");
  const char* target = pg::TextArg(fcinfo, 1, "target_table");
  pg::NodeRef* nodes = nullptr;
  const int count = pg::NodeArrays(fcinfo, 2, 3, -1, &nodes, nullptr);
  pg::RequireCatalogNodes(nodes, count, "distribute rows");
  if (count == 0) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: distribute needs at least one node")));
  }
  const char* copy_sql = CopyCommand(target);
  pg::BeginSlotWork();
  const pg::DistributeRow* rows = nullptr;
  int nrows = 0;
  ++executor_calls;
  PG_TRY();
  { Distribute(nodes, count, query, copy_sql, &rows, &nrows); }
  PG_CATCH();
  {
    --executor_calls;
    PG_RE_THROW();
  }
  PG_END_TRY();
  --executor_calls;
  pg::WarnIfUncounted();
  return pg::ReturnRows<5>(fcinfo, nrows, [&](int i, Datum* values, bool* nulls) {
    values[0] = CStringGetTextDatum(rows[i].host);
    values[1] = Int32GetDatum(rows[i].port);
    values[2] = Int64GetDatum(rows[i].rows);
    values[3] = BoolGetDatum(rows[i].success);
    pg::VerifiedTextOrNull(rows[i].error, &values[4], &nulls[4]);
  });
}

}  // extern "C"
