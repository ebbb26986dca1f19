// The executor under the strict limit: never more coordinator connections
// than the limit, as the workers see them; optional connections refused while
// the slots are held and picked up later; more sessions than slots all make
// progress.

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "gtest/gtest.h"
#include "tests/testing/executor_fixture.h"

namespace connthrottle::testing {
namespace {

TEST_F(ExecutorTest, NeverMoreCoordinatorConnectionsThanTheLimit) {
  constexpr int kLimit = 3;
  constexpr int kThreads = 4;
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  std::vector<Task> tasks;
  for (int i = 0; i < 40; ++i)
    tasks.push_back(Task{i % 2 == 0 ? n1 : n2, "SELECT pg_sleep(0.005)"});

  std::atomic<bool> stop_sampling{false};
  std::atomic<int> peak1{0}, peak2{0}, samples{0}, sample_errors{0};
  std::atomic<uint32_t> table_peak{0};
  std::thread sampler([&] {
    absl::StatusOr<std::unique_ptr<PgClient>> c1 = w1_->Connect();
    absl::StatusOr<std::unique_ptr<PgClient>> c2 = w2_->Connect();
    if (!c1.ok() || !c2.ok()) {
      ++sample_errors;
      return;
    }
    while (!stop_sampling.load()) {
      absl::StatusOr<std::string> a = (*c1)->QueryValue(kCoordinatorBackends);
      absl::StatusOr<std::string> b = (*c2)->QueryValue(kCoordinatorBackends);
      if (!a.ok() || !b.ok()) {
        ++sample_errors;
        continue;
      }
      peak1 = std::max(peak1.load(), std::stoi(*a));
      peak2 = std::max(peak2.load(), std::stoi(*b));
      table_peak = std::max({table_peak.load(), table().ConnectionCount(KeyOf(n1)),
                             table().ConnectionCount(KeyOf(n2))});
      ++samples;
      absl::SleepFor(absl::Milliseconds(5));  // spacing of samples only
    }
  });

  std::vector<int> executions(kThreads, 0), bad_tasks(kThreads, 0), bad_runs(kThreads, 0);
  std::vector<std::string> first_error(kThreads);
  std::vector<int> opened(kThreads, 0);
  {
    // Every session runs until it has completed 3 executions and the sampler
    // has taken 20 samples, whatever the machine's speed; the deadline only
    // keeps a broken executor from hanging the test.
    std::vector<std::thread> threads;
    const absl::Time give_up = absl::Now() + absl::Minutes(2);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Session s(table(), Settings(kLimit));
        while ((executions[t] < 3 || samples.load() < 20) && absl::Now() < give_up) {
          absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
          if (!r.ok()) {
            ++bad_runs[t];
            if (first_error[t].empty()) first_error[t] = r.status().ToString();
            continue;
          }
          ++executions[t];
          opened[t] += r->stats.connections_opened;
          for (const TaskResult& tr : r->tasks) {
            if (!tr.status.ok()) {
              ++bad_tasks[t];
              if (first_error[t].empty()) first_error[t] = tr.status.ToString();
            }
          }
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  stop_sampling = true;
  sampler.join();

  Report("strict limit 3, 4 sessions: peak coordinator backends seen by the workers",
         absl::StrCat("worker1 ", peak1.load(), ", worker2 ", peak2.load(), " (", samples.load(),
                      " samples); peak count in the table ", table_peak.load()));
  Report("strict limit: executions per session / connections opened per session",
         absl::StrCat(absl::StrJoin(executions, " "), " / ", absl::StrJoin(opened, " ")));
  EXPECT_EQ(sample_errors.load(), 0);
  EXPECT_GE(samples.load(), 20);
  EXPECT_GE(std::max(peak1.load(), peak2.load()), 1) << "the sampler never saw a connection";
  EXPECT_LE(peak1.load(), kLimit) << "worker1 saw more coordinator backends than the limit";
  EXPECT_LE(peak2.load(), kLimit) << "worker2 saw more coordinator backends than the limit";
  EXPECT_LE(table_peak.load(), static_cast<uint32_t>(kLimit));
  for (int t = 0; t < kThreads; ++t) {
    SCOPED_TRACE(absl::StrCat("session ", t));
    EXPECT_GE(executions[t], 3);
    EXPECT_EQ(bad_runs[t], 0) << first_error[t];
    EXPECT_EQ(bad_tasks[t], 0) << first_error[t];
  }
}

TEST_F(ExecutorTest, OptionalConnectionsRefusedThenPickedUpLater) {
  const NodeAddress n1 = Addr(*w1_);
  const NodeKey k1 = KeyOf(n1);
  std::unique_ptr<Owner> holder = MustRegister(table());
  absl::StatusOr<Slot> held = holder->TryAcquire(k1, Limit::AtMost(2));
  ASSERT_TRUE(held.ok()) << held.status();

  Session s(table(), Settings(2));
  const std::vector<Task> tasks(30, Task{n1, "SELECT pg_sleep(0.02)"});
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::thread runner([&] {
    r = s.executor.Execute(tasks);
    done = true;
  });
  // The executor's first connection runs a task: release the held slot now.
  const bool busy =
      PollUntil([&] { return done || IntValue(*obs1_, kActiveCoordinatorQueries) >= 1; });
  const bool finished_early = done.load();
  const uint32_t count_while_held = table().ConnectionCount(k1);
  held->Release();
  runner.join();

  ASSERT_TRUE(busy) << "the executor never ran a task on worker1";
  ASSERT_FALSE(finished_early) << "the execution ended before the held slot was released";
  EXPECT_EQ(count_while_held, 2u) << "the executor's first connection plus the held slot";
  ASSERT_TRUE(r.ok()) << r.status();
  std::set<int> connections;
  for (const TaskResult& t : r->tasks) {
    EXPECT_TRUE(t.status.ok()) << t.status;
    connections.insert(t.connection);
  }
  Report("optional connections: refused while held / connections used after release",
         absl::StrCat(r->stats.optional_refused, " / ", connections.size(), " (ready after ",
                      Durations(r->stats.ready_after[n1]), ")"));
  EXPECT_GT(r->stats.optional_refused, 0);
  EXPECT_EQ(connections.size(), 2u) << "the refused optional connection was not picked up later";
  EXPECT_EQ(table().ConnectionCount(k1), static_cast<uint32_t>(s.executor.CachedConnections()[n1]));
}

TEST_F(ExecutorTest, MoreSessionsThanSlotsAllMakeProgress) {
  ASSERT_NO_FATAL_FAILURE(UseSharedSegment("fair"));
  constexpr int kThreads = 8;
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  const std::vector<Task> tasks = {
      Task{n1, "SELECT pg_sleep(0.01)"}, Task{n2, "SELECT pg_sleep(0.01)"},
      Task{n1, "SELECT pg_sleep(0.01)"}, Task{n2, "SELECT pg_sleep(0.01)"}};
  std::vector<int> completed(kThreads, 0), bad(kThreads, 0);
  std::vector<std::string> first_error(kThreads);
  std::atomic<uint32_t> table_peak{0};
  {
    // Every session keeps going until every session has completed 5
    // executions: one that starves keeps the others running against it until
    // the deadline, which only a starving session can reach.
    std::vector<std::thread> threads;
    std::atomic<int> sessions_done{0};
    const absl::Time give_up = absl::Now() + absl::Minutes(2);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Session s(table(), Settings(2));
        bool counted = false;
        while (sessions_done.load() < kThreads && absl::Now() < give_up) {
          if (!counted && completed[t] + bad[t] >= 5) {
            counted = true;
            ++sessions_done;
          }
          absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
          table_peak = std::max({table_peak.load(), table().ConnectionCount(KeyOf(n1)),
                                 table().ConnectionCount(KeyOf(n2))});
          bool ok = r.ok();
          if (!ok && first_error[t].empty()) first_error[t] = r.status().ToString();
          for (size_t i = 0; ok && i < r->tasks.size(); ++i) {
            if (!r->tasks[i].status.ok()) {
              ok = false;
              if (first_error[t].empty()) first_error[t] = r->tasks[i].status.ToString();
            }
          }
          ++(ok ? completed[t] : bad[t]);
        }
      });
    }
    for (std::thread& th : threads) th.join();
  }
  double sum = 0, sum_sq = 0;
  for (int c : completed) {
    sum += c;
    sum_sq += static_cast<double>(c) * c;
  }
  const double jain = sum_sq > 0 ? sum * sum / (kThreads * sum_sq) : 0;
  Report("fairness (8 sessions, limit 2 per worker, until each has 5): executions per session",
         absl::StrFormat("[%s], min %d, max %d, Jain's index %.3f", absl::StrJoin(completed, " "),
                         *std::min_element(completed.begin(), completed.end()),
                         *std::max_element(completed.begin(), completed.end()), jain));
  for (int t = 0; t < kThreads; ++t) {
    SCOPED_TRACE(absl::StrCat("session ", t));
    EXPECT_GE(completed[t] + bad[t], 5) << "a session starved";
    EXPECT_EQ(bad[t], 0) << first_error[t];
  }
  EXPECT_LE(table_peak.load(), 2u);
}

}  // namespace
}  // namespace connthrottle::testing
