// distribute.cc — COPY to the nodes through this backend's executor.

#include "pg/bridge/distribute.h"

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/execution_context.h"
#include "pg/bridge/internal/outcome.h"
#include "pg/bridge/internal/settings.h"

namespace connthrottle::pg {

Outcome BeginDistribute(const NodeRef* nodes, int count, const char* copy_sql, uint32_t database,
                        const Settings& settings, const ExecutorSettings& executor,
                        int active_client_backends, Wait& wait, bool (*interrupted)(),
                        bool (*stream_interrupted)()) {
  return Guard([&] {
    ForgetResults();
    if (!TableReady()) return NotReady();
    State& s = S();
    s.copy.reset();
    absl::StatusOr<AdaptiveExecutor*> ex =
        MyExecutor(database, settings, executor, active_client_backends, interrupted, nullptr);
    if (!ex.ok()) return FromStatus(ex.status(), kConfigurationLimitExceeded);
    std::vector<NodeAddress> targets;
    for (int i = 0; i < count; ++i) targets.push_back({nodes[i].host, nodes[i].port});
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(**ex, std::move(targets), copy_sql, Deadline(wait), interrupted,
                          wait.resumed ? std::optional<absl::Time>(Began(wait)) : std::nullopt);
    if (absl::IsCancelled(copy.status())) return Resume(wait);
    if (!copy.ok()) return WaitTimedOut(copy.status(), wait);
    s.copy = *std::move(copy);
    if (stream_interrupted != nullptr) s.copy->set_interrupt(stream_interrupted);
    return Outcome{};
  });
}

Outcome BeginPooledDistribute(const NodeRef* nodes, int count, const char* copy_sql,
                              uint32_t database, const Settings& settings,
                              const ExecutorSettings& executor, int active_client_backends,
                              bool (*interrupted)(), const ChannelOps& channel) {
  return Guard([&] {
    ForgetResults();
    if (!TableReady()) return NotReady();
    State& s = S();
    s.copy.reset();
    s.pool_copy.reset();
    absl::StatusOr<PgExecutionContext*> context =
        MyContext(database, settings, executor, active_client_backends, interrupted, nullptr);
    if (!context.ok()) return FromStatus(context.status(), kConfigurationLimitExceeded);
    std::vector<NodeAddress> targets;
    for (int i = 0; i < count; ++i) targets.push_back({nodes[i].host, nodes[i].port});
    absl::StatusOr<std::unique_ptr<PoolCopyChannel>> copy = PoolCopyChannel::Begin(
        **context, channel, std::move(targets), copy_sql, WaitTimeout(settings));
    if (absl::IsCancelled(copy.status())) return Interrupted();
    if (!copy.ok()) return FromStatus(copy.status());
    s.pool_copy = *std::move(copy);
    return Outcome{};
  });
}

Outcome DistributeOne(int node, const char* row, size_t length) {
  return Guard([&] {
    State& s = S();
    if (s.pool_copy) {
      absl::Status status =
          s.pool_copy->Send(static_cast<size_t>(node), std::string_view(row, length));
      if (absl::IsCancelled(status)) return Interrupted();
      return FromStatus(status);
    }
    if (!s.copy) return Fail(kObjectNotInPrerequisiteState, "connthrottle: no distribution open");
    absl::Status status = s.copy->Send(static_cast<size_t>(node), std::string_view(row, length));
    if (absl::IsCancelled(status)) return Interrupted();
    return FromStatus(status);
  });
}

Outcome FinishDistribute(const DistributeRow** rows, int* count) {
  return Guard([&] {
    *rows = nullptr;
    *count = 0;
    State& s = S();
    if (s.pool_copy) {
      absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> results = s.pool_copy->Finish();
      s.pool_copy.reset();  // over, or abandoned: the communicator ends every node's COPY
      if (absl::IsCancelled(results.status())) return Interrupted();
      if (!results.ok()) return FromStatus(results.status());
      for (const SharedPool::CopyNodeResult& r : *results) {
        s.distribute_rows.push_back(
            {Keep(r.node.host), r.node.port, r.rows, r.status.ok(),
             r.status.ok() ? nullptr : Keep(std::string(r.status.message()))});
      }
      *rows = s.distribute_rows.data();
      *count = static_cast<int>(s.distribute_rows.size());
      return Outcome{};
    }
    if (!s.copy) return Fail(kObjectNotInPrerequisiteState, "connthrottle: no distribution open");
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = s.copy->Finish();
    if (absl::IsCancelled(results.status())) {
      s.copy.reset();  // cancels the workers' COPY, gives back the slots
      return Interrupted();
    }
    s.copy.reset();
    if (!results.ok()) return FromStatus(results.status());
    for (const CopyStream::NodeResult& r : *results) {
      s.distribute_rows.push_back(
          {Keep(r.node.host), r.node.port, static_cast<int64_t>(r.rows_sent), r.status.ok(),
           r.status.ok() ? nullptr : Keep(std::string(r.status.message()))});
    }
    *rows = s.distribute_rows.data();
    *count = static_cast<int>(s.distribute_rows.size());
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
