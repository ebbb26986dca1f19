// The executor's view of this backend (PgExecutionContext): the settings of
// the current call, connection parameters (node_conninfo's allowed keywords
// included), local-node detection and limits, the glue's interrupt check
// and its in-process runner. MyContext and MyExecutor prepare this
// backend's context and adaptive executor for one call; both live in the
// State (internal/backend_state.h) across calls, the executor keeping its
// cached connections. Bridge-only.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_EXECUTION_CONTEXT_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_EXECUTION_CONTEXT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "connthrottle/executor/executor.h"
#include "pg/bridge/settings.h"
#include "pg/bridge/tasks.h"

namespace connthrottle::pg {

class PgExecutionContext : public ExecutionContext {
 public:
  // Takes the settings of one call; copies every string it keeps.
  void Prepare(uint32_t database, const Settings& settings, const ExecutorSettings& executor,
               int active_client_backends, bool (*interrupted)(), LocalRunner runner);

  // The extra keywords as given by node_conninfo, in one string, to tell
  // when they changed (cached connections were made with the old ones).
  std::string ConninfoSignature() const;

  ConnParams ParamsFor(const NodeAddress& node) override;
  uint32_t DatabaseId() override { return database_; }
  bool IsLocal(const NodeAddress& node) override;
  Limit LimitFor(const NodeAddress& node, bool local) override;
  bool Interrupted() override { return cancelled_ || (interrupted_ != nullptr && interrupted_()); }
  FullTablePolicy WhenTableFull() override;
  TaskResult RunLocally(const Task& task) override;

 private:
  uint32_t database_ = 0;
  Settings settings_;
  std::string local_node_, dbname_, user_;
  int active_client_backends_ = 0;
  bool (*interrupted_)() = nullptr;
  LocalRunner runner_ = nullptr;
  bool cancelled_ = false;
  std::vector<std::pair<std::string, std::string>> conninfo_;
  std::string client_encoding_;
};

// Prepares this backend's execution context for one call (registering the
// backend as an owner first). Idle cached connections made with other
// node_conninfo keywords are closed.
absl::StatusOr<PgExecutionContext*> MyContext(uint32_t database, const Settings& settings,
                                              const ExecutorSettings& executor,
                                              int active_client_backends, bool (*interrupted)(),
                                              LocalRunner runner);
// MyContext, then this backend's adaptive executor (made on first use) with
// the options of this call.
absl::StatusOr<AdaptiveExecutor*> MyExecutor(uint32_t database, const Settings& settings,
                                             const ExecutorSettings& executor,
                                             int active_client_backends, bool (*interrupted)(),
                                             LocalRunner runner);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_EXECUTION_CONTEXT_H_
