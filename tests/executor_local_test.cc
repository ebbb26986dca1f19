// The executor's local-execution failover: tasks for the local node run in
// process when connecting to itself is not allowed or its local limit is
// reached; a task that may not run locally fails naming the node.

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/executor_fixture.h"

namespace connthrottle::testing {
namespace {

class LocalRecorder {
 public:
  std::function<TaskResult(const Task&)> Callback() {
    return [this](const Task& task) {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(task.sql);
      TaskResult r;
      r.status = absl::OkStatus();
      r.command_tag = "LOCAL";
      r.columns = {"marker"};
      r.rows = {{std::optional<std::string>(absl::StrCat("local:", task.sql))}};
      return r;
    };
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> seen_;
};

TEST_F(ExecutorTest, LocalFailoverWhenNeverConnectingToSelf) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  LocalRecorder recorder;
  StandaloneContext::Settings settings = Settings(16);
  settings.local_node = n1;
  settings.limits.local_shared_pool_size = kNeverConnectToSelf;
  settings.run_locally = recorder.Callback();
  Session s(table(), settings);
  std::vector<Task> tasks;
  for (int i = 0; i < 12; ++i) {
    tasks.push_back(Task{i % 3 == 0 ? n2 : n1, absl::StrCat("SELECT ", i)});
  }
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
  ASSERT_TRUE(r.ok()) << r.status();
  int local = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    SCOPED_TRACE(tasks[i].sql);
    const TaskResult& t = r->tasks[i];
    ASSERT_TRUE(t.status.ok()) << t.status;
    if (tasks[i].node == n1) {
      ++local;
      EXPECT_TRUE(t.ran_locally);
      EXPECT_EQ(t.node, n1);
      ASSERT_EQ(t.rows.size(), 1u);
      EXPECT_EQ(t.rows[0][0], absl::StrCat("local:", tasks[i].sql));
    } else {
      EXPECT_FALSE(t.ran_locally);
      ASSERT_EQ(t.rows.size(), 1u);
      EXPECT_EQ(t.rows[0][0], std::to_string(i));
    }
  }
  EXPECT_EQ(static_cast<int>(recorder.seen().size()), local);
  EXPECT_EQ(r->stats.tasks_run_locally, local);
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 0u);
  EXPECT_EQ(IntValue(*obs1_, kCoordinatorBackends), 0) << "connected to the local node";
  Report("local failover (local_shared_pool_size = -1)",
         absl::StrCat(local, " tasks ran locally, callback called ", recorder.seen().size(),
                      " times"));
}

TEST_F(ExecutorTest, LocalFailoverWhenTheLocalLimitIsReached) {
  const NodeAddress n1 = Addr(*w1_);
  LocalRecorder recorder;
  StandaloneContext::Settings settings = Settings(16);
  settings.local_node = n1;
  settings.limits.local_shared_pool_size = 1;
  settings.run_locally = recorder.Callback();
  std::unique_ptr<Owner> holder = MustRegister(table());
  absl::StatusOr<Slot> held = holder->TryAcquire(KeyOf(n1), Limit::ForLocal(settings.limits, 0));
  ASSERT_TRUE(held.ok()) << held.status();
  {
    Session s(table(), settings);
    const std::vector<Task> tasks(6, Task{n1, "SELECT 'remote'"});
    const absl::Time began = absl::Now();
    absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
    const absl::Duration took = absl::Now() - began;
    ASSERT_TRUE(r.ok()) << r.status();
    for (const TaskResult& t : r->tasks) {
      ASSERT_TRUE(t.status.ok()) << t.status;
      EXPECT_TRUE(t.ran_locally);
      ASSERT_EQ(t.rows.size(), 1u);
      EXPECT_EQ(t.rows[0][0], "local:SELECT 'remote'");
    }
    EXPECT_EQ(recorder.seen().size(), 6u);
    EXPECT_EQ(r->stats.waited_for_first, 0) << "a local connection must never be waited for";
    EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 1u) << "only the held slot";
    Report("local failover at the local limit (1, held by another owner)",
           absl::StrFormat("6 tasks ran locally in %.1f ms", Ms(took)));
  }
  held->Release();
}

TEST_F(ExecutorTest, LocalTaskThatMayNotRunLocallyFailsNamingTheNode) {
  const NodeAddress n1 = Addr(*w1_);
  LocalRecorder recorder;
  StandaloneContext::Settings settings = Settings(16);
  settings.local_node = n1;
  settings.limits.local_shared_pool_size = kNeverConnectToSelf;
  settings.run_locally = recorder.Callback();
  Session s(table(), settings);
  std::vector<Task> tasks = {Task{n1, "SELECT 'may run locally'", true},
                             Task{n1, "SELECT 'must run remotely'", false}};
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tasks[0].status.ok()) << r->tasks[0].status;
  EXPECT_TRUE(r->tasks[0].ran_locally);
  EXPECT_FALSE(r->tasks[1].status.ok());
  EXPECT_FALSE(r->tasks[1].ran_locally);
  EXPECT_THAT(std::string(r->tasks[1].status.message()), HasSubstr(n1.ToString()));
  EXPECT_EQ(recorder.seen(), std::vector<std::string>{"SELECT 'may run locally'"});
  Report("allow_local = false on the local node", r->tasks[1].status.ToString());
}

}  // namespace
}  // namespace connthrottle::testing
