// pool_tasks.cc — the shared pool's loop: running a task: sending it with its reset, the
// connection's release afterwards. See pool_loop.h for the loop's state and who owns it.

#include "absl/strings/ascii.h"
#include "executor/pool_loop.h"

namespace connthrottle {

// What a connection runs after every task, before it serves anyone again:
// PostgreSQL's own definition of a fresh session's state (role and session
// authorization, every setting, temporary tables, cursors, LISTEN, advisory
// locks, sequences' state, prepared statements, cached plans). One
// statement; it cannot run inside a transaction, and a connection a task
// left in one is closed instead.
//
// The reset goes in the same write as the task, in libpq's pipeline mode:
// task, Sync, DISCARD ALL, Sync. Each is its own implicit transaction, the
// worker runs the reset right after the task, and both answers come back
// together: no round trip of its own (one of its own cost the 32-task
// fan-out at saturation 45% of its throughput, measured). Pipeline mode
// needs the extended protocol, which takes one statement per task: a task
// of several statements is refused at Parse (42601, nothing ran) and runs
// again with the simple protocol, followed by the reset in a round trip of
// its own; the pool remembers such texts. Texts with a parameter symbol
// ($1) take the simple protocol too, as the direct transport runs them.
constexpr char kResetSql[] = "DISCARD ALL";

void SharedPool::Loop::Dispatch(Pool& pool, absl::Time now) {
  std::optional<Limit> limit;  // read once, if a connection needs it
  for (auto& conn : pool.conns) {
    if (pool.queued == 0) return;
    if (conn->c->state != State::kIdle) continue;
    if (IdleConnectionIsDead(conn->c->pg)) {
      Close(*conn, CloseReason::kDead);
      continue;
    }
    if (!CountedForDatabase(pool, *conn, limit)) continue;
    auto [b, t] = NextTask(pool);
    if (b == nullptr) return;
    Send(pool, *conn, std::move(b), t, now);
  }
}

void SharedPool::Loop::Send(Pool& pool, Conn& conn, std::shared_ptr<Batch> b, int t,
                            absl::Time now) {
  Connection& c = *conn.c;
  conn.result = TaskResult{};
  conn.result.queued = now - b->submitted;
  conn.result.connection = c.id;
  conn.sent = now;
  conn.cancelling = false;
  conn.run_simple = false;
  const std::string& sql = b->tasks[t].sql;
  conn.pipelined = !pool.simple_only.contains(sql) && !HasParameterSymbol(sql);
  const bool sent = conn.pipelined ? SendPipelined(conn, sql, b->max_rows_kept)
                                   : SendSimple(conn, sql, b->max_rows_kept);
  if (!Flush(c, sent)) {
    // Nothing of the task reached the worker: it goes to another
    // connection, and this one is closed.
    Close(conn, CloseReason::kDead);
    Requeue(pool, std::move(b), t);
    return;
  }
  conn.batch = std::move(b);
  conn.task = t;
}

// The task and the reset after it, in one pipeline.
bool SharedPool::Loop::SendPipelined(Conn& conn, const std::string& sql, int64_t max_rows_kept) {
  PGconn* pg = conn.c->pg;
  conn.step = Step::kTask;
  conn.reset_ok = false;
  if (!PQenterPipelineMode(pg) ||
      !PQsendQueryParams(pg, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0)) {
    return false;
  }
  // Refused only when rows arrived already: they then come whole.
  if (max_rows_kept >= 0) PQsetSingleRowMode(pg);
  return PQpipelineSync(pg) &&
         PQsendQueryParams(pg, kResetSql, 0, nullptr, nullptr, nullptr, nullptr, 0) &&
         PQpipelineSync(pg);
}

// The task alone, with the simple protocol; its reset follows on its own.
bool SharedPool::Loop::SendSimple(Conn& conn, const std::string& sql, int64_t max_rows_kept) {
  PGconn* pg = conn.c->pg;
  conn.step = Step::kTask;
  if (!PQsendQuery(pg, sql.c_str())) return false;
  if (max_rows_kept >= 0) PQsetSingleRowMode(pg);
  return true;
}

bool SharedPool::Loop::HasParameterSymbol(absl::string_view sql) {
  for (size_t i = sql.find('$'); i != absl::string_view::npos; i = sql.find('$', i + 1)) {
    if (i + 1 < sql.size() && absl::ascii_isdigit(static_cast<unsigned char>(sql[i + 1]))) {
      return true;
    }
  }
  return false;
}

// Flushes what was just sent (if it was): the connection is busy with it,
// or false when it could not be sent.
bool SharedPool::Loop::Flush(Connection& c, bool sent) {
  const int flushed = sent ? PQflush(c.pg) : -1;
  if (flushed < 0) return false;
  c.task_got_result = false;
  c.in_result_set = false;
  c.want_write = flushed == 1;
  c.state = State::kBusy;
  return true;
}

// The task's results are all in: it settles (unless it was cancelled or
// failed already), and the connection is no longer its.
void SharedPool::Loop::FinishTask(Conn& conn, absl::Time now) {
  if (!conn.cancelling) {
    conn.result.run = now - conn.sent;
    ++stats.tasks_run;
    const int64_t bytes = std::exchange(conn.result_bytes, 0);
    SettleTask(*conn.batch, conn.task, std::move(conn.result), bytes);
  }
  conn.batch = nullptr;
  conn.task = -1;
  conn.cancelling = false;
  conn.result = TaskResult{};
  Uncount(conn);
}

// After a task sent alone, the connection resets its session state
// before anyone else's task runs on it. One left inside a transaction is
// closed: DISCARD ALL cannot run there, and the transaction must not
// reach another task either.
void SharedPool::Loop::SendReset(Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  if (PQtransactionStatus(c.pg) != PQTRANS_IDLE) {
    Close(conn, CloseReason::kInTransaction);
    return;
  }
  conn.step = Step::kReset;
  conn.reset_ok = false;
  conn.sent = now;
  if (!Flush(c, PQsendQuery(c.pg, kResetSql) != 0)) Close(conn, CloseReason::kDead);
}

// Its reset done, the connection becomes idle, or is closed.
void SharedPool::Loop::Release(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  conn.idle_since = now;
  if (PQtransactionStatus(c.pg) != PQTRANS_IDLE) {
    // The task left a transaction open (its pipelined reset failed in it).
    Close(conn, CloseReason::kInTransaction);
    return;
  }
  if (!conn.reset_ok) {
    // Whatever the task left behind could not be undone.
    Close(conn, CloseReason::kResetFailed);
    return;
  }
  ++stats.resets;
  if (OverLimit(pool) > 0) {
    Close(conn, CloseReason::kOverLimit);
  } else if (pool.surplus > 0) {
    // Another pool of the node is below its fair share: the slot is its.
    --pool.surplus;
    Close(conn, CloseReason::kForPool, pool.surplus_to);
  } else if (pool.queued > 0 && LiveConnections(pool) > 1 && UnservedWaiters(pool) > 0) {
    // A pool that always has work would otherwise keep its slots for ever
    // while others wait for the node: it gives one back as a task ends,
    // keeping at least one connection for its own queue.
    Close(conn, CloseReason::kForWaiters);
  } else if (CopyWaitsFor(pool)) {
    // A COPY waits for the node, for another pool of it: the slot is its.
    Close(conn, CloseReason::kForWaiters);
  } else {
    c.state = State::kIdle;
  }
}

}  // namespace connthrottle
