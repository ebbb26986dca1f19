// pool_loop.cc — the shared pool's loop: the loop: a turn, the inbox, waiting for events, the end.
// See pool_loop.h for the loop's state and who owns it.

#include "executor/pool_loop.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connthrottle {

namespace {

// The name of the pool a task goes to: node, database id and every
// connection parameter (a password too: sessions with different
// credentials never share a connection).
std::string PoolName(const NodeAddress& node, uint32_t database, const ConnParams& params) {
  std::string name = absl::StrCat(node.host, ":", node.port, "/", database);
  const char* const* k = params.keywords();
  const char* const* v = params.values();
  for (; *k != nullptr; ++k, ++v) {
    name.push_back('\0');
    absl::StrAppend(&name, *k, "=", *v);
  }
  return name;
}

// The pool whose ExternalWork::serve this thread is running, if any.
thread_local const SharedPool* serving_pool = nullptr;

}  // namespace

bool ServingOnLoopThread(const SharedPool& sp) { return serving_pool == &sp; }

// How often a pool with idle connections looks for others waiting for its
// node's slots.
constexpr absl::Duration kYieldCheckInterval = absl::Milliseconds(25);

void SharedPool::Loop::Run() {
  while (TakeInbox()) {
    const absl::Time now = absl::Now();
    // Each step stands alone: an allocation failure in one (its tasks
    // failed where they could be told) must not end the loop, which every
    // session depends on.
    Guarded([&] { Rebalance(); });
    // COPYs first: one waiting for a connection takes it before tasks do.
    ServiceCopies(now);
    for (auto& [name, pool] : pools) Guarded([&] { Service(pool, now); });
    regroup |= std::erase_if(pools, [](const auto& p) {
                 return p.second.conns.empty() && p.second.queues.empty() && p.second.copies == 0;
               }) > 0;
    // The figures for other threads: at most every millisecond while busy
    // (the loop turns once per event), and before any longer sleep.
    Guarded([&] {
      if (now - published_at >= absl::Milliseconds(1)) Publish(now);
      WaitForEvents(now);
    });
  }
  Shutdown();
  Publish(absl::Now());
}

// Work from outside (ExternalWork): drained first, then served, so that
// what is published during `serve` makes the descriptor readable again.
void SharedPool::Loop::ServeExternal() {
  if (!std::exchange(external_ready, false)) return;
  uint64_t count;
  [[maybe_unused]] ssize_t n = read(sp.external_.fd, &count, sizeof(count));
  serving_pool = &sp;
  Guarded([&] { sp.external_.serve(); });
  serving_pool = nullptr;
}

// New batches and cancels (ServeExternal's too); false when the pool is
// stopping.
bool SharedPool::Loop::TakeInbox() {
  ServeExternal();
  // One read drains an eventfd.
  uint64_t count;
  if (std::exchange(inbox_ready, false) && sp.wake_fd_ >= 0) {
    [[maybe_unused]] ssize_t n = read(sp.wake_fd_, &count, sizeof(count));
  }
  std::vector<std::shared_ptr<Batch>> submitted, cancelled;
  std::vector<std::shared_ptr<Copy>> copy_work;
  bool stopping;
  {
    std::lock_guard<std::mutex> lock(sp.mu_);
    submitted.swap(sp.submitted_);
    cancelled.swap(sp.cancelled_);
    copy_work.swap(sp.copies_);
    stopping = sp.stopping_;
    // Copied only when changed: the loop turns once per event.
    if (options_version != sp.options_version_) {
      options = sp.options_;
      options_version = sp.options_version_;
    }
  }
  for (auto& b : submitted) {
    try {
      Enqueue(b);
    } catch (const std::bad_alloc&) {
      // Whatever of it was queued runs; the rest fails.
      ++stats.out_of_memory;
      FailUnqueued(*b);
    }
  }
  for (auto& b : cancelled) Guarded([&] { Cancel(*b); });
  const absl::Time now = absl::Now();
  for (auto& copy : copy_work) Guarded([&] { TakeCopy(copy, now); });
  return !stopping;
}

