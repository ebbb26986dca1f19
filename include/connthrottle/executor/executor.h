// connthrottle/executor.h — running many tasks on many worker nodes in
// parallel without ever exceeding the shared limit.
//
// An AdaptiveExecutor belongs to one coordinator session (a backend, or a
// thread of a standalone program). Execute() takes a list of tasks, each a
// node and a SQL command, and runs them with libpq in non-blocking mode: one
// pool of connections per node, all driven by one event loop, so that
// connecting and querying overlap across and within nodes. How connections
// are taken:
//
//   * The first connection of a pool is needed: it is a waiting acquire.
//     First connections are taken in the global node order (host, then port)
//     and, before waiting, the session gives back its idle cached
//     connections, so that no session sits on slots others wait for and no
//     two sessions each hold what the other waits for. A pool never waits
//     for a second connection while holding its first.
//   * Every further connection is optional: taken only if a slot is free now,
//     otherwise skipped and retried at the next interval while tasks remain.
//     Slow start: at most k new connections per interval, k growing by one
//     each interval, up to max_pool_size — and none when the tasks left are
//     cheaper to run on the connections already open (measured task and
//     connect times).
//   * A pool that lost every connection while tasks remain (its worker
//     restarted, say) needs a first connection again: it tries optionally at
//     each interval while other pools work, and once nothing else is in
//     flight it waits in the queue, holding only slots of earlier nodes.
//   * Connections to the local node are always optional. A local pool that
//     gets no connection at all runs its tasks in-process through
//     ExecutionContext::RunLocally (local-execution failover).
//   * At the end, idle connections are kept for the next execution (up to
//     max_cached_per_node per node, for at most max_cached_lifetime, still
//     holding their slots, parked: Owner::Park) only while their node has no
//     waiters and fewer than its limit of slots are parked: idle sessions,
//     which cannot give their slots back until they run again, never hold
//     all of a node's slots.
//     A cached connection the worker closed is found before use, discarded
//     with its slot, and its task goes to another connection.
//
// Every connection's slot is given back exactly once, whatever happens: a
// worker that refuses or dies, a connect timeout, a failing task, or the
// caller's cancel (every running remote query is cancelled with PQcancel).
//
// Not thread-safe: one AdaptiveExecutor per session, used by one thread. The
// Owner and the ExecutionContext must outlive it.

#ifndef CONNTHROTTLE_EXECUTOR_EXECUTOR_H_
#define CONNTHROTTLE_EXECUTOR_EXECUTOR_H_

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/conn_params.h"
#include "connthrottle/executor/task.h"
#include "connthrottle/executor/transport.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"

namespace connthrottle {

struct ExecutorOptions {
  int max_pool_size = 16;       // max_adaptive_executor_pool_size
  int max_cached_per_node = 1;  // max_cached_conns_per_worker
  absl::Duration max_cached_lifetime = absl::Minutes(10);
  absl::Duration connect_timeout = absl::Seconds(30);  // node_connection_timeout
  absl::Duration slow_start_interval = absl::Milliseconds(10);
  // How long a needed first connection may wait for a slot.
  absl::Duration slot_wait_timeout = absl::Minutes(1);
  // How often the loop consults ExecutionContext::Interrupted at least.
  absl::Duration tick = absl::Milliseconds(10);
  // Rows of a task's result kept in TaskResult::rows; -1 keeps them all. With
  // a bound, results are read in libpq's single-row mode and every row past
  // it is counted and dropped as it arrives, so a task returning millions of
  // rows costs the coordinator no more memory than one row.
  int64_t max_rows_kept = -1;
};

// What the executor needs from its caller. Called on the executor's thread
// only; no method may throw.
class ExecutionContext {
 public:
  virtual ~ExecutionContext() = default;
  // libpq keyword/value parameters for a connection to `node`.
  virtual ConnParams ParamsFor(const NodeAddress& node) = 0;
  // The database id of the keys slots are counted under.
  virtual uint32_t DatabaseId() = 0;
  // Whether `node` is this coordinator itself.
  virtual bool IsLocal(const NodeAddress& node) = 0;
  // The limit that applies to `node` now (read at every decision).
  virtual Limit LimitFor(const NodeAddress& node, bool local) = 0;
  // Polled at least every tick; true stops the execution (cancel). It may do
  // safe housekeeping first (e.g. re-reading configuration).
  virtual bool Interrupted() = 0;
  // Runs a task in-process (local-execution failover). The default refuses.
  virtual TaskResult RunLocally(const Task& task);
  // What a slot acquire does when the shared table has no free entry.
  virtual FullTablePolicy WhenTableFull() { return FullTablePolicy::kAdmitUncounted; }
};

// The direct transport (transport.h).
class AdaptiveExecutor : public Transport {
 public:
  AdaptiveExecutor(Owner& owner, ExecutionContext& context, ExecutorOptions options = {});
  AdaptiveExecutor(const AdaptiveExecutor&) = delete;
  AdaptiveExecutor& operator=(const AdaptiveExecutor&) = delete;
  // Closes every cached connection, giving back its slot.
  ~AdaptiveExecutor() override;

  // Runs `tasks`. A failing task fails alone (see its TaskResult); the whole
  // execution fails only when the context interrupts it (Cancelled: every
  // running remote query has been cancelled and every slot given back).
  absl::StatusOr<ExecutionResult> Execute(std::vector<Task> tasks) override;

  // Closes the idle cached connections (to every node, or to `node`), giving
  // back their slots. Returns how many were closed.
  int CloseIdle();
  int CloseIdle(const NodeAddress& node);
  // Idle cached connections now, per node.
  std::map<NodeAddress, int> CachedConnections() const;
  int CachedConnections(const NodeAddress& node) const;

  void set_options(const ExecutorOptions& options) { options_ = options; }
  const ExecutorOptions& options() const { return options_; }

  // One connection and its slot; defined internally (src/executor).
  struct Connection;

 private:
  friend class CopyStream;
  friend struct ExecutionRun;

  // A cached connection to `node` that is still alive, or nullptr.
  std::unique_ptr<Connection> TakeCached(const NodeAddress& node, int* discarded);
  // Keeps an idle connection for the next execution if the caching rules
  // allow (see above); otherwise hands it back, to be closed.
  std::unique_ptr<Connection> Cache(std::unique_ptr<Connection> connection);
  NodeKey KeyOf(const NodeAddress& node);

  Owner& owner_;
  ExecutionContext& context_;
  ExecutorOptions options_;
  std::map<NodeAddress, std::vector<std::unique_ptr<Connection>>> cache_;
  // The cost model's prior per node: the time to connect as measured by
  // earlier executions (a running average; each new one weighs as one).
  std::map<NodeAddress, absl::Duration> connect_time_;
  int next_connection_id_ = 0;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_EXECUTOR_H_
