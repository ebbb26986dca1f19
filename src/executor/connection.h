// One libpq connection of the adaptive executor and the slot it holds.
// Internal to src/executor.

#ifndef CONNTHROTTLE_SRC_EXECUTOR_CONNECTION_H_
#define CONNTHROTTLE_SRC_EXECUTOR_CONNECTION_H_

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/slot.h"

namespace connthrottle {

struct AdaptiveExecutor::Connection {
  enum class State { kConnecting, kIdle, kBusy, kBroken };

  int id = -1;
  NodeAddress node;
  PGconn* pg = nullptr;
  Slot slot;  // given back only after the connection is closed (CloseAll)
  State state = State::kConnecting;
  PostgresPollingStatusType poll = PGRES_POLLING_WRITING;
  bool want_write = false;  // a query is still being flushed
  bool reused = false;      // came from the cache in this execution
  absl::Time connect_started;
  absl::Time ready;  // when the connection became usable
  int task = -1;     // the task it runs while kBusy
  bool task_got_result = false;
  bool in_result_set = false;  // single-row mode: rows of a result set are arriving

  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();  // closes abruptly if CloseAll did not run
};

// Drops the notices a worker sends (libpq would print them on stderr, which
// in a PostgreSQL backend is the server log): a task's outcome is its result
// or its error, and errors reach the caller through TaskResult.
void QuietNotices(PGconn* pg);

// libpq's message without its trailing newline.
std::string Trim(std::string s);

// An idle connection's socket has something to read while nobody asked
// anything: the worker closed it or is about to (a FATAL message, EOF).
bool IdleConnectionIsDead(PGconn* pg);

// Local failover of a pooled transport: runs a task the pool handed back
// in-process, timed from `submitted` (when the execution was submitted).
TaskResult RunHandedBack(ExecutionContext& context, const Task& task, absl::Time submitted);

// What one PGresult of a running task was.
enum class Fold { kData, kCopy };

// Folds one PGresult of a running task into `r`: the columns and rows of its
// last result set (at most `max_rows_kept` rows kept when that is >= 0, every
// row counted), its command tag, and its first error with the SQLSTATE (the
// message names `node`). `in_result_set` carries single-row mode's state
// between calls: true while rows of a result set are arriving. Returns kCopy,
// leaving `r` alone, when the task entered COPY (which a task cannot do; the
// caller ends it).
Fold FoldResult(const PGresult* res, const NodeAddress& node, int64_t max_rows_kept,
                bool& in_result_set, TaskResult& r);

// Closes connections so that their slots are given back only once the worker
// backends are gone: each socket is duplicated, libpq sends Terminate (on an
// established connection) and closes its copy, our side of the duplicate is
// shut down (so that a backend still authenticating sees EOF too), and the
// duplicate is read until the worker closes it (a backend leaves
// pg_stat_activity and its PGPROC before its socket closes at exit), for at
// most `wait`, all connections at once. Then the slots are released.
void CloseAll(std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> connections,
              absl::Duration wait = absl::Milliseconds(500));

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_EXECUTOR_CONNECTION_H_
