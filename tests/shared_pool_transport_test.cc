// The same cases on both transports (the direct AdaptiveExecutor and
// SharedPoolTransport): results per task, the strict limit as the workers see
// it with more sessions than slots, local failover, a refused node, bounded
// rows, cancel.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/executor/transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

class TransportTest : public PoolFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  bool shared() const { return GetParam() == "shared_pool"; }

  std::unique_ptr<AnySession> NewSession(StandaloneContext::Settings settings,
                                         int64_t max_rows_kept = -1) {
    if (shared()) {
      SharedPoolTransport::Options options;
      options.max_rows_kept = max_rows_kept;
      return PoolSession(std::move(settings), options);
    }
    auto s = std::make_unique<AnySession>(std::move(settings));
    s->owner = MustRegister(table());
    ExecutorOptions options;
    options.max_rows_kept = max_rows_kept;
    s->transport = std::make_unique<AdaptiveExecutor>(*s->owner, s->context, options);
    return s;
  }
};

TEST_P(TransportTest, FanOutReturnsEachTasksOwnResult) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  auto s = NewSession(Settings(16));
  std::vector<Task> tasks;
  for (int i = 0; i < 16; ++i) {
    tasks.push_back(Task{i % 2 == 0 ? n1 : n2,
                         absl::StrCat("SELECT ", i, " AS i, current_setting('port') AS port")});
  }
  tasks.push_back(Task{n1, "SELECT 1 FROM no_such_table"});
  absl::StatusOr<ExecutionResult> r = s->transport->Execute(tasks);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tasks.size(), tasks.size());
  for (int i = 0; i < 16; ++i) {
    const TaskResult& t = r->tasks[i];
    ASSERT_TRUE(t.status.ok()) << t.status;
    EXPECT_EQ(t.node, tasks[i].node);
    EXPECT_EQ(t.command_tag, "SELECT 1");
    EXPECT_THAT(t.columns, ::testing::ElementsAre("i", "port"));
    ASSERT_EQ(t.rows.size(), 1u);
    EXPECT_EQ(t.rows[0][0], std::to_string(i));
    EXPECT_EQ(t.rows[0][1], std::to_string(tasks[i].node.port));
  }
  const TaskResult& bad = r->tasks[16];
  EXPECT_FALSE(bad.status.ok());
  EXPECT_EQ(bad.sqlstate, "42P01");  // undefined_table
  EXPECT_THAT(std::string(bad.status.message()), HasSubstr(n1.ToString()));
}

TEST_P(TransportTest, MoreSessionsThanSlotsNeverExceedTheLimitOnTheWorkers) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  constexpr int kLimit = 3, kSessions = 12, kExecutions = 4;
  std::vector<std::unique_ptr<AnySession>> sessions;
  for (int i = 0; i < kSessions; ++i) sessions.push_back(NewSession(Settings(kLimit)));
  std::atomic<int> failures{0}, finished{0};
  std::vector<std::thread> threads;
  for (auto& s : sessions) {
    threads.emplace_back([&, session = s.get()] {
      for (int e = 0; e < kExecutions; ++e) {
        std::vector<Task> tasks;
        for (int i = 0; i < 6; ++i) tasks.push_back(Task{i % 2 ? n1 : n2, "SELECT pg_sleep(0.02)"});
        absl::StatusOr<ExecutionResult> r = session->transport->Execute(tasks);
        if (!r.ok()) {
          ++failures;
          continue;
        }
        for (const TaskResult& t : r->tasks) failures += t.status.ok() ? 0 : 1;
      }
      ++finished;
    });
  }
  // The workers' own view, sampled until every session is done.
  int peak1 = 0, peak2 = 0;
  while (finished.load() < kSessions) {
    peak1 = std::max(peak1, IntValue(*obs1_, kCoordinatorBackends));
    peak2 = std::max(peak2, IntValue(*obs2_, kCoordinatorBackends));
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(peak1, kLimit);
  EXPECT_LE(peak2, kLimit);
  EXPECT_GE(peak1, 1) << "never saw a connection: the sampling proves nothing";
  sessions.clear();
  Report(absl::StrCat(GetParam(), ": peak coordinator backends on the workers (limit ", kLimit,
                      ", ", kSessions, " sessions)"),
         absl::StrCat(peak1, " / ", peak2));
}

