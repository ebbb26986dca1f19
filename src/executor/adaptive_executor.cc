// adaptive_executor.cc — the event loop behind AdaptiveExecutor::Execute.
//
// One Execute() is an ExecutionRun: the tasks grouped into one Pool per node,
// a first phase that secures every pool's first connection in the global
// node order, and an event loop over all connections (poll on their sockets)
// that connects, sends, reads, grows pools by slow start, retries refused
// optional connections at the next interval, and runs local failover tasks.
// The header explains the policy; the comments here explain the steps.

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/slot.h"
#include "executor/libpq_conn.h"

namespace connthrottle {

using Connection = AdaptiveExecutor::Connection;
using State = AdaptiveExecutor::Connection::State;

TaskResult ExecutionContext::RunLocally(const Task& task) {
  TaskResult r;
  r.node = task.node;
  r.status = absl::UnavailableError(
      absl::StrCat("no connection to the local node ", task.node.ToString(),
                   " could be had and this executor cannot run tasks locally"));
  return r;
}

struct ExecutionRun {
  struct Pool {
    NodeAddress node;
    std::optional<NodeKey> key;
    bool local = false;
    std::deque<int> pending;
    std::vector<std::unique_ptr<Connection>> conns;
    bool run_locally = false;
    bool failed = false;
    // Slow start: at most k new connections per interval, k += 1 each interval.
    int k = 1;
    absl::Time interval_start;
    int opened_in_interval = 0;
    absl::Time retry_optional_at;    // after a refusal, wait for the next interval
    absl::Duration refused_backoff;  // after the worker refused for lack of a slot
    // Cost model.
    absl::Duration task_time_total;
    int tasks_done = 0;
    absl::Duration connect_time_total;
    int connects_done = 0;
  };

  ExecutionRun(AdaptiveExecutor& executor, std::vector<Task> tasks_in)
      : ex(executor), ctx(executor.context_), opt(executor.options_), tasks(std::move(tasks_in)) {
    results.resize(tasks.size());
  }

  AdaptiveExecutor& ex;
  ExecutionContext& ctx;
  const ExecutorOptions& opt;
  std::vector<Task> tasks;
  std::vector<TaskResult> results;
  ExecutionStats stats;
  std::map<NodeAddress, Pool> pools;
  absl::Time start;
  int remaining = 0;

  // ---- bookkeeping ----

  void Finish(int t, absl::Status status, const char* sqlstate = "") {
    TaskResult& r = results[t];
    if (r.status.ok()) {  // the first error stands
      r.status = std::move(status);
      if (r.sqlstate.empty()) r.sqlstate = sqlstate;
    }
    --remaining;
  }

  // Fails every task still pending on `pool` with `why` (and, when given,
  // the SQLSTATE a PostgreSQL caller should see).
  void FailPending(Pool& pool, const absl::Status& why, const char* sqlstate = "") {
    while (!pool.pending.empty()) {
      int t = pool.pending.front();
      pool.pending.pop_front();
      Finish(t, why, sqlstate);
    }
  }

  Limit LimitOf(const Pool& pool) { return ctx.LimitFor(pool.node, pool.local); }

  // ---- opening connections ----

  // Starts connecting with a slot already held.
  AcquireOptions AcquireOptionsNow() {
    AcquireOptions options;
    options.when_full = ctx.WhenTableFull();
    return options;
  }

  void StartConnect(Pool& pool, Slot slot) {
    auto c = std::make_unique<Connection>();
    c->id = ex.next_connection_id_++;
    c->node = pool.node;
    c->slot = std::move(slot);
    ++stats.connections_started;
    const std::optional<std::string> failed =
        StartConnecting(*c, ctx.ParamsFor(pool.node), absl::Now());
    stats.started_after[pool.node].push_back(c->connect_started - start);
    if (failed) {
      ++stats.connections_failed;
      CloseAll(One(std::move(c)), absl::ZeroDuration());
      OnConnectFailure(pool, *failed);
      return;
    }
    pool.conns.push_back(std::move(c));
  }

