// shared_pool.cc — the SharedPool's event loop and the transport that feeds
// it. The header explains the policy; the comments here explain the steps.
//
// Ownership: a Batch (one Execute's tasks) is shared by its session and the
// loop. The session writes it before submitting and then reads only under
// Batch::mu; the loop reads the tasks and writes results under Batch::mu.
// Everything else of the loop (pools, connections, their results while they
// are being read) belongs to the loop's thread alone.

#include "connthrottle/executor/shared_pool.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "executor/connection.h"

namespace connthrottle {

using Connection = AdaptiveExecutor::Connection;
using State = AdaptiveExecutor::Connection::State;

struct SharedPool::Batch {
  // Written by the session before Submit; read-only afterwards.
  std::vector<Task> tasks;
  std::vector<ConnParams> params;  // per task
  std::vector<char> local;         // per task: its node is this coordinator
  uint32_t database_id = 0;
  int64_t max_rows_kept = -1;
  std::optional<absl::Duration> slot_wait_timeout;  // the session's own, if it gave one
  absl::Time submitted;

  // Set by the session when it gives up on the batch; the loop then drops
  // the batch's queued tasks and cancels its running ones.
  std::atomic<bool> cancelled{false};

  // std::mutex, not absl::Mutex: ThreadSanitizer sees through the former
  // only (the system's Abseil is not built with it).
  std::mutex mu;
  std::condition_variable changed;  // a result, a hand-back, the pool gone
  std::vector<TaskResult> results ABSL_GUARDED_BY(mu);
  std::vector<int> handed_back ABSL_GUARDED_BY(mu);  // local failover: run in-process
  int handed_back_total ABSL_GUARDED_BY(mu) = 0;     // every task ever handed back
  int remaining ABSL_GUARDED_BY(mu) = 0;             // tasks without a result yet
  int retried ABSL_GUARDED_BY(mu) = 0;
  bool pool_gone ABSL_GUARDED_BY(mu) = false;  // the pool shut down

  // Bytes of its settled results, counted in `*held_total` (the pool's
  // figure) until the session takes them or drops the batch.
  int64_t held_bytes ABSL_GUARDED_BY(mu) = 0;
  std::shared_ptr<std::atomic<int64_t>> held_total;

  // Called after each change, on the thread that made it, with no lock held.
  std::function<void()> on_change;

  ~Batch() {
    if (held_total) held_total->fetch_sub(held_bytes);
  }

  bool Settled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return remaining == handed_back_total || pool_gone;
  }
  void Notify() {
    changed.notify_all();
    if (on_change) on_change();
  }
};

namespace {

// Sets the task's result and wakes the session when it was the last.
// `bytes` of the result are counted in the pool's held figure already; from
// here the batch gives them back.
void Finish(SharedPool::Batch& b, int t, TaskResult result, int64_t bytes = 0) {
  result.node = b.tasks[t].node;
  bool last;
  {
    std::lock_guard<std::mutex> lock(b.mu);
    b.results[t] = std::move(result);
    b.held_bytes += bytes;
    --b.remaining;
    last = b.Settled();
  }
  if (last) b.Notify();
}

void Fail(SharedPool::Batch& b, int t, absl::Status status, const char* sqlstate) {
  TaskResult r;
  r.status = std::move(status);
  r.sqlstate = sqlstate;
  Finish(b, t, std::move(r));
}

void SendCancel(PGconn* pg) {
  // PG 15 has only the blocking cancel: one short connection to the
  // worker's postmaster, on loopback about a millisecond.
  if (PGcancel* cancel = PQgetCancel(pg)) {
    char error[256];
    PQcancel(cancel, error, sizeof(error));
    PQfreeCancel(cancel);
  }
}

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

}  // namespace

// How often a pool with idle connections looks for others waiting for its
// node's slots.
constexpr absl::Duration kYieldCheckInterval = absl::Milliseconds(25);

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

// Texts a pool remembers as needing the simple protocol, at most (then it
// starts afresh).
constexpr size_t kMaxSimpleOnly = 512;

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

struct SharedPool::Loop {
  // What a busy connection is waiting for: its task's results, the Sync
  // after them (pipelined), the reset's results, the Sync after those
  // (pipelined).
  enum class Step { kTask, kTaskSync, kReset, kResetSync };

  struct Pool;

  struct Conn {
    std::unique_ptr<Connection> c;
    std::shared_ptr<Batch> batch;  // whose task it runs while busy with one
    int task = -1;
    Step step = Step::kTask;
    TaskResult result;         // the running task's result, as it is read
    int64_t result_bytes = 0;  // of `result`, counted in the pool's held figure
    bool cancelling = false;   // its task was cancelled or failed: read and drop until idle
    bool reset_ok = false;     // its DISCARD ALL succeeded
    bool pipelined = false;    // task and reset went in one pipeline
    bool run_simple = false;   // the pipelined task had several statements: run it again
    Pool* give_to = nullptr;   // closed for this pool of the same key: its slot goes there
    absl::Time idle_since;
    absl::Time sent;
  };

  // One session's tasks queued for one pool.
  struct Queue {
    std::shared_ptr<Batch> batch;
    std::deque<int> tasks;
  };