// The pool of (node, database, parameters), made on first use.
SharedPool::Loop::Pool& SharedPool::Loop::PoolFor(const NodeAddress& node, uint32_t database,
                                                  const ConnParams& params, bool local,
                                                  const NodeKey& key, absl::Time now) {
  Pool& pool = pools[PoolName(node, database, params)];
  if (!pool.key) {
    regroup = true;
    pool.node = node;
    pool.key = key;
    pool.key_name = key.NodeName();
    pool.params = params;
    pool.local = local;
    pool.interval_start = now;
    pool.waited_at = now;
  }
  return pool;
}

void SharedPool::Loop::Enqueue(const std::shared_ptr<Batch>& b) {
  if (b->cancelled.load()) return;
  const absl::Time now = absl::Now();
  std::map<Pool*, std::deque<int>> per_pool;
  for (int t = 0; t < static_cast<int>(b->tasks.size()); ++t) {
    const Task& task = b->tasks[t];
    absl::StatusOr<NodeKey> key = NodeKey::Create(task.node.host, task.node.port, b->database_id);
    if (!key.ok()) {
      FailTask(*b, t, key.status(), "22023");  // invalid_parameter_value
      continue;
    }
    Pool& pool = PoolFor(task.node, b->database_id, b->params[t], b->local[t] != 0, *key, now);
    per_pool[&pool].push_back(t);
  }
  for (auto& [pool, tasks] : per_pool) {
    pool->queued += static_cast<int>(tasks.size());
    pool->queues.push_back({b, std::move(tasks)});
  }
}

// Enqueue ran out of memory: the batch's tasks that no pool queued fail.
void SharedPool::Loop::FailUnqueued(Batch& b) {
  std::vector<char> queued(b.tasks.size(), 0);
  for (const auto& [name, pool] : pools) {
    for (const Queue& q : pool.queues) {
      if (q.batch.get() != &b) continue;
      for (int t : q.tasks) queued[t] = 1;
    }
  }
  std::vector<int> unanswered;
  {
    std::lock_guard<std::mutex> lock(b.mu);
    for (size_t t = 0; t < b.tasks.size(); ++t) {
      if (!queued[t] && b.results[t].status.ok() && b.results[t].command_tag.empty()) {
        unanswered.push_back(static_cast<int>(t));
      }
    }
  }
  for (int t : unanswered) FailOutOfMemory(b, t);
}

void SharedPool::Loop::FailOutOfMemory(Batch& b, int t) {
  // No allocation on this path: the status is made once.
  static const absl::Status* const kOutOfMemory = new absl::Status(
      absl::ResourceExhaustedError("the connthrottle shared pool ran out of memory for this task"));
  FailTask(b, t, *kOutOfMemory, "53200");  // out_of_memory
}

// The session gave up on `b`: its queued tasks are dropped, its running
// ones cancelled; their connections are drained back to idle.
void SharedPool::Loop::Cancel(Batch& b) {
  for (auto& [name, pool] : pools) {
    Rotate(pool);
    for (const Queue& q : pool.queues) {
      if (q.batch.get() != &b) continue;
      pool.queued -= static_cast<int>(q.tasks.size());
      stats.tasks_cancelled += static_cast<int64_t>(q.tasks.size());
    }
    std::erase_if(pool.queues, [&](const Queue& q) { return q.batch.get() == &b; });
    for (auto& conn : pool.conns) {
      if (conn->batch.get() != &b || conn->cancelling) continue;
      SendCancel(conn->c->pg);
      conn->cancelling = true;
      ++stats.tasks_cancelled;
    }
  }
}