  static std::vector<std::unique_ptr<Connection>> One(std::unique_ptr<Connection> c) {
    std::vector<std::unique_ptr<Connection>> v;
    v.push_back(std::move(c));
    return v;
  }

  void OnConnectFailure(Pool& pool, const std::string& why) {
    // Other connections of the pool carry on; with none left, the pool fails
    // (or, for the local node, its tasks run locally).
    bool any_left = std::any_of(pool.conns.begin(), pool.conns.end(),
                                [](const auto& c) { return c->state != State::kBroken; });
    if (any_left) return;
    if (pool.local && FailOverLocally(pool)) return;
    pool.failed = true;
    FailPending(pool, CouldNotConnect(pool.node, why),
                "08001");  // sqlclient_unable_to_establish_sqlconnection
  }

  // Marks the pool's tasks for in-process execution; tasks that do not allow
  // it fail. Returns false when no task could run locally.
  bool FailOverLocally(Pool& pool) {
    std::deque<int> keep;
    for (int t : pool.pending) {
      if (tasks[t].allow_local) {
        keep.push_back(t);
      } else {
        Finish(t,
               absl::UnavailableError(
                   absl::StrCat("no connection to the local node ", pool.node.ToString(),
                                " is allowed now and the task may not run locally")),
               "53300");  // too_many_connections
      }
    }
    pool.pending = std::move(keep);
    pool.run_locally = !pool.pending.empty();
    return pool.run_locally;
  }

