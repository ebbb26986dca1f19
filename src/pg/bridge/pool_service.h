// The communicator's pool, in plain C++ (the PostgreSQL side of the
// communicator is src/pg/communicator.cc): one SharedPool whose loop runs on
// a thread of the communicator process, and the requests of the session
// slots it is working on. Called by the communicator's main thread; the
// pool's own thread calls only the `answer` function it was given.
//
// Like the backend side of the bridge (outcome.h), every function is
// noexcept: no C++ exception reaches PostgreSQL's frames.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SERVICE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SERVICE_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/pool_settings.h"
#include "pg/bridge/pool_stats.h"
#include "pg/bridge/settings.h"

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
  // The settings shared_pool_settings.def declares. pool_response_memory is
  // also the most bytes of responses held for sessions to read in parts,
  // all sessions together.
  PoolSettings pool;
};

// Marks slot `slot` answered: `size` bytes of its response, which is `total`
// bytes in all, are in its area (a response larger than the area crosses it
// in parts, each asked for by the session: NextPart). Called with the
// service's lock held, on the pool's thread when a request settles or on
// the main thread: it must only publish the answer and wake the session (no
// PostgreSQL call that is not async-signal-safe).
using AnswerFn = void (*)(int slot, size_t size, size_t total);

// The sessions' wake-up: an eventfd every backend writes to after it
// published a request (or a withdrawal) in its slot, and the function that
// serves the slots. The pool's thread polls `fd` and, once it has drained
// it, calls `serve` (never concurrently with itself; the caller serialises
// it with any other server of the slots).
struct SlotWakeup {
  int fd = -1;
  void (*serve)() = nullptr;
};

// Keeps the settings and `answer`, and starts the pool (this process
// registered as an Owner of the counter table, the pool's thread started
// with every signal blocked) serving the slots on its own thread, woken
// by `wakeup.fd`. When the pool cannot start (every owner place taken),
// each request tries again (SubmitToPool), and the slots are served by
// whoever calls `wakeup.serve` meanwhile: PoolServesSlots says which.
void StartPoolService(const PoolServiceSettings& settings, AnswerFn answer,
                      SlotWakeup wakeup) noexcept;
// Whether the pool's thread serves the slots (it runs, and `wakeup.fd` was
// given); otherwise the communicator's main thread must.
bool PoolServesSlots() noexcept;
// The pool's load now, by node, for the lease service's demand
// (lease_service.h): the tasks queued (demand that waits in the pool, not in
// the counter table) and the connections idle (slots held in the counter
// table that serve no task now). Copies at most `max` nodes with either;
// returns how many it copied (0 without a pool). Any thread.
struct PoolNodeLoad {
  char host[256];
  int port;
  int queued;
  int idle;
};
int PoolLoad(PoolNodeLoad* out, int max) noexcept;
// New settings (limits are read at every decision; the idle timeout applies
// from the next look).
void UpdatePoolService(const PoolServiceSettings& settings) noexcept;

// Takes slot `slot`'s request from `area` (the slot is already marked
// running): tasks (pool_message.h), or a step of the slot's COPY
// (copy_message.h: open, a chunk, end, abort), whose chunk the pool reads
// from `area` until the step is answered. Its response is written to `area` and `answer` called
// when its tasks are settled, at once when it cannot be run (malformed, nothing to run), usually on
// the pool's thread. Called by `wakeup.serve`, on the pool's thread or the main thread.
void SubmitToPool(int slot, char* area, size_t size, size_t capacity) noexcept;
// Withdraws slot `slot`'s request: its queued tasks are dropped, its running
// ones cancelled (its COPY, if it has one, cancelled); it gets no response.
// `release` (the slot freed) runs under the service's lock, so that no
// answer is written after it; for a COPY, once the pool no longer reads its
// chunk from the slot's area (maybe later, on the pool's thread).
void CancelInPool(int slot, void (*release)(int slot)) noexcept;
// Answers slot `slot`'s request if it is settled (a backstop: the pool's
// thread answers as the request settles). CancelInPool, AnswerIfDone and
// NextPart, like SubmitToPool, are called by the slots' server.
void AnswerIfDone(int slot) noexcept;
// Writes the next part of slot `slot`'s response into its area and answers
// it (the session took the previous part). The rest waits in the
// communicator's memory, so a session that reads slowly holds up nobody
// else: its tasks' connections went back to the pool when they settled.
// False when the slot has no response in parts (nothing written).
bool NextPart(int slot) noexcept;
// Drops the rest of slot `slot`'s response in parts (its session withdrew
// while a part was being sent); nothing is written to the slot.
void DropResponse(int slot) noexcept;
// Forgets every request, so that the pool's thread answers none of them
// any more: the communicator answers them itself as it stops.
void DetachRequests() noexcept;
// Cancels slot `slot`'s COPY, if it has one open (its session withdrew a
// step the communicator had not taken yet).
void AbandonCopy(int slot) noexcept;
// Calls `fn` with each slot whose session has a COPY open in the pool (the
// communicator, as it stops, tells those sessions their COPY is lost).
void ForEachOpenCopy(void (*fn)(int slot)) noexcept;
// Writes an error response to `area` (the communicator stops); always whole.
size_t WriteErrorResponse(char* area, size_t capacity, int code, const char* sqlstate,
                          const char* message) noexcept;
// The pool's figures now: its counters and the connections and queued tasks
// it has (the communicator fills in its own, reloads). All zero before the
// pool's first request.
PoolStatValues PoolStats() noexcept;
// Stops the pool: every request still held is dropped, running queries are
// cancelled, every connection is closed and its slot given back.
void StopPoolService() noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_SERVICE_H_
