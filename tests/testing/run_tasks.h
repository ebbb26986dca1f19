// connthrottle.run_tasks from a test client: array literals for its
// parameters, and its rows as a struct.

#ifndef CONNTHROTTLE_TESTS_TESTING_RUN_TASKS_H_
#define CONNTHROTTLE_TESTS_TESTING_RUN_TASKS_H_

#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::cluster {

// A PostgreSQL array literal of text elements ({"a","b"}), for a $n::text[] parameter.
std::string TextArray(const std::vector<std::string>& items);
std::string IntArray(const std::vector<int>& items);

// One task for run_tasks.
struct TaskSpec {
  std::string host;
  int port = 0;
  std::string sql;
};

// One row of run_tasks.
struct TaskRow {
  int task = 0;
  std::string host;
  int port = 0;
  bool success = false;
  std::optional<std::string> result, sqlstate, error;
  bool ran_locally = false;
  std::optional<std::string> connection;
};
std::ostream& operator<<(std::ostream& os, const TaskRow& r);

// The three array parameters ($1 hosts, $2 ports, $3 commands) of run_tasks.
std::vector<std::optional<std::string>> RunTasksParams(const std::vector<TaskSpec>& tasks);

// Runs the tasks through connthrottle.run_tasks on `c`; rows in task order.
absl::StatusOr<std::vector<TaskRow>> RunTasks(PgClient& c, const std::vector<TaskSpec>& tasks);

// Each session's outcome in RunSessionsUntil: the first failure ("" when
// none) and how many executions it completed.
struct SessionRuns {
  std::vector<std::string> failures;
  std::vector<int> executions;
};
// Runs `tasks` through every client at once (they start together), each
// again and again until it has completed `min_executions` and `more()` is
// false, or a task fails, or 120 s pass (that deadline only stops a run
// that never gets there).
SessionRuns RunSessionsUntil(std::vector<std::unique_ptr<PgClient>>& clients,
                             const std::vector<TaskSpec>& tasks, int min_executions,
                             const std::function<bool()>& more);

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_RUN_TASKS_H_
