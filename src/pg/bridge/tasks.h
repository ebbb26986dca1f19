// run_tasks: a list of (node, SQL) tasks run with this backend's adaptive
// executor (the direct transport) or handed to the communicator's shared
// pool, with the glue's in-process runner for local-execution failover.
// Glue-facing (outcome.h).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_TASKS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_TASKS_H_

#include <cstdint>

#include "pg/bridge/channel_ops.h"
#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// What the glue's in-process runner (SPI, inside a subtransaction) reports.
// It must never raise: every error is caught and described here.
struct LocalTaskOutcome {
  bool ok = false;
  bool cancelled = false;   // the error was a query cancel or statement timeout
  bool abort_call = false;  // the error could not be contained: stop the execution
  char sqlstate[6] = {0};
  char message[1024] = {0};
  char command_tag[64] = {0};
  int64_t row_count = 0;   // rows returned
  bool has_value = false;  // one row of one column
  char* value = nullptr;   // malloc'd by the runner, freed by the session
};
using LocalRunner = void (*)(const char* sql, LocalTaskOutcome* out);

struct TaskSpec {
  const char* host;
  int port;
  const char* sql;
};

struct TaskRow {
  const char* host;  // owned by the session until its next call
  int port;
  bool success;
  const char* sqlstate;  // "" when none
  const char* result;    // the single value, or the command tag; nullptr on failure
  const char* error;     // nullptr on success
  bool ran_locally;
  int connection;
  int64_t rows;
  int64_t queued_us;
  int64_t run_us;
};

// Runs `tasks` with this backend's adaptive executor, or through the
// communicator's shared pool when `channel` is given (this backend's slot).
// *rows gets one row per task, in order, valid until the next call into
// the bridge. Returns with interrupted set when the execution was
// cancelled (every remote query cancelled or withdrawn, every slot given
// back); the glue then raises the pending interrupt.
Outcome RunTasks(const TaskSpec* tasks, int count, uint32_t database, const Settings& settings,
                 const ExecutorSettings& executor, int active_client_backends,
                 bool (*interrupted)(), LocalRunner runner, const ChannelOps* channel,
                 const TaskRow** rows);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_TASKS_H_
