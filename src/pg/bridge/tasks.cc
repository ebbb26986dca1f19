// tasks.cc — run_tasks, over either transport.

#include "pg/bridge/tasks.h"

#include <string>
#include <utility>
#include <vector>

#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/execution_context.h"
#include "pg/bridge/internal/outcome.h"
#include "pg/bridge/internal/settings.h"
#include "pg/bridge/pool_channel.h"

namespace connthrottle::pg {
namespace {

// Runs `list` through the shared pool when `channel` is given, else with
// this backend's executor; *result is the execution's. Not ok when the
// context or executor could not be had.
Outcome Execute(std::vector<Task> list, uint32_t database, const Settings& settings,
                const ExecutorSettings& executor, int active_client_backends, bool (*interrupted)(),
                LocalRunner runner, const ChannelOps* channel,
                absl::StatusOr<ExecutionResult>& result) {
  if (channel != nullptr) {
    absl::StatusOr<PgExecutionContext*> context =
        MyContext(database, settings, executor, active_client_backends, interrupted, runner);
    if (!context.ok()) return FromStatus(context.status(), kConfigurationLimitExceeded);
    // run_tasks keeps one row per task, as with the direct transport.
    PoolChannel pool(**context, *channel, /*max_rows_kept=*/1, WaitTimeout(settings));
    result = pool.Execute(std::move(list));
  } else {
    absl::StatusOr<AdaptiveExecutor*> ex =
        MyExecutor(database, settings, executor, active_client_backends, interrupted, runner);
    if (!ex.ok()) return FromStatus(ex.status(), kConfigurationLimitExceeded);
    result = (*ex)->Execute(std::move(list));
  }
  return Outcome{};
}

// The row run_tasks returns for `t`; its strings are kept until the next call.
TaskRow RowOf(const TaskResult& t) {
  TaskRow row{};
  row.host = Keep(t.node.host);
  row.port = t.node.port;
  row.success = t.status.ok();
  row.sqlstate = Keep(t.sqlstate);
  if (t.status.ok()) {
    const bool single = t.row_count == 1 && t.rows.size() == 1 && t.rows[0].size() == 1;
    row.result =
        single ? (t.rows[0][0].has_value() ? Keep(*t.rows[0][0]) : nullptr) : Keep(t.command_tag);
    row.error = nullptr;
  } else {
    row.result = nullptr;
    row.error = Keep(std::string(t.status.message()));
  }
  row.ran_locally = t.ran_locally;
  row.connection = t.connection;
  row.rows = t.row_count;
  row.queued_us = absl::ToInt64Microseconds(t.queued);
  row.run_us = absl::ToInt64Microseconds(t.run);
  return row;
}

}  // namespace

Outcome RunTasks(const TaskSpec* tasks, int count, uint32_t database, const Settings& settings,
                 const ExecutorSettings& executor, int active_client_backends,
                 bool (*interrupted)(), LocalRunner runner, const ChannelOps* channel,
                 const TaskRow** rows) {
  return Guard([&] {
    *rows = nullptr;
    ForgetResults();
    if (!TableReady()) return NotReady();
    std::vector<Task> list;
    list.reserve(count);
    for (int i = 0; i < count; ++i) {
      list.push_back({{tasks[i].host, tasks[i].port}, tasks[i].sql, true});
    }
    absl::StatusOr<ExecutionResult> result;
    if (Outcome o = Execute(std::move(list), database, settings, executor, active_client_backends,
                            interrupted, runner, channel, result);
        !o.ok()) {
      return o;
    }
    if (absl::IsCancelled(result.status())) return Interrupted();
    if (!result.ok()) return FromStatus(result.status());
    State& s = S();
    for (const TaskResult& t : result->tasks) s.task_rows.push_back(RowOf(t));
    *rows = s.task_rows.data();
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