  // Phase 1: every pool's first connection, in the global node order.
  absl::Status SecureFirstConnections() {
    for (auto& [node, pool] : pools) {
      if (pool.pending.empty()) continue;
      int discarded = 0;
      while (pool.conns.size() < pool.pending.size()) {
        std::unique_ptr<Connection> cached = ex.TakeCached(node, &discarded);
        if (cached == nullptr) break;
        cached->reused = true;
        ++stats.connections_reused;
        stats.ready_after[node].push_back(absl::ZeroDuration());
        pool.conns.push_back(std::move(cached));
      }
      stats.cached_discarded += discarded;
      if (!pool.conns.empty()) continue;

      const Limit limit = LimitOf(pool);
      absl::StatusOr<Slot> slot = ex.owner_.TryAcquire(*pool.key, limit, AcquireOptionsNow());
      if (slot.ok()) {
        StartConnect(pool, *std::move(slot));
        continue;
      }
      if (IsTableFullError(slot.status())) {
        FailPending(pool, slot.status(), "53400");  // configuration_limit_exceeded
        continue;
      }
      if (pool.local || limit.never_waits()) {
        if (!FailOverLocally(pool)) pool.failed = true;
        continue;
      }
      // The first connection is needed: wait for it — but first give back
      // every idle cached connection, so that no session waits while sitting
      // on slots others may be waiting for. (The first connections of the
      // nodes before this one in the global order are held: that order is
      // what keeps waiting sessions from deadlocking.)
      ex.CloseIdle();
      if (absl::Status s = WaitForFirst(pool, absl::Now() + opt.slot_wait_timeout); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Waits, queued with the other waiters, for a first connection's slot to
  // `pool`'s node, then starts connecting. Returns Cancelled for the caller
  // to stop on; on any other failure the pool's pending tasks fail.
  absl::Status WaitForFirst(Pool& pool, absl::Time deadline) {
    ++stats.waited_for_first;
    absl::StatusOr<Slot> slot = ex.owner_.AcquireWaiting(
        *pool.key, [&] { return LimitOf(pool); }, deadline, [&] { return ctx.Interrupted(); },
        AcquireOptionsNow());
    if (absl::IsCancelled(slot.status())) return slot.status();
    if (!slot.ok()) {
      pool.failed = true;
      FailPending(pool,
                  absl::IsDeadlineExceeded(slot.status())
                      ? absl::ResourceExhaustedError(absl::StrCat(
                            "no connection slot to node ", pool.node.ToString(),
                            " became free within ", absl::FormatDuration(opt.slot_wait_timeout),
                            " (", LimitOf(pool).ToString(), ")"))
                      : slot.status(),
                  "53300");  // too_many_connections
      return absl::OkStatus();
    }
    StartConnect(pool, *std::move(slot));
    return absl::OkStatus();
  }

  // Whether any pool other than `pool` has a query running, a connection
  // being opened, or local work waiting.
  bool OtherWorkInFlight(const Pool& pool) {
    if (LocalWorkPending()) return true;
    for (const auto& [node, other] : pools) {
      if (&other == &pool) continue;
      for (const auto& c : other.conns) {
        if (c->state == State::kBusy || c->state == State::kConnecting) return true;
      }
    }
    return false;
  }

  // Closes the idle connections of the pools after `pool` in the global
  // order, so that this session may wait for `pool`'s node holding only
  // slots of nodes before it.
  void CloseIdleAfter(const Pool& pool) {
    std::vector<std::unique_ptr<Connection>> closing;
    for (auto it = pools.upper_bound(pool.node); it != pools.end(); ++it) {
      for (auto& c : it->second.conns) {
        if (c->state == State::kIdle) closing.push_back(std::move(c));
      }
      std::erase(it->second.conns, nullptr);
    }
    CloseAll(std::move(closing));
  }

  // Slow start and the cost model decide whether to open one more optional
  // connection now.
  void MaybeGrow(Pool& pool, absl::Time now) {
    if (pool.failed || pool.run_locally || pool.pending.empty()) return;
    if (static_cast<int>(pool.conns.size()) >= opt.max_pool_size) return;
    if (now - pool.interval_start >= opt.slow_start_interval) {
      pool.interval_start = now;
      pool.opened_in_interval = 0;
      ++pool.k;
    }
    if (pool.opened_in_interval >= pool.k || now < pool.retry_optional_at) return;
    int ready = 0, connecting = 0;
    for (const auto& c : pool.conns) {
      if (c->state == State::kConnecting) ++connecting;
      if (c->state == State::kIdle || c->state == State::kBusy) ++ready;
    }
    // A pool with no connection left needs a first connection, not an
    // optional one: the loop's retry takes care of it.
    if (ready + connecting == 0) return;
    // Tasks that will not find a connection when one frees up.
    if (static_cast<int>(pool.pending.size()) <= connecting) return;
    if (ready + connecting > 0 && pool.tasks_done == 0 && now - start < opt.slow_start_interval) {
      // Nothing is known yet about how long a task takes: a connection that
      // is there (cached) or on its way gets one slow-start interval first,
      // so that short tasks on a cached connection open nothing new.
      return;
    }
    if (ready + connecting > 0 && pool.tasks_done > 0) {
      // The queue drains on the open connections in pending * task / n. A new
      // connection shortens that only if the drain outlasts its connect time;
      // it also costs the worker a backend, and one beyond what the cache
      // keeps is closed again at the end. So open one only when the queue
      // outlasts twice its connect time — three times when it will not be
      // kept.
      const absl::Duration task = pool.task_time_total / pool.tasks_done;
      const absl::Duration connect = pool.connects_done > 0
                                         ? pool.connect_time_total / pool.connects_done
                                         : absl::Milliseconds(5);
      const absl::Duration drain =
          task * static_cast<double>(pool.pending.size()) / (ready + connecting);
      const bool kept = static_cast<int>(pool.conns.size()) < opt.max_cached_per_node;
      if (drain < (kept ? 2 : 3) * connect) return;
    }
    absl::StatusOr<Slot> slot = ex.owner_.TryAcquire(*pool.key, LimitOf(pool), AcquireOptionsNow());
    if (!slot.ok()) {
      ++stats.optional_refused;
      pool.retry_optional_at = pool.interval_start + opt.slow_start_interval;
      return;
    }
    ++pool.opened_in_interval;
    StartConnect(pool, *std::move(slot));
  }

  // ---- running tasks ----

  void Send(Pool& pool, Connection& c) {
    int t = pool.pending.front();
    pool.pending.pop_front();
    results[t].queued = absl::Now() - start;
    results[t].connection = c.id;
    c.task = t;
    c.task_got_result = false;
    run_started_[t] = absl::Now();
    if (!PQsendQuery(c.pg, tasks[t].sql.c_str())) {
      Broken(pool, c, Trim(PQerrorMessage(c.pg)));
      return;
    }
    // With a bound on the rows kept, rows arrive one PGresult each and are
    // dropped as they come (ReadResults), instead of piling up in libpq.
    c.in_result_set = false;
    if (opt.max_rows_kept >= 0) PQsetSingleRowMode(c.pg);
    c.state = State::kBusy;
    int flushed = PQflush(c.pg);
    if (flushed < 0) {
      Broken(pool, c, Trim(PQerrorMessage(c.pg)));
      return;
    }
    c.want_write = flushed == 1;
  }

  void Dispatch(Pool& pool) {
    for (auto& c : pool.conns) {
      if (pool.pending.empty()) return;
      if (c->state == State::kIdle) Send(pool, *c);
    }
  }

  // A connection failed. Its task is retried elsewhere if the connection was
  // a cached one that broke before the task got anything (the worker had
  // closed it while idle); otherwise the task fails.
  void Broken(Pool& pool, Connection& c, const std::string& why) {
    const State was = c.state;
    c.state = State::kBroken;
    if (was == State::kConnecting) {
      ++stats.connections_failed;
      OnConnectFailure(pool, why);
      return;
    }
    if (c.task >= 0) {
      int t = c.task;
      c.task = -1;
      if (c.reused && !c.task_got_result) {
        ++stats.tasks_retried;
        pool.pending.push_front(t);
        if (std::none_of(pool.conns.begin(), pool.conns.end(),
                         [](const auto& o) { return o->state != State::kBroken; })) {
          // Its only connection was that one: it is a first connection again.
          pool.retry_optional_at = absl::InfinitePast();
          pool.opened_in_interval = 0;
        }
      } else {
        Finish(t,
               absl::UnavailableError(absl::StrCat("connection to node ", pool.node.ToString(),
                                                   " failed while running the task: ", why)),
               "08006");  // connection_failure
      }
    }
  }

  void ReadResults(Pool& pool, Connection& c) {
    if (!PQconsumeInput(c.pg)) {
      Broken(pool, c, Trim(PQerrorMessage(c.pg)));
      return;
    }
    while (c.state == State::kBusy && !PQisBusy(c.pg)) {
      PGresult* res = PQgetResult(c.pg);
      if (res == nullptr) {  // the task is complete
        int t = c.task;
        c.task = -1;
        c.state = State::kIdle;
        const absl::Duration run = absl::Now() - run_started_[t];
        results[t].run = run;
        pool.task_time_total += run;
        ++pool.tasks_done;
        Finish(t, absl::OkStatus());
        return;
      }
      c.task_got_result = true;
      if (FoldResult(res, pool.node, opt.max_rows_kept, c.in_result_set, results[c.task]) ==
          Fold::kCopy) {
        // libpq hands back the COPY state again at every PQgetResult until
        // the COPY is ended; a task has no rows to send or place for rows
        // streamed back. The task fails and its connection is closed (the
        // worker's COPY cancelled first, so that it stops at once).
        const ExecStatusType copy = PQresultStatus(res);
        PQclear(res);
        FailCopy(pool, c, copy);
        return;
      }
      PQclear(res);
    }
  }

  // A task entered COPY: the task fails with 0A000, the worker's COPY is
  // cancelled and the connection is broken (closed by ReapBroken).
  void FailCopy(Pool& pool, Connection& c, ExecStatusType copy) {
    const int t = c.task;
    StopCopy(c.pg, copy);
    c.task = -1;
    c.state = State::kBroken;
    results[t].run = absl::Now() - run_started_[t];
    Finish(t, CopyRefused(pool.node, copy), "0A000");  // feature_not_supported
  }

  void Connecting(Pool& pool, Connection& c) {
    switch (ContinueConnecting(c, absl::Now())) {
      case ConnectProgress::kPending:
        return;
      case ConnectProgress::kFailed: {
        const ConnectError e = ReadConnectError(c.pg);
        // The local node refusing is handled as any failure: its tasks run
        // in-process at once rather than wait for a backend of this server.
        if (e.no_slot() && !pool.local) {
          RefusedByWorker(pool, c, e);
        } else {
          Broken(pool, c, e.message);
        }
        return;
      }
      case ConnectProgress::kReady:
        pool.refused_backoff = absl::ZeroDuration();
        pool.connect_time_total += c.ready - c.connect_started;
        ++pool.connects_done;
        ++stats.connections_opened;
        stats.ready_after[pool.node].push_back(c.ready - start);
        return;
    }
  }

  // The worker refused the connection for lack of a slot (53300: its
  // max_connections, or its connthrottle.worker_budget shared with other
  // coordinators). As after a refused optional acquire, the pool asks again
  // later, backing off (from one slow-start interval, doubling, to 500 ms: each
  // try costs the worker a backend start); its other connections serve its
  // tasks meanwhile. With none, its tasks fail with 53300 only once the
  // execution has waited its slot wait timeout.
  void RefusedByWorker(Pool& pool, Connection& c, const ConnectError& e) {
    c.state = State::kBroken;
    ++stats.connections_failed;
    const absl::Time now = absl::Now();
    pool.refused_backoff = NoSlotBackoff(pool.refused_backoff, opt.slow_start_interval);
    pool.retry_optional_at = now + pool.refused_backoff;
    if (HasConnection(pool) || now - start < opt.slot_wait_timeout) return;
    pool.failed = true;
    FailPending(pool,
                absl::ResourceExhaustedError(
                    absl::StrCat("no connection slot at node ", pool.node.ToString(), " within ",
                                 absl::FormatDuration(opt.slot_wait_timeout), ": ", e.message)),
                "53300");  // too_many_connections
  }

  void RunOneLocalTask() {
    for (auto& [node, pool] : pools) {
      if (!pool.run_locally || pool.pending.empty()) continue;
      int t = pool.pending.front();
      pool.pending.pop_front();
      results[t].queued = absl::Now() - start;
      const absl::Time began = absl::Now();
      TaskResult local = ctx.RunLocally(tasks[t]);
      local.node = node;
      local.ran_locally = true;
      local.queued = results[t].queued;
      local.run = absl::Now() - began;
      absl::Status status = local.status;
      results[t] = std::move(local);
      results[t].status = absl::OkStatus();
      ++stats.tasks_run_locally;
      Finish(t, status);
      return;
    }
  }

  bool LocalWorkPending() const {
    for (const auto& [node, pool] : pools) {
      if (pool.run_locally && !pool.pending.empty()) return true;
    }
    return false;
  }

  // ---- the loop ----

  absl::Status Loop() {
    for (auto& [node, pool] : pools) pool.interval_start = start;
    while (remaining > 0) {
      if (ctx.Interrupted()) return absl::CancelledError("the execution was cancelled");
      const absl::Time now = absl::Now();
      for (auto& [node, pool] : pools) {
        Dispatch(pool);
        // Broken connections give their slots back before the pool asks for
        // new ones: a pool whose connections all broke at once (its worker
        // stopped) would otherwise wait in Reconnect for the slots its own
        // broken connections hold, until its wait timed out.
        ReapBroken(pool);
        MaybeGrow(pool, now);
        if (absl::Status s = Reconnect(pool, now); !s.ok()) return s;
        ReapBroken(pool);
      }
      if (remaining == 0) break;
      // Wait for sockets, at most a tick (or not at all when local work waits).
      const bool local_work = LocalWorkPending();
      WaitForSockets(now, local_work);
      if (local_work) RunOneLocalTask();
    }
    return absl::OkStatus();
  }

  // A pool whose connections all failed while tasks remain needs a first
  // connection again: optionally at each interval while other pools work,
  // and once nothing else is in flight, by waiting in the queue (optional
  // tries alone could lose to waiters for ever) with only slots of earlier
  // nodes held. Returns Cancelled for the caller to stop on.
  absl::Status Reconnect(Pool& pool, absl::Time now) {
    if (pool.failed || pool.run_locally || pool.pending.empty() || HasConnection(pool) ||
        now < pool.retry_optional_at) {
      return absl::OkStatus();
    }
    absl::StatusOr<Slot> slot = ex.owner_.TryAcquire(*pool.key, LimitOf(pool), AcquireOptionsNow());
    if (slot.ok()) {
      StartConnect(pool, *std::move(slot));
    } else if (pool.local) {
      FailOverLocally(pool);
    } else if (!OtherWorkInFlight(pool)) {
      CloseIdleAfter(pool);
      return WaitForFirst(pool, start + opt.slot_wait_timeout);
    } else {
      pool.retry_optional_at = now + opt.slow_start_interval;
    }
    return absl::OkStatus();
  }

  static bool HasConnection(const Pool& pool) {
    return std::any_of(pool.conns.begin(), pool.conns.end(),
                       [](const auto& c) { return c->state != State::kBroken; });
  }

  // When the loop must look again without a socket event: the next
  // slow-start interval, a retry, a connect timeout. Only where something
  // can be opened: a pool with nothing left to grow for keeps a stale
  // interval, which would make the loop spin.
  absl::Time NextWake(absl::Time now) {
    absl::Time wake = now + opt.tick;
    for (auto& [node, pool] : pools) {
      if (!pool.failed && !pool.run_locally && !pool.pending.empty()) {
        if (!HasConnection(pool)) {
          wake = std::min(wake, std::max(pool.retry_optional_at, now));
        } else if (static_cast<int>(pool.conns.size()) < opt.max_pool_size) {
          wake = std::min(wake, std::max(pool.interval_start + opt.slow_start_interval, now));
        }
      }
      for (auto& c : pool.conns) {
        if (c->state == State::kConnecting) {
          wake = std::min(wake, c->connect_started + opt.connect_timeout);
        }
      }
    }
    return wake;
  }

  void WaitForSockets(absl::Time now, bool local_work) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Pool*, Connection*>> owners;
    for (auto& [node, pool] : pools) {
      for (auto& c : pool.conns) {
        const short events = AwaitedEvents(*c);
        if (events == 0) continue;
        fds.push_back({PQsocket(c->pg), events, 0});
        owners.emplace_back(&pool, c.get());
      }
    }
    const int timeout_ms =
        local_work ? 0
                   : static_cast<int>(std::max<int64_t>(
                         0, absl::ToInt64Milliseconds(NextWake(now) - absl::Now()) + 1));
    if (!fds.empty() || timeout_ms > 0) poll(fds.data(), fds.size(), timeout_ms);
    const absl::Time after = absl::Now();
    for (size_t i = 0; i < fds.size(); ++i) {
      HandleEvent(*owners[i].first, *owners[i].second, fds[i].revents, after);
    }
  }

  void HandleEvent(Pool& pool, Connection& c, short revents, absl::Time now) {
    if (c.state == State::kConnecting) {
      if (revents != 0) {
        Connecting(pool, c);
      } else if (now - c.connect_started > opt.connect_timeout) {
        Broken(pool, c, ConnectTimedOut(opt.connect_timeout));
      }
    } else if (c.state == State::kBusy) {
      if (!FlushWhenWritable(c, revents)) {
        Broken(pool, c, Trim(PQerrorMessage(c.pg)));
      } else if (ResultsReadable(revents)) {
        ReadResults(pool, c);
      }
    }
  }

  void ReapBroken(Pool& pool) {
    std::vector<std::unique_ptr<Connection>> broken;
    auto it = std::partition(pool.conns.begin(), pool.conns.end(),
                             [](const auto& c) { return c->state != State::kBroken; });
    for (auto b = it; b != pool.conns.end(); ++b) broken.push_back(std::move(*b));
    pool.conns.erase(it, pool.conns.end());
    if (!broken.empty()) CloseAll(std::move(broken));
  }

  // ---- the end ----

  // After a cancel: every running remote query is cancelled, busy and
  // connecting connections are closed (their slots given back), idle ones
  // are kept.
  void Abort() {
    std::vector<std::unique_ptr<Connection>> closing;
    for (auto& [node, pool] : pools) {
      for (auto& c : pool.conns) {
        if (c->state == State::kBusy) {
          SendCancel(c->pg);
        }
        if (c->state == State::kConnecting) NoteAbandoned(pool, *c);
        if (c->state != State::kIdle) closing.push_back(std::move(c));
      }
      std::erase(pool.conns, nullptr);
    }
    CloseAll(std::move(closing));
    KeepOrClose();
  }

  // A connection attempt given up while still connecting cost the worker a
  // backend all the same. Its connect time was at least as long as it ran:
  // counting that as a sample raises the node's estimate, so that the cost
  // model stops opening connections that the queue drains before they are
  // ready.
  void NoteAbandoned(Pool& pool, const Connection& c) {
    ++stats.connections_abandoned;
    // Censored: the real connect time is unknown beyond "longer than this", so
    // it only ever raises the estimate.
    const absl::Duration ran = absl::Now() - c.connect_started;
    if (pool.connects_done == 0 || ran * pool.connects_done > pool.connect_time_total) {
      pool.connect_time_total += ran;
      ++pool.connects_done;
    }
  }

  // Idle connections go to the cache (up to max_cached_per_node, within
  // their lifetime) only while their node has no waiters and, with them, a
  // slot still free: a session that goes idle holding cached connections
  // must never hold the last slots others will need (it cannot give them
  // back until it runs again). The rest are closed.
  void KeepOrClose() {
    std::vector<std::unique_ptr<Connection>> closing;
    for (auto& [node, pool] : pools) {
      for (auto& c : pool.conns) {
        if (c->state == State::kConnecting) NoteAbandoned(pool, *c);
        if (auto rejected = ex.Cache(std::move(c))) closing.push_back(std::move(rejected));
      }
      pool.conns.clear();
    }
    CloseAll(std::move(closing));
  }

  std::map<int, absl::Time> run_started_;
};

AdaptiveExecutor::AdaptiveExecutor(Owner& owner, ExecutionContext& context, ExecutorOptions options)
    : owner_(owner), context_(context), options_(options) {}

AdaptiveExecutor::~AdaptiveExecutor() { CloseIdle(); }

NodeKey AdaptiveExecutor::KeyOf(const NodeAddress& node) {
  return *NodeKey::Create(node.host, node.port, context_.DatabaseId());
}

absl::StatusOr<ExecutionResult> AdaptiveExecutor::Execute(std::vector<Task> tasks) {
  ExecutionRun run(*this, std::move(tasks));
  run.start = absl::Now();
  run.remaining = static_cast<int>(run.tasks.size());
  for (size_t t = 0; t < run.tasks.size(); ++t) {
    const Task& task = run.tasks[t];
    run.results[t].node = task.node;
    absl::StatusOr<NodeKey> key =
        NodeKey::Create(task.node.host, task.node.port, context_.DatabaseId());
    if (!key.ok()) {
      run.Finish(static_cast<int>(t), key.status(), "22023");  // invalid_parameter_value
      continue;
    }
    ExecutionRun::Pool& pool = run.pools[task.node];
    if (!pool.key) {
      pool.node = task.node;
      pool.key = *key;
      pool.local = context_.IsLocal(task.node);
      if (auto it = connect_time_.find(task.node); it != connect_time_.end()) {
        pool.connect_time_total = it->second;  // what earlier executions measured
        pool.connects_done = 1;
      }
    }
    pool.pending.push_back(static_cast<int>(t));
  }

  absl::Status status = run.SecureFirstConnections();
  if (status.ok()) status = run.Loop();
  if (status.ok()) {
    run.KeepOrClose();
  } else {
    run.Abort();
  }
  for (const auto& [node, pool] : run.pools) {
    if (pool.connects_done > 0) connect_time_[node] = pool.connect_time_total / pool.connects_done;
  }
  if (!status.ok()) return status;
  return ExecutionResult{std::move(run.results), std::move(run.stats)};
}

}  // namespace connthrottle