void SharedPool::Loop::Service(Pool& pool, absl::Time now) {
  pool.waited += (now - pool.waited_at) * pool.queued;
  pool.waited_at = now;
  if (pool.queued == 0) {
    pool.k = 1;
    ExpireIdle(pool, now);
  }
  if (now >= pool.next_yield_check) {
    pool.next_yield_check = now + kYieldCheckInterval;
    ShrinkToLimit(pool);
    if (pool.queued == 0) YieldToWaiters(pool);
  }
  Dispatch(pool, now);
  // Broken connections give their slots back before the pool tries for
  // new ones.
  Reap(pool);
  Grow(pool, now);
  Reap(pool);
  // How long the pool has had tasks queued and no connection at all.
  // A connection pinned to a COPY serves none of the pool's tasks. While
  // the worker refuses the pool's connections for lack of a slot, one
  // still connecting does not count either: each retry would otherwise
  // restart the wait.
  const bool refused = pool.refused_backoff > absl::ZeroDuration();
  const bool served =
      refused ? std::any_of(pool.conns.begin(), pool.conns.end(),
                            [](const auto& c) {
                              return c->copy == nullptr &&
                                     (c->c->state == State::kIdle || c->c->state == State::kBusy);
                            })
              : TaskConnections(pool) > 0;
  if (pool.queued == 0 || served) {
    pool.starving_since = absl::InfiniteFuture();
  } else {
    if (pool.starving_since == absl::InfiniteFuture()) pool.starving_since = now;
    FailStarved(pool, now);
  }
}

// When the loop must turn without an event: a retry or the next
// slow-start interval of a pool with queued tasks, a starving queue's wait
// timeout, a connect timeout, an idle connection's timeout and the
// interval at which idle ones look for waiters to yield to.
absl::Time SharedPool::Loop::NextWake(absl::Time now) const {
  // Without an eventfd (none could be made) new work is found by polling.
  absl::Time wake = now + (sp.wake_fd_ >= 0 ? absl::Seconds(1) : absl::Milliseconds(5));
  const SharedPoolOptions& opt = options;
  for (const CopyRun& run : copies) {
    if (!run.waiting) continue;
    const absl::Duration timeout =
        run.copy->request.slot_wait_timeout.value_or(opt.slot_wait_timeout);
    wake = std::min({wake, now + opt.slow_start_interval, *run.wait_began + timeout});
  }
  for (const auto& [name, pool] : pools) {
    if (pool.queued > 0) {
      const int live = LiveConnections(pool);
      if (TaskConnections(pool) == 0) {
        wake = std::min(wake, std::max(pool.retry_at, now));
        for (const Queue& q : pool.queues) wake = std::min(wake, StarvedAt(pool, q));
      } else if (live < opt.max_pool_size) {
        wake = std::min(
            wake, std::max({pool.retry_at, pool.interval_start + opt.slow_start_interval, now}));
      }
    }
    for (const auto& conn : pool.conns) {
      const Connection& c = *conn->c;
      if (c.state == State::kConnecting) {
        wake = std::min(wake, c.connect_started + opt.connect_timeout);
      } else if (c.state == State::kIdle && pool.queued == 0) {
        wake = std::min({wake, conn->idle_since + opt.idle_timeout, now + opt.slow_start_interval});
      }
    }
  }
  return wake;
}

// Sleeps until a connection's socket, the wake-up eventfd (a new batch, a
// cancel, new options, the end) or NextWake, then handles what happened.
// Idle connections are watched too: a worker closing one is seen at once.
void SharedPool::Loop::WaitForEvents(absl::Time now) {
  // Kept between turns: the loop turns once per event.
  std::vector<pollfd>& fds = poll_fds;
  std::vector<std::pair<Pool*, Conn*>>& owners = poll_owners;
  fds.assign({{sp.wake_fd_, POLLIN, 0}, {sp.external_.fd, POLLIN, 0}});
  owners.assign(2, {nullptr, nullptr});
  const size_t first_conn = fds.size();  // poll ignores a negative descriptor
  for (auto& [name, pool] : pools) {
    for (auto& conn : pool.conns) {
      const Connection& c = *conn->c;
      const short events = c.state == State::kIdle ? POLLIN : AwaitedEvents(c);
      if (events == 0) continue;
      fds.push_back({PQsocket(c.pg), events, 0});
      owners.emplace_back(&pool, conn.get());
    }
  }
  const absl::Duration wait = NextWake(now) - absl::Now();
  if (wait > absl::Milliseconds(1) && published_at < now) Publish(now);
  const int timeout_ms =
      static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(wait) + 1));
  if (poll(fds.data(), fds.size(), timeout_ms) < 0) {
    // EINTR, or a failure (ENOMEM) that a short pause may outlast.
    // The descriptors are level-triggered: what is readable now, the next
    // poll reports.
    if (errno != EINTR) absl::SleepFor(absl::Milliseconds(1));
    return;
  }
  inbox_ready = sp.wake_fd_ < 0 || fds[0].revents != 0;
  external_ready = fds[1].revents != 0;
  const absl::Time after = absl::Now();
  for (size_t i = first_conn; i < fds.size(); ++i) {
    auto [pool, conn] = owners[i];
    try {
      HandleEvent(*pool, *conn, fds[i].revents, after);
    } catch (const std::bad_alloc&) {
      OutOfMemory(*conn);
    }
  }
}

