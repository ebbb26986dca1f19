// pool_results.cc — the shared pool's loop: reading a task's results: the pipeline's steps, result
// memory, failures. See pool_loop.h for the loop's state and who owns it.

#include <cstring>

#include "absl/strings/str_cat.h"
#include "executor/pool_loop.h"

namespace connthrottle {

// Texts a pool remembers as needing the simple protocol, at most (then it
// starts afresh).
constexpr size_t kMaxSimpleOnly = 512;

namespace {

// What one value of a kept row costs the pool, beyond its bytes.
constexpr int64_t kValueOverhead = sizeof(std::optional<std::string>);

// Bytes of values in rows [from, end) of `r`.
int64_t RowBytes(const TaskResult& r, size_t from) {
  int64_t bytes = 0;
  for (size_t i = from; i < r.rows.size(); ++i) {
    for (const auto& v : r.rows[i])
      bytes += kValueOverhead + (v ? static_cast<int64_t>(v->size()) : 0);
  }
  return bytes;
}

}  // namespace

void SharedPool::Loop::ReadResults(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  if (!PQconsumeInput(c.pg)) {
    Lost(pool, conn, Trim(PQerrorMessage(c.pg)));
    return;
  }
  while (c.state == State::kBusy && !PQisBusy(c.pg)) {
    DropNotifications(c.pg);
    PGresult* res = PQgetResult(c.pg);
    if (res == nullptr) {
      if (!QueryEnded(pool, conn, now)) return;
      continue;
    }
    const ExecStatusType status = PQresultStatus(res);
    if (status == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      if (conn.step == Step::kTaskSync) {
        conn.step = Step::kReset;
        continue;
      }
      PipelineDone(pool, conn, now);
      return;
    }
    if (conn.step == Step::kReset) conn.reset_ok = status == PGRES_COMMAND_OK;
    if (conn.step != Step::kTask) {  // the reset's, or nothing expected
      PQclear(res);
      continue;
    }
    if (!TaskResultIn(pool, conn, res)) return;
  }
  DropNotifications(c.pg);
}

// One query's results ended (PQgetResult said so with null). False when
// the connection is done for this turn.
bool SharedPool::Loop::QueryEnded(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  if (!conn.pipelined) {
    Complete(pool, conn, now);
    return false;
  }
  // Pipelined: one query's results end; its Sync follows.
  if (PQstatus(c.pg) == CONNECTION_BAD) {
    Lost(pool, conn,
         conn.result.status.ok() ? Trim(PQerrorMessage(c.pg))
                                 : std::string(conn.result.status.message()));
    return false;
  }
  if (conn.step == Step::kTask && !conn.run_simple) FinishTask(conn, now);
  conn.step = conn.step == Step::kTask ? Step::kTaskSync : Step::kResetSync;
  return true;
}

// One result of the running task: folded into its result, within the
// pool's result memory (`res` is freed here). False when reading stops:
// the connection was lost or is being closed.
bool SharedPool::Loop::TaskResultIn(Pool& pool, Conn& conn, PGresult* res) {
  Connection& c = *conn.c;
  const ExecStatusType status = PQresultStatus(res);
  if (conn.pipelined && BackendEnding(res)) {
    // As the simple protocol would find once the worker closes the
    // socket: the connection is lost (08006), whatever ended it.
    const std::string why = Trim(PQresultErrorMessage(res));
    PQclear(res);
    Lost(pool, conn, why);
    return false;
  }
  if (conn.pipelined && status == PGRES_FATAL_ERROR && !c.task_got_result &&
      SeveralStatements(res)) {
    conn.run_simple = true;  // nothing of it ran
    PQclear(res);
    return true;
  }
  if (status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
    PQclear(res);
    FailCopy(pool, conn, status);
    return false;
  }
  if (!conn.cancelling) {
    c.task_got_result = true;
    const size_t rows_before = conn.result.rows.size();
    FoldResult(res, pool.node, conn.batch->max_rows_kept, c.in_result_set, conn.result);
    if (conn.result.rows.size() < rows_before) {  // a new result set replaced the rows
      Uncount(conn);
      if (!Hold(conn, RowBytes(conn.result, 0))) FailOverMemory(pool, conn);
    } else if (!Hold(conn, RowBytes(conn.result, rows_before))) {
      FailOverMemory(pool, conn);
    }
  }
  PQclear(res);
  return true;
}

// A simple-protocol query's results are all in: the task's, or its
// reset's.
void SharedPool::Loop::Complete(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  if (PQstatus(c.pg) == CONNECTION_BAD) {
    Lost(pool, conn,
         conn.result.status.ok() ? Trim(PQerrorMessage(c.pg))
                                 : std::string(conn.result.status.message()));
    return;
  }
  if (conn.step == Step::kReset) {
    Release(pool, conn, now);
    return;
  }
  FinishTask(conn, now);
  SendReset(conn, now);
}

// The pipeline (task, Sync, reset, Sync) is through. A task refused for
// having several statements runs again, with the simple protocol.
void SharedPool::Loop::PipelineDone(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  PQexitPipelineMode(c.pg);
  conn.pipelined = false;
  if (conn.run_simple && conn.batch != nullptr && !conn.cancelling) {
    const std::string& sql = conn.batch->tasks[conn.task].sql;
    if (pool.simple_only.size() >= kMaxSimpleOnly) pool.simple_only.clear();
    pool.simple_only.insert(sql);
    conn.run_simple = false;
    if (!Flush(c, SendSimple(conn, sql, conn.batch->max_rows_kept))) {
      Lost(pool, conn, Trim(PQerrorMessage(c.pg)));
    }
    return;
  }
  if (conn.batch != nullptr) FinishTask(conn, now);  // cancelled while refused
  conn.run_simple = false;
  Release(pool, conn, now);
}

// The connection broke while running a task, which fails with 08006, or
// while resetting after one (found dead, as an idle one would be).
void SharedPool::Loop::Lost(Pool& pool, Conn& conn, const std::string& why) {
  Close(conn, conn.step != Step::kTask ? CloseReason::kDead : CloseReason::kTaskFailed);
  if (conn.batch != nullptr && !conn.cancelling) {
    FailTask(*conn.batch, conn.task,
             absl::UnavailableError(absl::StrCat("connection to node ", pool.node.ToString(),
                                                 " was lost while running the task: ", why)),
             "08006");  // connection_failure
  }
  conn.batch = nullptr;
  conn.task = -1;
}

// A task entered COPY, which tasks cannot do: it fails with 0A000 and its
// connection is closed (the worker's COPY stopped first).
void SharedPool::Loop::FailCopy(Pool& pool, Conn& conn, ExecStatusType copy) {
  StopCopy(conn.c->pg, copy);
  Close(conn, CloseReason::kTaskFailed);
  if (conn.batch != nullptr && !conn.cancelling) {
    FailTask(*conn.batch, conn.task, CopyRefused(pool.node, copy),
             "0A000");  // feature_not_supported
  }
  conn.batch = nullptr;
  conn.task = -1;
}

// Whether `res` is an error that ends the worker's backend (FATAL, PANIC).
bool SharedPool::Loop::BackendEnding(const PGresult* res) {
  const char* severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  return severity != nullptr && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
}

// Whether `res` is the extended protocol refusing a text of several
// statements at Parse (before any of it ran).
bool SharedPool::Loop::SeveralStatements(const PGresult* res) {
  const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  if (state == nullptr || strcmp(state, "42601") != 0) return false;
  const char* routine = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
  if (routine != nullptr) return strcmp(routine, "exec_parse_message") == 0;
  const char* message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  return message != nullptr &&
         strcmp(message, "cannot insert multiple commands into a prepared statement") == 0;
}

// The bytes of the connection's result being read are no longer held.
void SharedPool::Loop::Uncount(Conn& conn) {
  if (conn.result_bytes == 0) return;
  sp.held_->fetch_sub(conn.result_bytes);
  conn.result_bytes = 0;
}

// Counts `bytes` more of the running task's result: false (and nothing
// counted) when they would take the pool beyond result_memory.
bool SharedPool::Loop::Hold(Conn& conn, int64_t bytes) {
  if (bytes <= 0) return true;
  const int64_t limit = static_cast<int64_t>(std::min<size_t>(options.result_memory, INT64_MAX));
  if (sp.held_->fetch_add(bytes) + bytes > limit) {
    sp.held_->fetch_sub(bytes);
    return false;
  }
  conn.result_bytes += bytes;
  return true;
}

// The task's result would take the pool beyond result_memory: it fails
// with 54000 now, and the rest of it is cancelled, read and dropped.
void SharedPool::Loop::FailOverMemory(Pool& pool, Conn& conn) {
  ++stats.tasks_over_memory;
  conn.result = TaskResult{};
  Uncount(conn);
  SendCancel(conn.c->pg);
  conn.cancelling = true;
  FailTask(*conn.batch, conn.task,
           absl::ResourceExhaustedError(
               absl::StrCat("node ", pool.node.ToString(),
                            ": the task's result would take the results the "
                            "shared pool holds beyond ",
                            options.result_memory_setting, " (", options.result_memory, " bytes)")),
           "54000");  // program_limit_exceeded
}

void SharedPool::Loop::DropNotifications(PGconn* pg) {
  while (PGnotify* n = PQnotifies(pg)) {
    PQfreemem(n);
    ++stats.notifications_dropped;
  }
}

}  // namespace connthrottle