TEST_P(TransportTest, LocalNodeTasksRunInProcessWhenNoConnectionToSelfIsAllowed) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  std::mutex mu;
  std::vector<std::string> ran_locally;
  StandaloneContext::Settings settings = Settings(16);
  settings.local_node = n1;
  settings.limits.local_shared_pool_size = kNeverConnectToSelf;
  settings.run_locally = [&](const Task& task) {
    std::lock_guard<std::mutex> lock(mu);
    ran_locally.push_back(task.sql);
    TaskResult r;
    r.rows = {{std::optional<std::string>(absl::StrCat("local:", task.sql))}};
    return r;
  };
  auto s = NewSession(settings);
  std::vector<Task> tasks;
  for (int i = 0; i < 9; ++i)
    tasks.push_back(Task{i % 3 == 0 ? n2 : n1, absl::StrCat("SELECT ", i)});
  tasks.push_back(Task{n1, "SELECT 'pinned'", /*allow_local=*/false});
  absl::StatusOr<ExecutionResult> r = s->transport->Execute(tasks);
  ASSERT_TRUE(r.ok()) << r.status();
  int local = 0;
  for (int i = 0; i < 9; ++i) {
    const TaskResult& t = r->tasks[i];
    ASSERT_TRUE(t.status.ok()) << t.status;
    ASSERT_EQ(t.rows.size(), 1u);
    if (tasks[i].node == n1) {
      ++local;
      EXPECT_TRUE(t.ran_locally);
      EXPECT_EQ(t.rows[0][0], absl::StrCat("local:", tasks[i].sql));
    } else {
      EXPECT_FALSE(t.ran_locally);
      EXPECT_EQ(t.rows[0][0], std::to_string(i));
    }
  }
  EXPECT_EQ(r->tasks[9].sqlstate, "53300") << r->tasks[9].status;
  EXPECT_EQ(static_cast<int>(ran_locally.size()), local);
  EXPECT_EQ(r->stats.tasks_run_locally, local);
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 0u);
  EXPECT_EQ(IntValue(*obs1_, kCoordinatorBackends), 0) << "connected to the local node";
}

TEST_P(TransportTest, RefusedNodeFailsItsTasksNamingTheNode) {
  const int port = UnusedPort();
  ASSERT_GT(port, 0);
  const NodeAddress nowhere{"127.0.0.1", port};
  keys_.push_back(KeyOf(nowhere));
  auto s = NewSession(Settings(16));
  absl::StatusOr<ExecutionResult> r = s->transport->Execute(
      {Task{nowhere, "SELECT 1"}, Task{nowhere, "SELECT 2"}, Task{Addr(*w1_), "SELECT 3"}});
  ASSERT_TRUE(r.ok()) << r.status();
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(absl::IsUnavailable(r->tasks[i].status)) << r->tasks[i].status;
    EXPECT_THAT(std::string(r->tasks[i].status.message()), HasSubstr(nowhere.ToString()));
    EXPECT_EQ(r->tasks[i].sqlstate, "08001");
  }
  EXPECT_TRUE(r->tasks[2].status.ok()) << r->tasks[2].status;
}

TEST_P(TransportTest, RowsPastMaxRowsKeptAreCountedNotKept) {
  auto s = NewSession(Settings(16), /*max_rows_kept=*/5);
  absl::StatusOr<ExecutionResult> r =
      s->transport->Execute({Task{Addr(*w1_), "SELECT g FROM generate_series(1, 100000) g"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const TaskResult& t = r->tasks[0];
  ASSERT_TRUE(t.status.ok()) << t.status;
  EXPECT_EQ(t.row_count, 100000);
  ASSERT_EQ(t.rows.size(), 5u);
  EXPECT_EQ(t.rows[4][0], "5");
  EXPECT_EQ(t.command_tag, "SELECT 100000");
}

TEST_P(TransportTest, CancelStopsTheRunningQueriesOnTheWorkers) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  auto s = NewSession(Settings(16));
  std::vector<Task> tasks;
  // Far longer than any wait below: only the cancel ends them.
  for (int i = 0; i < 4; ++i) tasks.push_back(Task{i % 2 ? n1 : n2, "SELECT pg_sleep(600)"});
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::thread runner([&] {
    r = s->transport->Execute(tasks);
    done = true;
  });
  const std::string sleeping = ActiveQueries("pg_sleep(600)");
  const bool running = PollUntil(
      [&] { return done || (IntValue(*obs1_, sleeping) >= 1 && IntValue(*obs2_, sleeping) >= 1); });
  s->context.Cancel();
  const bool returned = PollUntil([&] { return done.load(); }, absl::Seconds(120));
  runner.join();
  ASSERT_TRUE(running) << "the tasks never ran";
  ASSERT_TRUE(returned);
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  EXPECT_TRUE(
      PollUntil([&] { return IntValue(*obs1_, sleeping) == 0 && IntValue(*obs2_, sleeping) == 0; },
                absl::Seconds(120)))
      << "pg_sleep(600) still runs on a worker after the cancel";
  // The session works again after the cancel.
  s->context.Reset();
  absl::StatusOr<ExecutionResult> again = s->transport->Execute({Task{n1, "SELECT 7"}});
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->tasks[0].status.ok()) << again->tasks[0].status;
  EXPECT_EQ(again->tasks[0].rows[0][0], "7");
}

INSTANTIATE_TEST_SUITE_P(BothTransports, TransportTest, ::testing::Values("direct", "shared_pool"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace connthrottle::testing
