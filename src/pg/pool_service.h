// The communicator's pool, in plain C++ (the PostgreSQL side of the
// communicator is src/pg/communicator.cc): one SharedPool whose loop runs on
// a thread of the communicator process, and the requests of the session
// slots it is working on. Used by the communicator's main thread only; the
// pool's own thread never calls into PostgreSQL.
//
// Like session.h, every function is noexcept and reports failure in an
// Outcome: no C++ exception reaches PostgreSQL's frames.

#ifndef CONNTHROTTLE_SRC_PG_POOL_SERVICE_H_
#define CONNTHROTTLE_SRC_PG_POOL_SERVICE_H_

#include <cstddef>
#include <cstdint>

#include "pg/session.h"

namespace connthrottle::pg {

// The communicator's configuration: its own GUC values, refreshed after a
// reload, and the count of active client backends (for the local node's
// limit), refreshed at every wake-up.
struct PoolServiceSettings {
  Settings settings;
  int active_client_backends = 0;
  int max_pool_size = 16;  // connthrottle.max_adaptive_executor_pool_size
  int node_connection_timeout_ms = 30000;
  int slow_start_interval_ms = 10;
  int pool_idle_timeout_ms = 60000;
};

// The pool's cumulative figures (SharedPoolStats, as plain integers).
struct PoolServiceStats {
  int64_t connections_started, connections_opened, connections_failed, closed_idle, closed_dead,
      closed_in_transaction, closed_for_waiters, closed_over_limit, optional_refused, tasks_run,
      tasks_retried, tasks_cancelled, tasks_handed_back;
  int64_t connections_now, tasks_queued_now;
};

// Keeps the settings and `notify`, which is called on the pool's thread when
// a request progresses; it must only wake the main thread. The pool itself
// (this process registered as an Owner of the counter table, the pool's
// thread started with every signal blocked) starts with the first request.
void StartPoolService(const PoolServiceSettings& settings, void (*notify)()) noexcept;
// New settings (limits are read at every decision; the idle timeout applies
// from the next look).
void UpdatePoolService(const PoolServiceSettings& settings) noexcept;

// Takes slot `slot`'s request from `area`. When it cannot be run (malformed,
// nothing to run) the response is written to `area` at once: *answered is
// then true and *response_size its size.
void SubmitToPool(int slot, char* area, size_t size, size_t capacity, bool* answered,
                  size_t* response_size) noexcept;
// Withdraws slot `slot`'s request: its queued tasks are dropped, its running
// ones cancelled; it gets no response.
void CancelInPool(int slot) noexcept;
// Writes into `slots` (up to `max`) the slots whose requests may have
// progressed since the last call; returns how many.
int TakeProgressed(int* slots, int max) noexcept;
// If slot `slot`'s request is settled, writes its response into `area` and
// forgets it: true. False while its tasks run.
bool AnswerIfDone(int slot, char* area, size_t capacity, size_t* response_size) noexcept;
// Writes an error response to `area` (the communicator stops).
size_t WriteErrorResponse(char* area, size_t capacity, int code, const char* sqlstate,
                          const char* message) noexcept;
PoolServiceStats PoolStats() noexcept;
// Stops the pool: every request still held is dropped, running queries are
// cancelled, every connection is closed and its slot given back.
void StopPoolService() noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_POOL_SERVICE_H_