  struct Pool {
    NodeAddress node;
    std::optional<NodeKey> key;
    std::string key_name;  // the counter table's key: pools with the same share its slots
    ConnParams params;
    bool local = false;
    // The round-robin over sessions. After a session is served it stays at
    // the front, marked, until the next pick moves it to the back: a session
    // that arrives meanwhile is then served before it again.
    std::deque<Queue> queues;
    bool front_served = false;
    int queued = 0;
    std::vector<std::unique_ptr<Conn>> conns;
    // Slow start: at most k new connections per interval, k += 1 each
    // interval while tasks stay queued.
    int k = 1;
    absl::Time interval_start;
    int opened_in_interval = 0;
    absl::Time retry_at;                                 // after a refused slot: the next interval
    absl::Time starving_since = absl::InfiniteFuture();  // tasks queued, no connection
    absl::Time next_yield_check;  // when to look for waiters to yield idle connections to
    // Its last try for one more connection was refused: no slot was free.
    bool wants_slot = false;
    // Set by Rebalance each turn: the most connections it may grow to while
    // another pool of its key is below its fair share, and how many it is to
    // give back as tasks end for such a pool.
    int share = std::numeric_limits<int>::max();
    int surplus = 0;
    Pool* surplus_to = nullptr;  // the pool below its share that gets them
    // Cost model. A pooled connection lives long, so what it costs (a
    // connect, a worker backend) is weighed against the waiting it saves
    // over time: the integral of the queue's length since the pool last
    // grew, i.e. the task-time spent queued.
    absl::Duration waited;
    absl::Time waited_at;  // when `waited` was last brought up to date
    absl::Duration connect_time_total;
    int64_t connects_done = 0;
    // Task texts of several statements: they take the simple protocol.
    absl::flat_hash_set<std::string> simple_only;
  };

  explicit Loop(SharedPool& pool) : sp(pool), options(pool.options_) {}

  SharedPool& sp;
  SharedPoolOptions options;  // as of the last turn (set_options)
  uint64_t options_version = 0;
  std::map<std::string, Pool> pools;
  std::vector<std::vector<Pool*>> shared_keys;  // see Regroup
  bool regroup = false;                         // pools came or went since
  SharedPoolStats stats;
  int next_connection_id = 0;
  absl::Time published_at = absl::InfinitePast();

  // ---- the loop ----

