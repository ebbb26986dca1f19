// pool_copy.cc — the shared pool's loop: COPY: reserving its nodes in the global order, pinning
// their connections, streaming its chunks with backpressure, ending and aborting each node's COPY.
// See pool_loop.h for the loop's state and who owns it, shared_pool.h for the promises.
//
// A COPY's node goes through CopyTarget::Phase:
//
//   kWaiting   no connection yet (Reserve takes them in the global order)
//   kPinned    a pooled connection is its (connecting, or ready and kBusy)
//   kStarting  the COPY statement was sent; PGRES_COPY_IN is awaited
//   kIn        in COPY: chunks' parts are put and flushed
//   kEnding    CopyDone (or CopyFail, aborting) was sent; the result is read
//   kDone      its connection was given back (reset, to its pool) or lost
//
// Pump moves a node as far as it can go now; it runs on the node's socket
// events (CopyEvent) and at each turn (ServiceCopies), which also moves the
// COPY's stage once every node has done its part of a step.

#include <libpq-fe.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "connthrottle/counter_table.h"
#include "executor/pool_loop.h"

namespace connthrottle {

namespace {

// What an aborted COPY sends the worker (CopyFail): its COPY fails with this
// message and nothing of it is committed.
constexpr char kAbandoned[] = "connthrottle: the COPY was abandoned by its session";

int64_t Lines(std::string_view data) {
  return static_cast<int64_t>(std::count(data.begin(), data.end(), '\n'));
}

}  // namespace

// A COPY from the inbox: new, with a step asked for, or cancelled.
void SharedPool::Loop::TakeCopy(const std::shared_ptr<Copy>& copy, absl::Time now) {
  auto it = std::find_if(copies.begin(), copies.end(),
                         [&](const CopyRun& run) { return run.copy == copy; });
  if (it == copies.end()) {
    StartCopy(copy, now);
    return;
  }
  if (copy->cancelled.load()) {
    FailCopyRun(*it, absl::CancelledError("the COPY was cancelled"), "57014");
    return;
  }
  TakeStep(*it);
}

void SharedPool::Loop::StartCopy(const std::shared_ptr<Copy>& copy, absl::Time now) {
  {
    std::lock_guard<std::mutex> lock(copy->mu);
    if (copy->over) return;
  }
  CopyRun& run = copies.emplace_back();
  run.copy = copy;
  run.step = 1;  // Open
  const CopyRequest& r = copy->request;
  std::vector<NodeKey> keys;
  for (size_t i = 0; i < r.nodes.size(); ++i) {
    absl::StatusOr<NodeKey> key = NodeKey::Create(r.nodes[i].host, r.nodes[i].port, r.database_id);
    if (!key.ok()) {
      FailCopyRun(run, key.status(), "22023");  // invalid_parameter_value
      return;
    }
    CopyTarget& t = run.targets.emplace_back();
    t.key = *key;
    t.pool = &PoolFor(r.nodes[i], r.database_id, r.params[i], r.local[i], *key, now);
    ++t.pool->copies;
    keys.push_back(*std::move(key));
  }
  run.order.resize(keys.size());
  std::iota(run.order.begin(), run.order.end(), 0);
  std::stable_sort(run.order.begin(), run.order.end(),
                   [&](int a, int b) { return keys[a] < keys[b]; });
  for (size_t n = 1; n < run.order.size(); ++n) {
    if (keys[run.order[n - 1]] == keys[run.order[n]]) {
      FailCopyRun(run,
                  absl::InvalidArgumentError(absl::StrCat("node ", r.nodes[run.order[n]].ToString(),
                                                          " is given more than once")),
                  "22023");
      return;
    }
  }
  if (r.nodes.empty()) {
    FailCopyRun(run, absl::InvalidArgumentError("a COPY needs at least one node"), "22023");
  }
}

// The session's next step, if it asked for one and the last is done.
void SharedPool::Loop::TakeStep(CopyRun& run) {
  if (run.stage != Stage::kReady) return;
  Copy& copy = *run.copy;
  std::vector<CopyPart> chunk;
  bool finish;
  {
    std::lock_guard<std::mutex> lock(copy.mu);
    if (copy.asked == run.step) return;
    run.step = copy.asked;
    finish = copy.finish_asked;
    chunk.swap(copy.chunk);
  }
  for (const CopyPart& part : chunk) {
    if (part.node < 0 || part.node >= static_cast<int>(run.targets.size()) ||
        !run.targets[part.node].pending.empty()) {
      FailCopyRun(run,
                  absl::InvalidArgumentError(absl::StrCat("a COPY chunk names node ", part.node,
                                                          " twice, or no such node")),
                  "22023");
      return;
    }
    run.targets[part.node].pending = part.data;
  }
  run.stage = finish ? Stage::kFinishing : Stage::kSending;
}

// Each turn, before the pools are served: a COPY waiting for a connection
// takes one before the pools' own tasks do.
void SharedPool::Loop::ServiceCopies(absl::Time now) {
  copy_waiting_keys.clear();
  copy_waiting_pools.clear();
  for (auto it = copies.begin(); it != copies.end();) {
    CopyRun& run = *it;
    bool over = false;
    Guarded([&] { over = Advance(run, now); });
    if (over) {
      for (CopyTarget& t : run.targets) --t.pool->copies;
      it = copies.erase(it);
      continue;
    }
    if (run.waiting) {
      const CopyTarget& next = run.targets[run.order[run.reserved]];
      Guarded([&] {
        copy_waiting_keys.insert(next.pool->key_name);
        copy_waiting_pools.insert(next.pool);
      });
    }
    ++it;
  }
}

// Moves `run` on; true when it is over and may be forgotten.
bool SharedPool::Loop::Advance(CopyRun& run, absl::Time now) {
  if (run.copy->cancelled.load() && run.stage != Stage::kAborting) {
    FailCopyRun(run, absl::CancelledError("the COPY was cancelled"), "57014");
  }
  if (run.stage == Stage::kOpening) Reserve(run, now);
  // Nodes starting or ending their COPY move on their sockets' events.
  for (CopyTarget& t : run.targets) {
    if (t.phase == Phase::kPinned || t.phase == Phase::kIn) Pump(run, t, now);
  }
  auto all = [&](auto pred) { return std::all_of(run.targets.begin(), run.targets.end(), pred); };
  switch (run.stage) {
    case Stage::kOpening:
      if (run.reserved == static_cast<int>(run.order.size()) && all([](const CopyTarget& t) {
            return t.conn != nullptr && t.conn->c->state != State::kConnecting;
          })) {
        ++stats.copies_opened;
        StepDone(run);
        return Advance(run, now);  // a step asked for behind Open goes now
      }
      return false;
    case Stage::kReady:
      TakeStep(run);
      if (run.stage != Stage::kReady) return Advance(run, now);
      return false;
    case Stage::kSending:
      if (all([](const CopyTarget& t) { return t.pending.empty() && t.flushed; })) {
        StepDone(run);
        return Advance(run, now);
      }
      return false;
    case Stage::kFinishing:
      // No node's COPY ends before every node's has taken its last rows: a
      // node refusing its COPY (or lost) until then fails the COPY as a
      // whole, with nothing committed anywhere.
      if (all([](const CopyTarget& t) {
            return t.phase == Phase::kDone || t.phase == Phase::kEnding ||
                   (t.phase == Phase::kIn && t.pending.empty() && t.flushed);
          })) {
        for (CopyTarget& t : run.targets) {
          if (run.stage != Stage::kFinishing) break;  // one was lost: the rest abort
          if (t.phase == Phase::kIn) EndNodeCopy(run, t, nullptr);
        }
      }
      if (run.stage != Stage::kFinishing ||
          !all([](const CopyTarget& t) { return t.phase == Phase::kDone; })) {
        return false;
      }
      FinishCopyRun(run);
      return true;
    case Stage::kAborting:
      return all([](const CopyTarget& t) {
        return t.phase == Phase::kDone || t.phase == Phase::kWaiting;
      });
  }
  return false;
}

// Takes the COPY's nodes in the global order: an idle connection of the
// node's pool, else a new one on a slot free now, else it waits for that
// node (holding those before it) until a connection comes free or its wait
// timeout passes.
void SharedPool::Loop::Reserve(CopyRun& run, absl::Time now) {
  const CopyRequest& r = run.copy->request;
  while (run.reserved < static_cast<int>(run.order.size())) {
    const int i = run.order[run.reserved];
    CopyTarget& t = run.targets[i];
    Pool& pool = *t.pool;
    if (Conn* idle = IdleConnection(pool)) {
      Pin(run, i, *idle);
      ++run.reserved;
      continue;
    }
    AcquireOptions acquire;
    acquire.when_full = options.when_table_full;
    absl::StatusOr<Slot> slot =
        sp.owner_.TryAcquire(*t.key, sp.limit_(pool.node, pool.local), acquire);
    if (slot.ok()) {
      StartConnect(pool, *std::move(slot), now);
      Conn& conn = *pool.conns.back();
      if (conn.c->state == State::kBroken) {
        FailCopyRun(run, CouldNotConnect(pool.node, "libpq could not start connecting"), "08001");
        return;
      }
      Pin(run, i, conn);
      ++run.reserved;
      continue;
    }
    if (IsTableFullError(slot.status())) {
      FailCopyRun(run, slot.status(), "53400");  // configuration_limit_exceeded
      return;
    }
    if (!run.waiting) {
      run.waiting = true;
      ++stats.copy_waits;
      if (!run.wait_began) run.wait_began = now;
    }
    // An idle connection of another pool of the node (another role) holds a
    // slot nobody uses: given back, the next try may take it.
    std::vector<Pool*> group;
    for (auto& [name, p] : pools) {
      if (&p != &pool && p.key_name == pool.key_name) group.push_back(&p);
    }
    if (Conn* idle = LongestIdle(group, nullptr)) Close(*idle, CloseReason::kForWaiters);
    const absl::Duration timeout = r.slot_wait_timeout.value_or(options.slot_wait_timeout);
    if (now - *run.wait_began >= timeout) {
      FailCopyRun(run,
                  absl::ResourceExhaustedError(absl::StrCat(
                      "no connection slot to node ", pool.node.ToString(), " became free within ",
                      absl::FormatDuration(timeout), " for this COPY (its wait timeout; ",
                      sp.limit_(pool.node, pool.local).ToString(), ")")),
                  "53300");  // too_many_connections
    }
    return;
  }
  run.waiting = false;
}

// An idle connection of `pool` that is alive; dead ones found on the way
// are closed.
SharedPool::Loop::Conn* SharedPool::Loop::IdleConnection(Pool& pool) {
  std::optional<Limit> limit;
  for (auto& conn : pool.conns) {
    if (conn->c->state != State::kIdle) continue;
    if (IdleConnectionIsDead(conn->c->pg)) {
      Close(*conn, CloseReason::kDead);
      continue;
    }
    if (!CountedForDatabase(pool, *conn, limit)) continue;
    return conn.get();
  }
  return nullptr;
}

void SharedPool::Loop::Pin(CopyRun& run, int t, Conn& conn) {
  conn.copy = &run;
  conn.copy_target = t;
  conn.batch = nullptr;
  conn.task = -1;
  conn.pipelined = false;
  Connection& c = *conn.c;
  if (c.state == State::kIdle) c.state = State::kBusy;  // none of the pool's tasks takes it
  c.want_write = false;
  run.targets[t].conn = &conn;
  run.targets[t].phase = Phase::kPinned;
}

// A node whose COPY never started gives its connection back as it is.
void SharedPool::Loop::Unpin(CopyTarget& target, absl::Time now) {
  Conn& conn = *target.conn;
  conn.copy = nullptr;
  conn.copy_target = -1;
  if (conn.c->state == State::kBusy) {
    conn.c->state = State::kIdle;
    conn.idle_since = now;
  }
  target.conn = nullptr;
  target.phase = Phase::kDone;
}

void SharedPool::Loop::Pump(CopyRun& run, CopyTarget& target, absl::Time now) {
  if (target.conn == nullptr) return;
  Connection& c = *target.conn->c;
  switch (target.phase) {
    case Phase::kPinned:
      if (run.stage == Stage::kAborting ||
          (run.stage == Stage::kFinishing && target.pending.empty())) {
        Unpin(target, now);
      } else if (c.state != State::kConnecting && !target.pending.empty()) {
        StartNodeCopy(run, target);
      }
      return;
    case Phase::kStarting:
      ReadCopyResults(run, target, now);
      if (target.phase == Phase::kIn) Pump(run, target, now);
      return;
    case Phase::kIn:
      if (run.stage == Stage::kAborting) {
        EndNodeCopy(run, target, kAbandoned);
        return;
      }
      PutData(run, target);
      return;
    case Phase::kEnding:
      ReadCopyResults(run, target, now);
      return;
    case Phase::kWaiting:
    case Phase::kDone:
      return;
  }
}

// The node's first data: its COPY statement goes out.
void SharedPool::Loop::StartNodeCopy(CopyRun& run, CopyTarget& target) {
  Connection& c = *target.conn->c;
  if (!Flush(c, PQsendQuery(c.pg, run.copy->request.copy_sql.c_str()) != 0)) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  target.started = true;
  target.phase = Phase::kStarting;
}

// What the worker sent while the node's COPY starts or ends: PGRES_COPY_IN
// (in COPY now), its outcome, or an error.
void SharedPool::Loop::ReadCopyResults(CopyRun& run, CopyTarget& target, absl::Time now) {
  Connection& c = *target.conn->c;
  if (c.want_write && PQflush(c.pg) < 0) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  if (!PQconsumeInput(c.pg)) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  while (!PQisBusy(c.pg)) {
    DropNotifications(c.pg);
    PGresult* res = PQgetResult(c.pg);
    if (res == nullptr) {
      if (PQstatus(c.pg) == CONNECTION_BAD) {
        TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
        return;
      }
      // The statement is over: refused before COPY began (the error is
      // kept), or the COPY ended.
      const bool refused = target.phase == Phase::kStarting;
      if (refused && target.status.ok()) {  // it ran, but was no COPY FROM STDIN
        target.status = absl::FailedPreconditionError(
            absl::StrCat("node ", target.pool->node.ToString(),
                         ": the statement did not start a COPY FROM STDIN"));
        target.sqlstate = "0A000";  // feature_not_supported
      }
      ReleaseTarget(target, now);
      if (refused) FailCopyRun(run, target.status, target.sqlstate.c_str());
      return;
    }
    const ExecStatusType status = PQresultStatus(res);
    if (status == PGRES_COPY_IN) {
      PQclear(res);
      target.phase = Phase::kIn;
      c.want_write = false;
      if (run.stage == Stage::kAborting) EndNodeCopy(run, target, kAbandoned);
      return;
    }
    if (status == PGRES_COMMAND_OK) {
      target.command_tag = PQcmdStatus(res);
    } else if (status == PGRES_FATAL_ERROR && target.status.ok()) {
      const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      target.sqlstate = state != nullptr ? state : "XX000";
      target.status = absl::UnknownError(absl::StrCat("node ", target.pool->node.ToString(), ": ",
                                                      Trim(PQresultErrorMessage(res))));
    } else if (status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
      // Not a COPY FROM STDIN: refused, as tasks' COPYs are.
      PQclear(res);
      StopCopy(c.pg, status);
      target.status = CopyRefused(target.pool->node, status);
      target.sqlstate = "0A000";
      Close(*target.conn, CloseReason::kTaskFailed);
      target.conn->copy = nullptr;
      target.conn = nullptr;
      target.phase = Phase::kDone;
      FailCopyRun(run, target.status, "0A000");
      return;
    }
    PQclear(res);
  }
}

// Gives libpq the node's part of the chunk and flushes it, as far as the
// worker reads now.
void SharedPool::Loop::PutData(CopyRun& run, CopyTarget& target) {
  Connection& c = *target.conn->c;
  if (!target.pending.empty()) {
    const int put =
        PQputCopyData(c.pg, target.pending.data(), static_cast<int>(target.pending.size()));
    if (put < 0) {
      TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
      return;
    }
    if (put == 1) {
      const int64_t rows = Lines(target.pending);
      target.rows += rows;
      stats.copy_rows += rows;
      stats.copy_bytes += static_cast<int64_t>(target.pending.size());
      target.pending = {};
    }
  }
  const int flushed = PQflush(c.pg);
  if (flushed < 0) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  // Not all out (or not yet taken): the socket's writability moves it on.
  c.want_write = flushed == 1 || !target.pending.empty();
  target.flushed = flushed == 0 && target.pending.empty();
}

// CopyDone (error null) or CopyFail: the node's COPY ends, its outcome
// follows.
void SharedPool::Loop::EndNodeCopy(CopyRun& run, CopyTarget& target, const char* error) {
  Connection& c = *target.conn->c;
  const int ended = PQputCopyEnd(c.pg, error);
  if (ended < 0) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  if (ended == 0) {  // libpq's buffer is full: again once the socket is writable
    c.want_write = true;
    return;
  }
  const int flushed = PQflush(c.pg);
  if (flushed < 0) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  c.want_write = flushed == 1;
  target.pending = {};
  target.flushed = true;
  target.phase = Phase::kEnding;
  if (error == nullptr) run.ending_sent = true;
}

// The node's statement is over: its connection resets (DISCARD ALL) and
// goes back to its pool, as after any task.
void SharedPool::Loop::ReleaseTarget(CopyTarget& target, absl::Time now) {
  Conn& conn = *target.conn;
  conn.copy = nullptr;
  conn.copy_target = -1;
  conn.batch = nullptr;
  conn.task = -1;
  conn.pipelined = false;
  conn.cancelling = false;
  target.conn = nullptr;
  target.phase = Phase::kDone;
  SendReset(conn, now);
}

// The node's connection broke: the COPY fails with 08006 naming the node.
void SharedPool::Loop::TargetLost(CopyRun& run, CopyTarget& target, const std::string& why) {
  Close(*target.conn, CloseReason::kTaskFailed);
  target.conn->copy = nullptr;
  target.conn = nullptr;
  target.phase = Phase::kDone;
  if (target.status.ok()) {
    target.status = absl::UnavailableError(absl::StrCat(
        "connection to node ", target.pool->node.ToString(), " was lost during the COPY: ", why));
    target.sqlstate = "08006";  // connection_failure
  }
  // Before any node was ended the COPY fails; after, this node's outcome is
  // its own (FailCopyRun).
  FailCopyRun(run, target.status, "08006");
}

// The COPY fails as a whole (or is cancelled): the session is told now, and
// every node's COPY is ended with an error, nothing committed; the
// connections go back to their pools as that completes.
void SharedPool::Loop::FailCopyRun(CopyRun& run, absl::Status status, const char* sqlstate) {
  // Nodes may have committed already: the others are ended too, and each
  // node's outcome is reported (a cancel now changes nothing).
  if (run.stage == Stage::kAborting || run.ending_sent) return;
  run.stage = Stage::kAborting;
  run.waiting = false;
  for (CopyTarget& t : run.targets) {
    t.pending = {};
    t.flushed = true;
    // A COPY statement still waiting (a lock on the worker): cancelled, so
    // that its CopyFail is not needed; one ending is cancelled so that it
    // commits nothing if it can still be stopped.
    if (t.conn != nullptr && (t.phase == Phase::kStarting || t.phase == Phase::kEnding)) {
      SendCancel(t.conn->c->pg);
    }
  }
  if (!absl::IsCancelled(status)) ++stats.copies_failed;
  Copy& copy = *run.copy;
  {
    std::lock_guard<std::mutex> lock(copy.mu);
    if (!copy.over) {
      copy.over = true;
      copy.status = std::move(status);
      copy.sqlstate = sqlstate;
      copy.done = copy.asked;
    }
  }
  run.failed = true;
  copy.Notify();
}

void SharedPool::Loop::StepDone(CopyRun& run) {
  run.stage = Stage::kReady;
  Copy& copy = *run.copy;
  {
    std::lock_guard<std::mutex> lock(copy.mu);
    copy.done = run.step;
  }
  copy.Notify();
}

void SharedPool::Loop::FinishCopyRun(CopyRun& run) {
  const CopyRequest& r = run.copy->request;
  std::vector<CopyNodeResult> results;
  for (size_t i = 0; i < run.targets.size(); ++i) {
    CopyTarget& t = run.targets[i];
    results.push_back({r.nodes[i], t.rows, t.started, std::move(t.status), std::move(t.sqlstate),
                       std::move(t.command_tag)});
  }
  ++stats.copies_finished;
  Copy& copy = *run.copy;
  {
    std::lock_guard<std::mutex> lock(copy.mu);
    copy.over = true;
    copy.results = std::move(results);
    copy.done = run.step;
  }
  copy.Notify();
}

// A pinned connection's socket reported `revents`.
void SharedPool::Loop::CopyEvent(Conn& conn, short revents, absl::Time now) {
  CopyRun& run = *conn.copy;
  CopyTarget& target = run.targets[conn.copy_target];
  Connection& c = *conn.c;
  if (target.phase == Phase::kPinned) {
    // Not in use yet: a notice or a parameter change, or the worker
    // closing it.
    if (revents == 0) return;
    if (!PQconsumeInput(c.pg) || PQstatus(c.pg) == CONNECTION_BAD) {
      TargetLost(run, target, "closed by the worker");
      return;
    }
    DropNotifications(c.pg);
    return;
  }
  if ((revents & (POLLIN | POLLERR | POLLHUP)) != 0 && !PQconsumeInput(c.pg)) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  if (target.phase == Phase::kIn && PQstatus(c.pg) == CONNECTION_BAD) {
    TargetLost(run, target, Trim(PQerrorMessage(c.pg)));
    return;
  }
  Pump(run, target, now);
}

// A pinned connection could not be made: the COPY fails with `sqlstate`
// (08001, or 53300 when the worker refused for lack of a slot).
void SharedPool::Loop::CopyConnectFailed(Conn& conn, absl::Status why, const char* sqlstate) {
  CopyRun& run = *conn.copy;
  CopyTarget& target = run.targets[conn.copy_target];
  conn.copy = nullptr;
  target.conn = nullptr;
  target.phase = Phase::kDone;
  target.status = why;
  target.sqlstate = sqlstate;
  FailCopyRun(run, std::move(why), sqlstate);
}

// Whether a COPY waits for a connection of `pool`'s node that `pool` itself
// cannot give it (another pool of the key): then `pool` gives back a
// connection as a task ends, rather than keep it.
bool SharedPool::Loop::CopyWaitsFor(const Pool& pool) const {
  return copy_waiting_keys.contains(pool.key_name) && !copy_waiting_pools.contains(&pool);
}

// The pool stops: every COPY fails with 08006; their connections are closed
// with the rest (a worker whose connection closes mid-COPY rolls it back).
void SharedPool::Loop::ShutdownCopies() {
  for (CopyRun& run : copies) {
    FailCopyRun(run, absl::UnavailableError("the connthrottle shared pool shut down"), "08006");
    for (CopyTarget& t : run.targets) {
      if (t.conn != nullptr) t.conn->copy = nullptr;
      t.conn = nullptr;
    }
  }
  copies.clear();
}

}  // namespace connthrottle
