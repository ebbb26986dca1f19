// pool_connections.cc — the shared pool's loop: connections: slow start and the cost model,
// connecting, closing and reaping. See pool_loop.h for the loop's state and who owns it.

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "executor/pool_loop.h"

namespace connthrottle {

int SharedPool::Loop::LiveConnections(const Pool& pool) {
  return static_cast<int>(std::count_if(pool.conns.begin(), pool.conns.end(), [](const auto& c) {
    return c->c->state != State::kBroken;
  }));
}

int SharedPool::Loop::TaskConnections(const Pool& pool) {
  return static_cast<int>(std::count_if(pool.conns.begin(), pool.conns.end(), [](const auto& c) {
    return c->c->state != State::kBroken && c->copy == nullptr;
  }));
}

void SharedPool::Loop::Grow(Pool& pool, absl::Time now) {
  if (pool.queued == 0) {
    pool.wants_slot = false;
    return;
  }
  if (now < pool.retry_at) return;
  // A COPY waits for a slot of the node: it has it first (it holds other
  // nodes while it waits; the pool's tasks hold nothing).
  if (copy_waiting_keys.contains(pool.key_name)) return;
  pool.wants_slot = false;
  int live = 0, connecting = 0;
  for (const auto& conn : pool.conns) {
    if (conn->c->state == State::kIdle) return;  // Dispatch found the queue empty
    if (conn->c->state == State::kBroken) continue;
    ++live;
    if (conn->c->state == State::kConnecting) ++connecting;
  }
  if (live >= std::min(options.max_pool_size, pool.share)) return;
  if (live > 0) {
    if (now - pool.interval_start >= options.slow_start_interval) {
      pool.interval_start = now;
      pool.opened_in_interval = 0;
      ++pool.k;
    }
    if (pool.opened_in_interval >= pool.k) return;
    // Tasks that will not find a connection when those on their way are ready.
    if (pool.queued <= connecting) return;
    // One more connection pays when the tasks have waited in the queue,
    // all together, twice a connect time since the pool last grew: a
    // short burst opens nothing, sustained queueing (many short tasks, or
    // a few long ones) grows the pool by slow start.
    const absl::Duration connect = pool.connects_done > 0
                                       ? pool.connect_time_total / pool.connects_done
                                       : absl::Milliseconds(5);
    if (pool.waited < 2 * connect) return;
  }
  AcquireOptions acquire;
  acquire.when_full = options.when_table_full;
  absl::StatusOr<Slot> slot =
      sp.owner_.TryAcquire(*pool.key, sp.limit_(pool.node, pool.local), acquire);
  if (!slot.ok()) {
    ++stats.optional_refused;
    pool.wants_slot = true;
    if (live == 0 && IsTableFullError(slot.status())) {
      FailQueued(pool, slot.status(), "53400");  // configuration_limit_exceeded
    } else if (live == 0 && pool.local) {
      HandBack(pool);
    }
    pool.retry_at = now + options.slow_start_interval;
    return;
  }
  ++pool.opened_in_interval;
  pool.waited = absl::ZeroDuration();
  StartConnect(pool, *std::move(slot), now);
}

void SharedPool::Loop::StartConnect(Pool& pool, Slot slot, absl::Time now) {
  auto conn = std::make_unique<Conn>();
  conn->c = std::make_unique<Connection>();
  Connection& c = *conn->c;
  c.id = next_connection_id++;
  c.node = pool.node;
  c.slot = std::move(slot);
  ++stats.connections_started;
  const std::optional<std::string> failed = StartConnecting(c, pool.params, now);
  pool.conns.push_back(std::move(conn));
  if (failed) ConnectFailed(pool, *pool.conns.back(), ConnectError{*failed, ""}, now);
}

void SharedPool::Loop::Connecting(Pool& pool, Conn& conn, absl::Time now) {
  Connection& c = *conn.c;
  switch (ContinueConnecting(c, now)) {
    case ConnectProgress::kPending:
      return;
    case ConnectProgress::kFailed:
      ConnectFailed(pool, conn, ReadConnectError(c.pg), now);
      return;
    case ConnectProgress::kReady:
      pool.refused_backoff = absl::ZeroDuration();
      if (conn.copy != nullptr) c.state = State::kBusy;  // pinned: the COPY's, not the pool's
      conn.idle_since = now;
      pool.connect_time_total += now - c.connect_started;
      ++pool.connects_done;
      ++stats.connections_opened;
      return;
  }
}

// A connection attempt failed: it is closed. With no other connection
// left, the pool's queued tasks fail (or, for the local node, run
// in-process) — unless the worker refused for lack of a slot (53300: its
// max_connections, or its connthrottle.worker_budget shared with other
// coordinators): then, as after a refused optional acquire, the pool asks
// again later, backing off (from one slow-start interval, doubling, to
// 500 ms: each try costs the worker a backend start), and its tasks wait,
// failing with 53300 at their own wait timeout if no connection comes. A
// COPY fails at once (with 53300 then): it holds its other nodes meanwhile.
void SharedPool::Loop::ConnectFailed(Pool& pool, Conn& conn, const ConnectError& why,
                                     absl::Time now) {
  Close(conn, CloseReason::kConnectFailed);
  if (conn.copy != nullptr) {
    CopyConnectFailed(conn, CouldNotConnect(pool.node, why.message),
                      why.no_slot() ? "53300" : "08001");
  }
  // The local node refusing is handled as any failure: the tasks run
  // in-process at once rather than wait for a backend of this server.
  if (why.no_slot() && !pool.local) {
    pool.refused_backoff = NoSlotBackoff(pool.refused_backoff, options.slow_start_interval);
    pool.retry_at = now + pool.refused_backoff;
    return;
  }
  if (LiveConnections(pool) > 0 || pool.queued == 0) return;
  if (pool.local) {
    HandBack(pool);
    return;
  }
  FailQueued(pool, CouldNotConnect(pool.node, why.message),
             "08001");  // sqlclient_unable_to_establish_sqlconnection
}

void SharedPool::Loop::Close(Conn& conn, CloseReason why, Pool* to) {
  // The counter of each reason, in CloseReason's order (null: none).
  static constexpr int64_t SharedPoolStats::*kCounters[] = {
      &SharedPoolStats::connections_failed,    &SharedPoolStats::closed_idle,
      &SharedPoolStats::closed_over_limit,     &SharedPoolStats::closed_for_waiters,
      &SharedPoolStats::closed_for_pools,      &SharedPoolStats::closed_dead,
      &SharedPoolStats::closed_in_transaction, &SharedPoolStats::closed_reset_failed,
      &SharedPoolStats::out_of_memory,         nullptr,
  };
  static_assert(std::size(kCounters) == static_cast<size_t>(CloseReason::kTaskFailed) + 1);
  conn.c->state = State::kBroken;
  conn.give_to = to;
  if (int64_t SharedPoolStats::*counter = kCounters[static_cast<int>(why)]) ++(stats.*counter);
}

void SharedPool::Loop::ExpireIdle(Pool& pool, absl::Time now) {
  for (auto& conn : pool.conns) {
    if (conn->c->state == State::kIdle && now - conn->idle_since >= options.idle_timeout) {
      Close(*conn, CloseReason::kIdleTimeout);
    }
  }
}

void SharedPool::Loop::Reap(Pool& pool) {
  std::vector<std::unique_ptr<Connection>> closing;
  std::vector<std::pair<Pool*, Slot>> handed;
  for (auto& conn : pool.conns) {
    if (conn->c->state == State::kBroken) {
      if (conn->copy != nullptr) {  // closed under a COPY: it fails
        TargetLost(*conn->copy, conn->copy->targets[conn->copy_target], "the connection closed");
      }
      Uncount(*conn);
      if (conn->give_to != nullptr) handed.emplace_back(conn->give_to, std::move(conn->c->slot));
      closing.push_back(std::move(conn->c));
    }
  }
  std::erase_if(pool.conns, [](const auto& conn) { return conn->c == nullptr; });
  // The slots are given back once the workers' backends are gone.
  if (!closing.empty()) CloseAll(std::move(closing));
  // A slot closed for another pool of the key goes to it as it is: given
  // back and taken again, it would go to a waiter of the direct transport
  // first, and a pool with no connection could wait for ever. The worker's
  // backend is gone by now, so the node stays within its limit.
  for (auto& [to, slot] : handed) {
    if (to->queued == 0 || LiveConnections(*to) >= options.max_pool_size) continue;  // released
    // Another database: the slot is counted for `to`'s under the
    // per-database bound, or given back when that one is at its bound.
    if (to->key->database() != pool.key->database()) {
      AcquireOptions acquire;
      acquire.when_full = options.when_table_full;
      if (!sp.owner_.MoveToDatabase(slot, *to->key, sp.limit_(to->node, to->local), acquire)) {
        continue;
      }
    }
    ++to->opened_in_interval;
    to->waited = absl::ZeroDuration();
    StartConnect(*to, std::move(slot), absl::Now());
  }
}

// An idle connection's socket turned readable: a notice, or the worker
// closing it.
void SharedPool::Loop::IdleReadable(Conn& conn) {
  PGconn* pg = conn.c->pg;
  if (!PQconsumeInput(pg) || PQstatus(pg) == CONNECTION_BAD) {
    Close(conn, CloseReason::kDead);
    return;
  }
  DropNotifications(pg);
}

// A connection's event could not be handled for want of memory: its task
// fails with 53200 and the connection is closed.
void SharedPool::Loop::OutOfMemory(Conn& conn) {
  Close(conn, CloseReason::kOutOfMemory);
  if (conn.batch != nullptr && !conn.cancelling) FailOutOfMemory(*conn.batch, conn.task);
  conn.batch = nullptr;
  conn.task = -1;
  conn.result = TaskResult{};
  Uncount(conn);
}

}  // namespace connthrottle