  void Run() {
    while (TakeInbox()) {
      const absl::Time now = absl::Now();
      // Each step stands alone: an allocation failure in one (its tasks
      // failed where they could be told) must not end the loop, which every
      // session depends on.
      Guarded([&] { Rebalance(); });
      for (auto& [name, pool] : pools) Guarded([&] { Service(pool, now); });
      regroup |= std::erase_if(pools, [](const auto& p) {
                   return p.second.conns.empty() && p.second.queues.empty();
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

  template <typename Body>
  void Guarded(Body body) {
    try {
      body();
    } catch (const std::bad_alloc&) {
      ++stats.out_of_memory;
    }
  }

  // New batches and cancels; false when the pool is stopping.
  bool TakeInbox() {
    uint64_t count;
    while (read(sp.wake_fd_, &count, sizeof(count)) > 0) {
    }
    std::vector<std::shared_ptr<Batch>> submitted, cancelled;
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(sp.mu_);
      submitted.swap(sp.submitted_);
      cancelled.swap(sp.cancelled_);
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
    return !stopping;
  }

  void Enqueue(const std::shared_ptr<Batch>& b) {
    if (b->cancelled.load()) return;
    const absl::Time now = absl::Now();
    std::map<Pool*, std::deque<int>> per_pool;
    for (int t = 0; t < static_cast<int>(b->tasks.size()); ++t) {
      const Task& task = b->tasks[t];
      absl::StatusOr<NodeKey> key = NodeKey::Create(task.node.host, task.node.port, b->database_id);
      if (!key.ok()) {
        Fail(*b, t, key.status(), "22023");  // invalid_parameter_value
        continue;
      }
      Pool& pool = pools[PoolName(task.node, b->database_id, b->params[t])];
      if (!pool.key) {
        regroup = true;
        pool.node = task.node;
        pool.key = *key;
        pool.key_name = absl::StrCat(task.node.host, ":", task.node.port, "/", b->database_id);
        pool.params = b->params[t];
        pool.local = b->local[t] != 0;
        pool.interval_start = now;
        pool.waited_at = now;
      }
      per_pool[&pool].push_back(t);
    }
    for (auto& [pool, tasks] : per_pool) {
      pool->queued += static_cast<int>(tasks.size());
      pool->queues.push_back({b, std::move(tasks)});
    }
  }

  // Enqueue ran out of memory: the batch's tasks that no pool queued fail.
  void FailUnqueued(Batch& b) {
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

  static void FailOutOfMemory(Batch& b, int t) {
    // No allocation on this path: the status is made once.
    static const absl::Status* const kOutOfMemory = new absl::Status(absl::ResourceExhaustedError(
        "the connthrottle shared pool ran out of memory for this task"));
    Fail(b, t, *kOutOfMemory, "53200");  // out_of_memory
  }

  // The session gave up on `b`: its queued tasks are dropped, its running
  // ones cancelled; their connections are drained back to idle.
  void Cancel(Batch& b) {
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

  void Service(Pool& pool, absl::Time now) {
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
    if (pool.queued == 0 || LiveConnections(pool) > 0) {
      pool.starving_since = absl::InfiniteFuture();
    } else {
      if (pool.starving_since == absl::InfiniteFuture()) pool.starving_since = now;
      FailStarved(pool, now);
    }
  }

  // ---- the queue ----

  // Moves the session served last to the back of the round-robin.
  static void Rotate(Pool& pool) {
    if (!pool.front_served) return;
    pool.front_served = false;
    pool.queues.push_back(std::move(pool.queues.front()));
    pool.queues.pop_front();
  }

  // The next task in the round-robin over the pool's sessions.
  std::pair<std::shared_ptr<Batch>, int> NextTask(Pool& pool) {
    Rotate(pool);
    while (!pool.queues.empty()) {
      Queue& q = pool.queues.front();
      if (q.batch->cancelled.load()) {  // its cancel is on its way
        pool.queued -= static_cast<int>(q.tasks.size());
        stats.tasks_cancelled += static_cast<int64_t>(q.tasks.size());
        pool.queues.pop_front();
        continue;
      }
      const int t = q.tasks.front();
      q.tasks.pop_front();
      --pool.queued;
      std::shared_ptr<Batch> b = q.batch;
      if (q.tasks.empty()) {
        pool.queues.pop_front();
      } else {
        pool.front_served = true;
      }
      return {std::move(b), t};
    }
    return {nullptr, -1};
  }

  // A task that was never sent goes back to the head of the queue.
  void Requeue(Pool& pool, std::shared_ptr<Batch> b, int t) {
    Rotate(pool);
    ++stats.tasks_retried;
    {
      std::lock_guard<std::mutex> lock(b->mu);
      ++b->retried;
    }
    pool.queues.push_front({std::move(b), {t}});
    ++pool.queued;
  }

  void FailQueued(Pool& pool, const absl::Status& why, const char* sqlstate) {
    while (true) {
      auto [b, t] = NextTask(pool);
      if (b == nullptr) break;
      Fail(*b, t, why, sqlstate);
    }
  }

  // How long `b`'s tasks may wait while their pool has no connection: the
  // session's own connection_wait_timeout when it sent one.
  absl::Duration WaitTimeoutOf(const Batch& b) const {
    return b.slot_wait_timeout.value_or(options.slot_wait_timeout);
  }

  // When `q`'s tasks fail with 53300 if the pool still has no connection.
  absl::Time StarvedAt(const Pool& pool, const Queue& q) const {
    return std::max(pool.starving_since, q.batch->submitted) + WaitTimeoutOf(*q.batch);
  }

  // The pool has had no connection since starving_since: the executions
  // that have waited their own wait timeout since then fail with 53300.
  void FailStarved(Pool& pool, absl::Time now) {
    Rotate(pool);
    for (auto it = pool.queues.begin(); it != pool.queues.end();) {
      if (now < StarvedAt(pool, *it)) {
        ++it;
        continue;
      }
      const absl::Status why = absl::ResourceExhaustedError(
          absl::StrCat("no connection slot to node ", pool.node.ToString(), " became free within ",
                       absl::FormatDuration(WaitTimeoutOf(*it->batch)), " (its wait timeout; ",
                       sp.limit_(pool.node, pool.local).ToString(), ")"));
      for (int t : it->tasks) Fail(*it->batch, t, why, "53300");  // too_many_connections
      pool.queued -= static_cast<int>(it->tasks.size());
      it = pool.queues.erase(it);
    }
  }

  // Local failover: the queued tasks go back to their sessions to run
  // in-process; those that may not run locally fail.
  void HandBack(Pool& pool) {
    while (true) {
      auto [b, t] = NextTask(pool);
      if (b == nullptr) break;
      if (!b->tasks[t].allow_local) {
        Fail(*b, t,
             absl::UnavailableError(
                 absl::StrCat("no connection to the local node ", pool.node.ToString(),
                              " is allowed now and the task may not run locally")),
             "53300");  // too_many_connections
        continue;
      }
      ++stats.tasks_handed_back;
      {
        std::lock_guard<std::mutex> lock(b->mu);
        b->handed_back.push_back(t);
        ++b->handed_back_total;
      }
      b->Notify();
    }
  }

  // ---- sharing a node's slots between pools ----

  // Pools of one key (the same node and database: other roles, other
  // connection parameters) take slots from one counter. With k of them
  // busy, a pool's fair share is limit / k connections (at least one, at
  // most its cap). While a pool with queued tasks is below its share,
  // no pool grows beyond the share, and the pools above limit / k close one connection each as a
  // task ends (`surplus`), its slot going to the pool furthest below its share (Reap). Idle
  // connections of pools with nothing queued go at once, slot and all, to any pool refused a slot,
  // below its share or not: a slot that serves nobody is wasted.
  void Rebalance() {
    if (regroup) Regroup();
    for (const std::vector<Pool*>& group : shared_keys) {
      for (Pool* p : group) {
        p->surplus = 0;
        p->surplus_to = nullptr;
        p->share = std::numeric_limits<int>::max();
      }
      const Limit limit = sp.limit_(group.front()->node, group.front()->local);
      if (limit.unlimited()) continue;
      const int busy = static_cast<int>(
          std::count_if(group.begin(), group.end(), [](const Pool* p) { return Busy(*p); }));
      if (busy == 0) continue;
      const int fair = static_cast<int>(limit.max()) / busy;
      const int share = std::min(std::max(fair, 1), options.max_pool_size);
      Pool* neediest = nullptr;  // the pool with queued tasks furthest below its share
      int neediest_live = share;
      for (Pool* p : group) {
        const int live = LiveConnections(*p);
        if (p->queued > 0 && live < neediest_live) {
          neediest = p;
          neediest_live = live;
        }
        if (!p->wants_slot || live >= options.max_pool_size) continue;
        if (Conn* idle = LongestIdle(group, p)) {
          idle->c->state = State::kBroken;
          idle->give_to = p;
          p->wants_slot = false;  // one per refusal: asked again if still refused
          ++stats.closed_for_pools;
        }
      }
      for (Pool* p : group) Reap(*p);
      if (neediest == nullptr) continue;
      // One connection at a time from the pool that has most to the
      // neediest, while that levels them (a difference of two or more) and
      // the neediest is below its share: the node's other holders (direct
      // sessions, COPY) may leave the pools less than limit / k each, and
      // a handed-over slot costs a new connection, so no more moves than
      // that.
      int needy = LiveConnections(*neediest);
      for (Pool* p : group) p->share = share;
      while (needy < share) {
        Pool* donor = nullptr;
        int most = needy + 1;
        for (Pool* p : group) {
          const int left = LiveConnections(*p) - p->surplus;
          if (p != neediest && left > most) {
            donor = p;
            most = left;
          }
        }
        if (donor == nullptr) break;
        ++donor->surplus;
        donor->surplus_to = neediest;
        ++needy;
      }
    }
  }

  // The pools that share a key with others, by key; made again only when
  // pools come or go (a pool's address in `pools` is stable).
  void Regroup() {
    regroup = false;
    absl::flat_hash_map<absl::string_view, std::vector<Pool*>> by_key;
    for (auto& [name, pool] : pools) by_key[pool.key_name].push_back(&pool);
    shared_keys.clear();
    for (auto& [key, group] : by_key) {
      if (group.size() > 1) shared_keys.push_back(std::move(group));
    }
  }

  static bool Busy(const Pool& pool) {
    if (pool.queued > 0 || pool.wants_slot) return true;
    return std::any_of(pool.conns.begin(), pool.conns.end(),
                       [](const auto& conn) { return conn->c->state == State::kBusy; });
  }

  // The connection that has been idle longest in the pools of `group` with
  // nothing queued, `except` aside; null if none.
  static Conn* LongestIdle(const std::vector<Pool*>& group, const Pool* except) {
    Conn* best = nullptr;
    for (Pool* p : group) {
      // Its queued tasks take its idle connections in this turn.
      if (p == except || p->queued > 0) continue;
      for (auto& conn : p->conns) {
        if (conn->c->state != State::kIdle) continue;
        if (best == nullptr || conn->idle_since < best->idle_since) best = conn.get();
      }
    }
    return best;
  }

  // ---- connections ----

  static int LiveConnections(const Pool& pool) {
    return static_cast<int>(std::count_if(pool.conns.begin(), pool.conns.end(), [](const auto& c) {
      return c->c->state != State::kBroken;
    }));
  }

  void Grow(Pool& pool, absl::Time now) {
    if (pool.queued == 0) {
      pool.wants_slot = false;
      return;
    }
    if (now < pool.retry_at) return;
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

  void StartConnect(Pool& pool, Slot slot, absl::Time now) {
    auto conn = std::make_unique<Conn>();
    conn->c = std::make_unique<Connection>();
    Connection& c = *conn->c;
    c.id = next_connection_id++;
    c.node = pool.node;
    c.slot = std::move(slot);
    c.connect_started = now;
    ++stats.connections_started;
    c.pg = PQconnectStartParams(pool.params.keywords(), pool.params.values(), /*expand_dbname=*/0);
    if (c.pg == nullptr || PQstatus(c.pg) == CONNECTION_BAD) {
      std::string why = c.pg != nullptr ? Trim(PQerrorMessage(c.pg)) : "out of memory";
      c.state = State::kBroken;
      pool.conns.push_back(std::move(conn));
      ConnectFailed(pool, why);
      return;
    }
    QuietNotices(c.pg);
    c.state = State::kConnecting;
    c.poll = PGRES_POLLING_WRITING;
    pool.conns.push_back(std::move(conn));
  }

  void Connecting(Pool& pool, Conn& conn, absl::Time now) {
    Connection& c = *conn.c;
    c.poll = PQconnectPoll(c.pg);
    if (c.poll == PGRES_POLLING_FAILED) {
      c.state = State::kBroken;
      ConnectFailed(pool, Trim(PQerrorMessage(c.pg)));
      return;
    }
    if (c.poll != PGRES_POLLING_OK) return;
    PQsetnonblocking(c.pg, 1);
    c.state = State::kIdle;
    c.ready = now;
    conn.idle_since = now;
    pool.connect_time_total += now - c.connect_started;
    ++pool.connects_done;
    ++stats.connections_opened;
  }

  // A connection attempt failed. With no other connection left, the pool's
  // queued tasks fail (or, for the local node, run in-process).
  void ConnectFailed(Pool& pool, const std::string& why) {
    ++stats.connections_failed;
    if (LiveConnections(pool) > 0 || pool.queued == 0) return;
    if (pool.local) {
      HandBack(pool);
      return;
    }
    FailQueued(pool,
               absl::UnavailableError(
                   absl::StrCat("could not connect to node ", pool.node.ToString(), ": ", why)),
               "08001");  // sqlclient_unable_to_establish_sqlconnection
  }

  void ExpireIdle(Pool& pool, absl::Time now) {
    for (auto& conn : pool.conns) {
      if (conn->c->state == State::kIdle && now - conn->idle_since >= options.idle_timeout) {
        conn->c->state = State::kBroken;
        ++stats.closed_idle;
      }
    }
  }

  // How many connections the node has above its limit (the limit was
  // lowered): the pool closes that many as they become idle. Forced
  // connections are not the pool's to make up for. Slots are given back
  // as soon as a pool's closed connections are reaped (each Service), so
  // the next pool of the same key sees the count already lowered.
  int OverLimit(const Pool& pool) {
    const Limit limit = sp.limit_(pool.node, pool.local);
    if (limit.unlimited()) return 0;
    const std::optional<KeyStats> key = sp.owner_.table().LookupCounts(*pool.key);
    if (!key) return 0;
    return static_cast<int>(key->connections - key->forced) - static_cast<int>(limit.max());
  }

  // Closes up to `n` idle connections, counting each in `closed`.
  static void CloseIdle(Pool& pool, int n, int64_t& closed) {
    for (auto& conn : pool.conns) {
      if (n <= 0) break;
      if (conn->c->state != State::kIdle) continue;
      conn->c->state = State::kBroken;
      ++closed;
      --n;
    }
  }

  void ShrinkToLimit(Pool& pool) { CloseIdle(pool, OverLimit(pool), stats.closed_over_limit); }

  // How many others queue for a slot of this node (sessions of the direct
  // transport, COPY's reservations) that no free slot serves: a slot given
  // back a moment ago and not yet taken serves one.
  int UnservedWaiters(const Pool& pool) {
    const std::optional<KeyStats> key = sp.owner_.table().LookupCounts(*pool.key);
    if (!key || key->waiters == 0) return 0;
    const Limit limit = sp.limit_(pool.node, pool.local);
    if (limit.unlimited()) return 0;
    const int free =
        std::max(0, static_cast<int>(limit.max()) - static_cast<int>(key->connections));
    return std::max(0, static_cast<int>(key->waiters) - free);
  }

  // While others wait for the node, the pool gives back one idle connection
  // per unserved waiter: it can open one again later, a waiter cannot run
  // until it gets a slot.
  void YieldToWaiters(Pool& pool) {
    if (std::none_of(pool.conns.begin(), pool.conns.end(),
                     [](const auto& conn) { return conn->c->state == State::kIdle; })) {
      return;
    }
    CloseIdle(pool, UnservedWaiters(pool), stats.closed_for_waiters);
  }

  void Reap(Pool& pool) {
    std::vector<std::unique_ptr<Connection>> closing;
    std::vector<std::pair<Pool*, Slot>> handed;
    for (auto& conn : pool.conns) {
      if (conn->c->state == State::kBroken) {
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
      ++to->opened_in_interval;
      to->waited = absl::ZeroDuration();
      StartConnect(*to, std::move(slot), absl::Now());
    }
  }

  // ---- running tasks ----

  void Dispatch(Pool& pool, absl::Time now) {
    for (auto& conn : pool.conns) {
      if (pool.queued == 0) return;
      if (conn->c->state != State::kIdle) continue;
      if (IdleConnectionIsDead(conn->c->pg)) {
        conn->c->state = State::kBroken;
        ++stats.closed_dead;
        continue;
      }
      auto [b, t] = NextTask(pool);
      if (b == nullptr) return;
      Send(pool, *conn, std::move(b), t, now);
    }
  }

  void Send(Pool& pool, Conn& conn, std::shared_ptr<Batch> b, int t, absl::Time now) {
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
      c.state = State::kBroken;
      ++stats.closed_dead;
      Requeue(pool, std::move(b), t);
      return;
    }
    conn.batch = std::move(b);
    conn.task = t;
  }

  // The task and the reset after it, in one pipeline.
  static bool SendPipelined(Conn& conn, const std::string& sql, int64_t max_rows_kept) {
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
  static bool SendSimple(Conn& conn, const std::string& sql, int64_t max_rows_kept) {
    PGconn* pg = conn.c->pg;
    conn.step = Step::kTask;
    if (!PQsendQuery(pg, sql.c_str())) return false;
    if (max_rows_kept >= 0) PQsetSingleRowMode(pg);
    return true;
  }

  static bool HasParameterSymbol(absl::string_view sql) {
    for (size_t i = sql.find('$'); i != absl::string_view::npos; i = sql.find('$', i + 1)) {
      if (i + 1 < sql.size() && absl::ascii_isdigit(static_cast<unsigned char>(sql[i + 1]))) {
        return true;
      }
    }
    return false;
  }

  // Whether `res` is an error that ends the worker's backend (FATAL, PANIC).
  static bool BackendEnding(const PGresult* res) {
    const char* severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return severity != nullptr &&
           (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
  }

  // Whether `res` is the extended protocol refusing a text of several
  // statements at Parse (before any of it ran).
  static bool SeveralStatements(const PGresult* res) {
    const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == nullptr || strcmp(state, "42601") != 0) return false;
    const char* routine = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
    if (routine != nullptr) return strcmp(routine, "exec_parse_message") == 0;
    const char* message = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return message != nullptr &&
           strcmp(message, "cannot insert multiple commands into a prepared statement") == 0;
  }

  // Flushes what was just sent (if it was): the connection is busy with it,
  // or false when it could not be sent.
  static bool Flush(Connection& c, bool sent) {
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
  void FinishTask(Conn& conn, absl::Time now) {
    if (!conn.cancelling) {
      conn.result.run = now - conn.sent;
      ++stats.tasks_run;
      const int64_t bytes = std::exchange(conn.result_bytes, 0);
      Finish(*conn.batch, conn.task, std::move(conn.result), bytes);
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
  void SendReset(Conn& conn, absl::Time now) {
    Connection& c = *conn.c;
    if (PQtransactionStatus(c.pg) != PQTRANS_IDLE) {
      c.state = State::kBroken;
      ++stats.closed_in_transaction;
      return;
    }
    conn.step = Step::kReset;
    conn.reset_ok = false;
    conn.sent = now;
    if (!Flush(c, PQsendQuery(c.pg, kResetSql) != 0)) {
      c.state = State::kBroken;
      ++stats.closed_dead;
    }
  }

  // Its reset done, the connection becomes idle, or is closed.
  void Release(Pool& pool, Conn& conn, absl::Time now) {
    Connection& c = *conn.c;
    conn.idle_since = now;
    if (PQtransactionStatus(c.pg) != PQTRANS_IDLE) {
      // The task left a transaction open (its pipelined reset failed in it).
      c.state = State::kBroken;
      ++stats.closed_in_transaction;
      return;
    }
    if (!conn.reset_ok) {
      // Whatever the task left behind could not be undone.
      c.state = State::kBroken;
      ++stats.closed_reset_failed;
      return;
    }
    ++stats.resets;
    if (OverLimit(pool) > 0) {
      c.state = State::kBroken;
      ++stats.closed_over_limit;
    } else if (pool.surplus > 0) {
      // Another pool of the node is below its fair share: the slot is its.
      --pool.surplus;
      c.state = State::kBroken;
      conn.give_to = pool.surplus_to;
      ++stats.closed_for_pools;
    } else if (pool.queued > 0 && LiveConnections(pool) > 1 && UnservedWaiters(pool) > 0) {
      // A pool that always has work would otherwise keep its slots for ever
      // while others wait for the node: it gives one back as a task ends,
      // keeping at least one connection for its own queue.
      c.state = State::kBroken;
      ++stats.closed_for_waiters;
    } else {
      c.state = State::kIdle;
    }
  }

  // The bytes of the connection's result being read are no longer held.
  void Uncount(Conn& conn) {
    if (conn.result_bytes == 0) return;
    sp.held_->fetch_sub(conn.result_bytes);
    conn.result_bytes = 0;
  }

  // Counts `bytes` more of the running task's result: false (and nothing
  // counted) when they would take the pool beyond result_memory.
  bool Hold(Conn& conn, int64_t bytes) {
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
  void FailOverMemory(Pool& pool, Conn& conn) {
    ++stats.tasks_over_memory;
    conn.result = TaskResult{};
    Uncount(conn);
    SendCancel(conn.c->pg);
    conn.cancelling = true;
    Fail(*conn.batch, conn.task,
         absl::ResourceExhaustedError(absl::StrCat("node ", pool.node.ToString(),
                                                   ": the task's result would take the results the "
                                                   "shared pool holds beyond ",
                                                   options.result_memory_setting, " (",
                                                   options.result_memory, " bytes)")),
         "54000");  // program_limit_exceeded
  }

  void DropNotifications(PGconn* pg) {
    while (PGnotify* n = PQnotifies(pg)) {
      PQfreemem(n);
      ++stats.notifications_dropped;
    }
  }

  void ReadResults(Pool& pool, Conn& conn, absl::Time now) {
    Connection& c = *conn.c;
    if (!PQconsumeInput(c.pg)) {
      Lost(pool, conn, Trim(PQerrorMessage(c.pg)));
      return;
    }
    while (c.state == State::kBusy && !PQisBusy(c.pg)) {
      DropNotifications(c.pg);
      PGresult* res = PQgetResult(c.pg);
      if (res == nullptr) {
        if (!conn.pipelined) {
          Complete(pool, conn, now);
          return;
        }
        // Pipelined: one query's results end; its Sync follows.
        if (PQstatus(c.pg) == CONNECTION_BAD) {
          Lost(pool, conn,
               conn.result.status.ok() ? Trim(PQerrorMessage(c.pg))
                                       : std::string(conn.result.status.message()));
          return;
        }
        if (conn.step == Step::kTask && !conn.run_simple) FinishTask(conn, now);
        conn.step = conn.step == Step::kTask ? Step::kTaskSync : Step::kResetSync;
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
      if (conn.step == Step::kReset) {
        conn.reset_ok = status == PGRES_COMMAND_OK;
        PQclear(res);
        continue;
      }
      if (conn.step != Step::kTask) {  // nothing else is expected
        PQclear(res);
        continue;
      }
      if (conn.pipelined && BackendEnding(res)) {
        // As the simple protocol would find once the worker closes the
        // socket: the connection is lost (08006), whatever ended it.
        const std::string why = Trim(PQresultErrorMessage(res));
        PQclear(res);
        Lost(pool, conn, why);
        return;
      }
      if (conn.pipelined && status == PGRES_FATAL_ERROR && !c.task_got_result &&
          SeveralStatements(res)) {
        conn.run_simple = true;  // nothing of it ran
        PQclear(res);
        continue;
      }
      if (status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH) {
        PQclear(res);
        FailCopy(pool, conn, status);
        return;
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
    }
    DropNotifications(c.pg);
  }

  // A simple-protocol query's results are all in: the task's, or its
  // reset's.
  void Complete(Pool& pool, Conn& conn, absl::Time now) {
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
  void PipelineDone(Pool& pool, Conn& conn, absl::Time now) {
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
  void Lost(Pool& pool, Conn& conn, const std::string& why) {
    conn.c->state = State::kBroken;
    if (conn.step != Step::kTask) ++stats.closed_dead;
    if (conn.batch != nullptr && !conn.cancelling) {
      Fail(*conn.batch, conn.task,
           absl::UnavailableError(absl::StrCat("connection to node ", pool.node.ToString(),
                                               " was lost while running the task: ", why)),
           "08006");  // connection_failure
    }
    conn.batch = nullptr;
    conn.task = -1;
  }

  // A task entered COPY, which tasks cannot do: it fails with 0A000 and its
  // connection is closed (the worker's COPY stopped first).
  void FailCopy(Pool& pool, Conn& conn, ExecStatusType copy) {
    Connection& c = *conn.c;
    if (copy == PGRES_COPY_IN) {
      PQputCopyEnd(c.pg, "COPY FROM STDIN is not supported in connthrottle tasks");
      PQflush(c.pg);
    } else {
      SendCancel(c.pg);
    }
    c.state = State::kBroken;
    if (conn.batch != nullptr && !conn.cancelling) {
      const char* what = copy == PGRES_COPY_IN    ? "COPY FROM STDIN"
                         : copy == PGRES_COPY_OUT ? "COPY TO STDOUT"
                                                  : "COPY BOTH (replication)";
      Fail(*conn.batch, conn.task,
           absl::UnimplementedError(absl::StrCat("node ", pool.node.ToString(), ": ", what,
                                                 " is not supported in tasks; the connection "
                                                 "was closed")),
           "0A000");  // feature_not_supported
    }
    conn.batch = nullptr;
    conn.task = -1;
  }

  // An idle connection's socket turned readable: a notice, or the worker
  // closing it.
  void IdleReadable(Conn& conn) {
    PGconn* pg = conn.c->pg;
    if (!PQconsumeInput(pg) || PQstatus(pg) == CONNECTION_BAD) {
      conn.c->state = State::kBroken;
      ++stats.closed_dead;
      return;
    }
    DropNotifications(pg);
  }

  // A connection's event could not be handled for want of memory: its task
  // fails with 53200 and the connection is closed.
  void OutOfMemory(Conn& conn) {
    ++stats.out_of_memory;
    conn.c->state = State::kBroken;
    if (conn.batch != nullptr && !conn.cancelling) FailOutOfMemory(*conn.batch, conn.task);
    conn.batch = nullptr;
    conn.task = -1;
    conn.result = TaskResult{};
    Uncount(conn);
  }

  // ---- waiting ----

  void WaitForEvents(absl::Time now) {
    std::vector<pollfd> fds{{sp.wake_fd_, POLLIN, 0}};
    std::vector<std::pair<Pool*, Conn*>> owners{{nullptr, nullptr}};
    // Without an eventfd (none could be made) new work is found by polling.
    absl::Time wake = now + (sp.wake_fd_ >= 0 ? absl::Seconds(1) : absl::Milliseconds(5));
    const SharedPoolOptions& opt = options;
    for (auto& [name, pool] : pools) {
      if (pool.queued > 0) {
        const int live = LiveConnections(pool);
        if (live == 0) {
          wake = std::min(wake, std::max(pool.retry_at, now));
          for (const Queue& q : pool.queues) wake = std::min(wake, StarvedAt(pool, q));
        } else if (live < opt.max_pool_size) {
          wake = std::min(
              wake, std::max({pool.retry_at, pool.interval_start + opt.slow_start_interval, now}));
        }
      }
      for (auto& conn : pool.conns) {
        const Connection& c = *conn->c;
        short events = POLLIN;
        if (c.state == State::kConnecting) {
          events = c.poll == PGRES_POLLING_READING ? POLLIN : POLLOUT;
          wake = std::min(wake, c.connect_started + opt.connect_timeout);
        } else if (c.state == State::kBusy) {
          events = POLLIN | (c.want_write ? POLLOUT : 0);
        } else if (c.state == State::kIdle) {
          // Idle connections: closed at their timeout, and looked at every
          // interval for waiters to yield to.
          if (pool.queued == 0) {
            wake = std::min(
                {wake, conn->idle_since + options.idle_timeout, now + opt.slow_start_interval});
          }
        } else {
          continue;
        }
        fds.push_back({PQsocket(c.pg), events, 0});
        owners.emplace_back(&pool, conn.get());
      }
    }
    const absl::Duration wait = wake - absl::Now();
    if (wait > absl::Milliseconds(1) && published_at < now) Publish(now);
    const int timeout_ms =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(wait) + 1));
    if (poll(fds.data(), fds.size(), timeout_ms) < 0) {
      // EINTR, or a failure (ENOMEM) that a short pause may outlast.
      if (errno != EINTR) absl::SleepFor(absl::Milliseconds(1));
      return;
    }
    const absl::Time after = absl::Now();
    for (size_t i = 1; i < fds.size(); ++i) {
      auto [pool, conn] = owners[i];
      try {
        HandleEvent(*pool, *conn, fds[i].revents, after);
      } catch (const std::bad_alloc&) {
        OutOfMemory(*conn);
      }
    }
  }

  void HandleEvent(Pool& pool, Conn& conn, short revents, absl::Time now) {
    Connection& c = *conn.c;
    const SharedPoolOptions& opt = options;
    if (c.state == State::kConnecting) {
      if (revents != 0) {
        Connecting(pool, conn, now);
      } else if (now - c.connect_started > opt.connect_timeout) {
        c.state = State::kBroken;
        ConnectFailed(pool,
                      absl::StrCat("timed out after ", absl::FormatDuration(opt.connect_timeout),
                                   " (node_connection_timeout)"));
      }
    } else if (c.state == State::kBusy) {
      if (c.want_write && (revents & POLLOUT)) {
        const int flushed = PQflush(c.pg);
        if (flushed < 0) {
          Lost(pool, conn, Trim(PQerrorMessage(c.pg)));
          return;
        }
        c.want_write = flushed == 1;
      }
      if (revents & (POLLIN | POLLERR | POLLHUP)) ReadResults(pool, conn, now);
    } else if (c.state == State::kIdle && revents != 0) {
      IdleReadable(conn);
    }
  }

  // ---- the end ----

  void Shutdown() {
    const absl::Status gone = absl::UnavailableError("the connthrottle shared pool shut down");
    std::vector<std::unique_ptr<Connection>> closing;
    for (auto& [name, pool] : pools) {
      FailQueued(pool, gone, "08006");
      for (auto& conn : pool.conns) {
        if (conn->c->state == State::kBusy) {
          SendCancel(conn->c->pg);
          if (conn->batch != nullptr && !conn->cancelling) {
            Fail(*conn->batch, conn->task, gone, "08006");
          }
        }
        Uncount(*conn);
        closing.push_back(std::move(conn->c));
      }
    }
    pools.clear();
    CloseAll(std::move(closing));
    std::vector<std::shared_ptr<Batch>> late;
    {
      std::lock_guard<std::mutex> lock(sp.mu_);
      late.swap(sp.submitted_);
    }
    for (auto& b : late) {
      {
        std::lock_guard<std::mutex> lock(b->mu);
        b->pool_gone = true;
      }
      b->Notify();
    }
  }

  void Publish(absl::Time now) {
    published_at = now;
    std::map<NodeAddress, int> connections, queued;
    for (const auto& [name, pool] : pools) {
      const int live = LiveConnections(pool);
      if (live > 0) connections[pool.node] += live;
      if (pool.queued > 0) queued[pool.node] += pool.queued;
    }
    std::lock_guard<std::mutex> lock(sp.mu_);
    sp.stats_ = stats;
    sp.connections_ = std::move(connections);
    sp.queued_ = std::move(queued);
  }
};

// ---- SharedPool ----

SharedPool::SharedPool(Owner& owner, LimitFunction limit, SharedPoolOptions options)
    : owner_(owner), limit_(std::move(limit)), options_(options) {
  // Without it (no file descriptor left) the loop polls for new work every
  // few milliseconds instead of being woken.
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  loop_ = std::make_unique<Loop>(*this);
  thread_ = std::thread([this] { loop_->Run(); });
}

SharedPool::~SharedPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  Wake();
  thread_.join();
  loop_.reset();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void SharedPool::Wake() {
  if (wake_fd_ < 0) return;
  const uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
}

SharedPool::Ticket SharedPool::Submit(Submission submission, std::function<void()> on_change) {
  auto b = std::make_shared<Batch>();
  const int n = static_cast<int>(submission.tasks.size());
  b->tasks = std::move(submission.tasks);
  b->params = std::move(submission.params);
  b->local.assign(submission.local.begin(), submission.local.end());
  b->params.resize(n);
  b->local.resize(n, 0);
  b->database_id = submission.database_id;
  b->max_rows_kept = submission.max_rows_kept;
  b->slot_wait_timeout = submission.slot_wait_timeout;
  b->held_total = held_;
  b->on_change = std::move(on_change);
  b->submitted = absl::Now();
  {
    std::lock_guard<std::mutex> lock(b->mu);
    b->results.resize(n);
    for (int t = 0; t < n; ++t) b->results[t].node = b->tasks[t].node;
    b->remaining = n;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      std::lock_guard<std::mutex> batch_lock(b->mu);
      b->pool_gone = true;
      return b;  // the first Poll sees it
    }
    if (n > 0) submitted_.push_back(b);
  }
  Wake();
  return b;
}

namespace {

SharedPool::Progress TakeProgress(SharedPool::Batch& b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
  SharedPool::Progress p;
  p.handed_back.swap(b.handed_back);
  p.settled = b.Settled();
  p.pool_gone = b.pool_gone;
  return p;
}

}  // namespace

SharedPool::Progress SharedPool::Poll(const Ticket& ticket) {
  std::lock_guard<std::mutex> lock(ticket->mu);
  return TakeProgress(*ticket);
}

SharedPool::Progress SharedPool::Await(const Ticket& ticket, absl::Duration timeout) {
  Batch& b = *ticket;
  std::unique_lock<std::mutex> lock(b.mu);
  b.changed.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                     [&] { return b.Settled() || !b.handed_back.empty(); });
  return TakeProgress(b);
}

ExecutionResult SharedPool::TakeResults(const Ticket& ticket) {
  ExecutionResult out;
  std::lock_guard<std::mutex> lock(ticket->mu);
  out.tasks = std::move(ticket->results);
  out.stats.tasks_retried = ticket->retried;
  // The results are the session's now.
  if (ticket->held_total) ticket->held_total->fetch_sub(std::exchange(ticket->held_bytes, 0));
  return out;
}

void SharedPool::Cancel(const Ticket& ticket) {
  ticket->cancelled.store(true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(ticket);
  }
  Wake();
}

void SharedPool::set_options(const SharedPoolOptions& options) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    options_ = options;
    ++options_version_;
  }
  Wake();
}

SharedPoolStats SharedPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

std::map<NodeAddress, int> SharedPool::Connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connections_;
}

std::map<NodeAddress, int> SharedPool::Queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

// ---- SharedPoolTransport ----

SharedPoolTransport::SharedPoolTransport(SharedPool& pool, ExecutionContext& context,
                                         Options options)
    : pool_(pool), context_(context), options_(options) {}

absl::StatusOr<ExecutionResult> SharedPoolTransport::Execute(std::vector<Task> tasks) {
  if (tasks.empty()) return ExecutionResult{};
  SharedPool::Submission submission;
  submission.database_id = context_.DatabaseId();
  submission.max_rows_kept = options_.max_rows_kept;
  submission.slot_wait_timeout = options_.slot_wait_timeout;
  for (const Task& task : tasks) {
    submission.params.push_back(context_.ParamsFor(task.node));
    submission.local.push_back(context_.IsLocal(task.node));
  }
  submission.tasks = tasks;
  const absl::Time submitted = absl::Now();
  SharedPool::Ticket ticket = pool_.Submit(std::move(submission));

  std::map<int, TaskResult> ran_locally;
  while (true) {
    SharedPool::Progress p = pool_.Await(ticket, options_.tick);
    if (p.pool_gone) return absl::UnavailableError("the connthrottle shared pool shut down");
    // Local failover: tasks the local node's pool could not connect for.
    for (int t : p.handed_back) ran_locally[t] = RunHandedBack(context_, tasks[t], submitted);
    if (p.settled) break;  // taken with the hand-backs: no more can come
    if (context_.Interrupted()) {
      pool_.Cancel(ticket);
      return absl::CancelledError("the execution was cancelled");
    }
  }
  ExecutionResult out = pool_.TakeResults(ticket);
  for (auto& [t, r] : ran_locally) out.tasks[t] = std::move(r);
  out.stats.tasks_run_locally = static_cast<int>(ran_locally.size());
  return out;
}

}  // namespace connthrottle