void SharedPool::Loop::HandleEvent(Pool& pool, Conn& conn, short revents, absl::Time now) {
  Connection& c = *conn.c;
  const SharedPoolOptions& opt = options;
  if (c.state == State::kConnecting) {
    if (revents != 0) {
      Connecting(pool, conn, now);
    } else if (now - c.connect_started > opt.connect_timeout) {
      ConnectFailed(pool, conn, ConnectError{ConnectTimedOut(opt.connect_timeout), ""}, now);
    }
  } else if (conn.copy != nullptr) {
    CopyEvent(conn, revents, now);
  } else if (c.state == State::kBusy) {
    if (!FlushWhenWritable(c, revents)) {
      Lost(pool, conn, Trim(PQerrorMessage(c.pg)));
    } else if (ResultsReadable(revents)) {
      ReadResults(pool, conn, now);
    }
  } else if (c.state == State::kIdle && revents != 0) {
    IdleReadable(conn);
  }
}

void SharedPool::Loop::Shutdown() {
  const absl::Status gone = absl::UnavailableError("the connthrottle shared pool shut down");
  std::vector<std::unique_ptr<Connection>> closing;
  ShutdownCopies();
  for (auto& [name, pool] : pools) {
    FailQueued(pool, gone, "08006");
    for (auto& conn : pool.conns) {
      if (conn->c->state == State::kBusy) {
        SendCancel(conn->c->pg);
        if (conn->batch != nullptr && !conn->cancelling) {
          FailTask(*conn->batch, conn->task, gone, "08006");
        }
      }
      Uncount(*conn);
      closing.push_back(std::move(conn->c));
    }
  }
  pools.clear();
  CloseAll(std::move(closing));
  std::vector<std::shared_ptr<Batch>> late;
  std::vector<std::shared_ptr<Copy>> late_copies;
  {
    std::lock_guard<std::mutex> lock(sp.mu_);
    late.swap(sp.submitted_);
    late_copies.swap(sp.copies_);
  }
  for (auto& copy : late_copies) {
    {
      std::lock_guard<std::mutex> lock(copy->mu);
      if (copy->over) continue;
      copy->over = true;
      copy->status = gone;
      copy->sqlstate = "08006";
      copy->done = copy->asked;
    }
    copy->Notify();
  }
  for (auto& b : late) {
    {
      std::lock_guard<std::mutex> lock(b->mu);
      b->pool_gone = true;
    }
    b->Notify();
  }
}

void SharedPool::Loop::Publish(absl::Time now) {
  published_at = now;
  stats.copies_open = static_cast<int64_t>(copies.size());
  stats.copy_connections = 0;
  for (const CopyRun& run : copies) {
    for (const CopyTarget& t : run.targets) stats.copy_connections += t.conn != nullptr ? 1 : 0;
  }
  std::map<NodeAddress, int> connections, queued, idle;
  for (const auto& [name, pool] : pools) {
    const int live = LiveConnections(pool);
    if (live > 0) connections[pool.node] += live;
    if (pool.queued > 0) queued[pool.node] += pool.queued;
    const int resting =
        static_cast<int>(std::count_if(pool.conns.begin(), pool.conns.end(), [](const auto& c) {
          return c->c->state == State::kIdle && c->copy == nullptr;
        }));
    if (resting > 0) idle[pool.node] += resting;
  }
  std::lock_guard<std::mutex> lock(sp.mu_);
  sp.stats_ = stats;
  sp.connections_ = std::move(connections);
  sp.queued_ = std::move(queued);
  sp.idle_ = std::move(idle);
}

}  // namespace connthrottle
