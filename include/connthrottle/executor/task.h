// connthrottle/task.h — a task (a SQL command for one worker node), its
// result, and the figures of one execution: what every Transport takes and
// gives back. Value types: copyable, thread-compatible.

#ifndef CONNTHROTTLE_EXECUTOR_TASK_H_
#define CONNTHROTTLE_EXECUTOR_TASK_H_

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace connthrottle {

struct NodeAddress {
  std::string host;
  int port = 0;

  std::string ToString() const;  // "host:port"
  friend auto operator<=>(const NodeAddress&, const NodeAddress&) = default;
};

struct Task {
  NodeAddress node;
  std::string sql;
  // Whether the task may run in-process when the node is the local node and
  // no connection to it can be had.
  bool allow_local = true;
};

struct TaskResult {
  // OK, or what went wrong; the message names the node. A worker's own error
  // keeps its message, with its SQLSTATE in `sqlstate`; the executor's own
  // failures carry one too: 08001 could not connect, 08006 connection lost
  // while running, 53300 no slot (wait timed out, or the local node allowed
  // none and the task may not run locally), 53400 table full, 22023 bad node.
  absl::Status status;
  std::string sqlstate;
  std::string command_tag;
  // The columns and rows of the task's last result set: all of its rows, or
  // with ExecutorOptions::max_rows_kept the first ones only; row_count counts
  // every row of that result set either way.
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;
  int64_t row_count = 0;
  NodeAddress node;
  bool ran_locally = false;
  int connection = -1;    // the executor's number for the connection that ran it
  absl::Duration queued;  // from the start of Execute to the start of the task
  absl::Duration run;     // from sending the command to its last result
};

// Figures of one Execute(), for tests and reports.
struct ExecutionStats {
  // Connection attempts: started = opened + failed + abandoned. Each one costs
  // the worker a backend (a fork and, unless abandoned early, an
  // authentication), whether or not it was ever used: this is the figure to
  // compare with what the workers saw.
  int connections_started = 0;
  int connections_opened = 0;     // established
  int connections_failed = 0;     // attempts that failed
  int connections_abandoned = 0;  // still connecting when no task needed them any more
  int connections_reused = 0;     // cached connections used
  int cached_discarded = 0;       // cached connections found dead before use
  int optional_refused = 0;       // optional acquires refused (retried later)
  int waited_for_first = 0;       // first connections that had to wait for a slot
  int tasks_run_locally = 0;
  int tasks_retried = 0;  // moved off a connection that broke before running them
  // Per node, when each connection attempt of this execution was started, and
  // when each connection became ready (cached ones: zero), relative to the
  // start of Execute, in order.
  std::map<NodeAddress, std::vector<absl::Duration>> started_after;
  std::map<NodeAddress, std::vector<absl::Duration>> ready_after;
};

struct ExecutionResult {
  std::vector<TaskResult> tasks;  // in the order given
  ExecutionStats stats;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_TASK_H_
