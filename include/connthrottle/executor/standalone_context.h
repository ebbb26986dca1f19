// connthrottle/standalone_context.h — an ExecutionContext for standalone
// programs (no PostgreSQL around them): connection settings, limits that may
// change while it runs, an optional local node with a local-execution
// function, and a cancel flag another thread may set.
//
// Thread-safety: set_limits() and Cancel() may be called from any thread;
// everything else belongs to the executor's thread.

#ifndef CONNTHROTTLE_EXECUTOR_STANDALONE_CONTEXT_H_
#define CONNTHROTTLE_EXECUTOR_STANDALONE_CONTEXT_H_

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "connthrottle/executor/executor.h"

namespace connthrottle {

class StandaloneContext : public ExecutionContext {
 public:
  struct Settings {
    std::string user = "postgres";
    std::string password;  // empty: none
    std::string database = "postgres";
    uint32_t database_id = 1;  // the id slots are counted under
    std::string application_name = "connthrottle";
    PoolLimits limits;
    std::optional<NodeAddress> local_node;
    FullTablePolicy when_table_full = FullTablePolicy::kAdmitUncounted;
    // Runs a task in-process when the local node gets no connection.
    std::function<TaskResult(const Task&)> run_locally;
  };

  explicit StandaloneContext(Settings settings) : settings_(std::move(settings)) {}

  // Applies new limits at the executor's next decision.
  void set_limits(const PoolLimits& limits);
  // Makes the running (or next) Execute stop with Cancelled.
  void Cancel() { cancelled_.store(true); }
  void Reset() { cancelled_.store(false); }
  // Client backends active on the local node, reported to its limit.
  void set_active_client_backends(int n) { active_client_backends_.store(n); }

  ConnParams ParamsFor(const NodeAddress& node) override;
  uint32_t DatabaseId() override { return settings_.database_id; }
  bool IsLocal(const NodeAddress& node) override;
  Limit LimitFor(const NodeAddress& node, bool local) override;
  bool Interrupted() override { return cancelled_.load(); }
  TaskResult RunLocally(const Task& task) override;
  FullTablePolicy WhenTableFull() override { return settings_.when_table_full; }

 private:
  Settings settings_;
  std::mutex limits_mu_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int> active_client_backends_{0};
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_STANDALONE_CONTEXT_H_
