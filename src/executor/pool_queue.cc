// pool_queue.cc — the shared pool's loop: the queue: the round-robin over sessions, requeue,
// failing and handing back queued tasks. See pool_loop.h for the loop's state and who owns it.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "executor/pool_loop.h"

namespace connthrottle {

// Moves the session served last to the back of the round-robin.
void SharedPool::Loop::Rotate(Pool& pool) {
  if (!pool.front_served) return;
  pool.front_served = false;
  pool.queues.push_back(std::move(pool.queues.front()));
  pool.queues.pop_front();
}

// The next task in the round-robin over the pool's sessions.
std::pair<std::shared_ptr<SharedPool::Batch>, int> SharedPool::Loop::NextTask(Pool& pool) {
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
void SharedPool::Loop::Requeue(Pool& pool, std::shared_ptr<Batch> b, int t) {
  Rotate(pool);
  ++stats.tasks_retried;
  {
    std::lock_guard<std::mutex> lock(b->mu);
    ++b->retried;
  }
  pool.queues.push_front({std::move(b), {t}});
  ++pool.queued;
}

void SharedPool::Loop::FailQueued(Pool& pool, const absl::Status& why, const char* sqlstate) {
  while (true) {
    auto [b, t] = NextTask(pool);
    if (b == nullptr) break;
    FailTask(*b, t, why, sqlstate);
  }
}

// How long `b`'s tasks may wait while their pool has no connection: the
// session's own connection_wait_timeout when it sent one.
absl::Duration SharedPool::Loop::WaitTimeoutOf(const Batch& b) const {
  return b.slot_wait_timeout.value_or(options.slot_wait_timeout);
}

// When `q`'s tasks fail with 53300 if the pool still has no connection.
absl::Time SharedPool::Loop::StarvedAt(const Pool& pool, const Queue& q) const {
  return std::max(pool.starving_since, q.batch->submitted) + WaitTimeoutOf(*q.batch);
}

// The pool has had no connection since starving_since: the executions
// that have waited their own wait timeout since then fail with 53300.
void SharedPool::Loop::FailStarved(Pool& pool, absl::Time now) {
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
    for (int t : it->tasks) FailTask(*it->batch, t, why, "53300");  // too_many_connections
    pool.queued -= static_cast<int>(it->tasks.size());
    it = pool.queues.erase(it);
  }
}

// Local failover: the queued tasks go back to their sessions to run
// in-process; those that may not run locally fail.
void SharedPool::Loop::HandBack(Pool& pool) {
  while (true) {
    auto [b, t] = NextTask(pool);
    if (b == nullptr) break;
    if (!b->tasks[t].allow_local) {
      FailTask(*b, t,
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

}  // namespace connthrottle
