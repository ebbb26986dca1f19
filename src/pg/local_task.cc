// local_task.cc — a task run in this backend through SPI, in a
// subtransaction, its rows counted as they are produced.

extern "C" {
// clang-format off
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "tcop/dest.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
// clang-format on
}

#include "pg/local_task.h"

namespace connthrottle::pg {
namespace {

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

// The verb of SPI result `rc`'s command tag; nullptr for a utility
// statement ("UTILITY").
const char* CommandVerb(int rc) {
  switch (rc) {
    case SPI_OK_SELECT:
    case SPI_OK_SELINTO:
      return "SELECT";
    case SPI_OK_INSERT:
    case SPI_OK_INSERT_RETURNING:
      return "INSERT 0";
    case SPI_OK_UPDATE:
    case SPI_OK_UPDATE_RETURNING:
      return "UPDATE";
    case SPI_OK_DELETE:
    case SPI_OK_DELETE_RETURNING:
      return "DELETE";
    case SPI_OK_UTILITY:
      return nullptr;
    default:
      return "OK";
  }
}

// Describes the statement's outcome in `out`: its command tag and, when it
// returned rows, their count and the single value (taken from `counter`).
void DescribeResult(int rc, RowCounter& counter, LocalTaskOutcome* out) {
  if (const char* verb = CommandVerb(rc)) {
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
}

// Runs `sql` through SPI, its rows going to `counter`. Raises its errors.
void ExecuteLocally(const char* sql, RowCounter& counter, LocalTaskOutcome* out) {
  if (SPI_connect() != SPI_OK_CONNECT) elog(ERROR, "connthrottle: SPI_connect failed");
  SPIExecuteOptions options{};
  options.read_only = false;
  options.dest = &counter.pub;
  int rc = SPI_execute_extended(sql, &options);
  if (rc < 0) elog(ERROR, "connthrottle: SPI_execute failed: %s", SPI_result_code_string(rc));
  DescribeResult(rc, counter, out);
  counter.Forget();
  SPI_finish();
}

}  // namespace

void RunLocalTask(const char* sql, LocalTaskOutcome* out) {
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
    ExecuteLocally(sql, counter, out);
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
    const char* message = edata->message != nullptr ? edata->message : "error";
    out->ok = false;
    if (!in_subtransaction) {
      // Nothing to roll back to here: stop the execution, raise it later.
      local_task_error = edata;
      out->abort_call = true;
      out->cancelled = true;
      strlcpy(out->message, message, sizeof(out->message));
      return;
    }
    RollbackAndReleaseCurrentSubTransaction();
    MemoryContextSwitchTo(oldcontext);
    CurrentResourceOwner = oldowner;
    strlcpy(out->message, message, sizeof(out->message));
    strlcpy(out->sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(out->sqlstate));
    out->cancelled = edata->sqlerrcode == ERRCODE_QUERY_CANCELED;
    FreeErrorData(edata);
  }
  PG_END_TRY();
}

void ForgetLocalTaskError() { local_task_error = nullptr; }

void RethrowLocalTaskError() {
  if (local_task_error == nullptr) return;
  ErrorData* edata = local_task_error;
  local_task_error = nullptr;
  ReThrowError(edata);
}

}  // namespace connthrottle::pg
