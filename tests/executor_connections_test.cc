// How the executor opens and keeps connections: slow start, a cached
// connection reused by later executions, every backend a worker starts
// counted as an attempt, and waiting for results without spinning.

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "gtest/gtest.h"
#include "tests/testing/executor_fixture.h"

namespace connthrottle::testing {
namespace {

TEST_F(ExecutorTest, SlowStartOpensConnectionsGradually) {
  // Every task blocks on an advisory lock the test holds on the worker, so no
  // task finishes and the queue never drains: the pool must grow to
  // max_pool_size, and only slow start decides when each connection starts.
  // Slow start's budget gives lower bounds on those times (no optional
  // connection in the first interval, then at most 2, 3, 4, ... per interval),
  // which a slower machine can only make later: nothing here depends on speed.
  const NodeAddress n1 = Addr(*w1_);
  const absl::Duration interval = absl::Milliseconds(20);
  constexpr int kMaxPool = 8;
  ExecutorOptions options;
  options.max_pool_size = kMaxPool;
  options.slow_start_interval = interval;
  Session s(table(), Settings(16), options);
  ASSERT_TRUE(obs1_->Exec("SELECT pg_advisory_lock(4242)").ok());
  const std::vector<Task> tasks(60, Task{n1, "SELECT pg_advisory_xact_lock_shared(4242)"});

  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::thread runner([&] {
    r = s.executor.Execute(tasks);
    done = true;
  });
  const char* blocked =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND backend_type = 'client backend' AND wait_event_type = 'Lock'";
  const bool grew =
      PollUntil([&] { return done || IntValue(*obs1_, blocked) >= kMaxPool; }, absl::Seconds(60));
  const bool finished_early = done.load();
  ASSERT_TRUE(obs1_->Exec("SELECT pg_advisory_unlock(4242)").ok());
  runner.join();
  ASSERT_FALSE(finished_early) << "the execution ended while every task was blocked";
  EXPECT_TRUE(grew) << "the pool never grew to max_pool_size while its queue was full";
  ASSERT_TRUE(r.ok()) << r.status();
  for (const TaskResult& t : r->tasks) EXPECT_TRUE(t.status.ok()) << t.status;

  const std::vector<absl::Duration>& started = r->stats.started_after[n1];
  Report("slow start (interval 20 ms, max_pool_size 8, queue never drains): attempts started at",
         Durations(started));
  Report("slow start: connections ready at", Durations(r->stats.ready_after[n1]));
  ASSERT_EQ(started.size(), static_cast<size_t>(kMaxPool)) << Durations(started);
  EXPECT_EQ(r->stats.connections_opened, kMaxPool);
  ASSERT_TRUE(std::is_sorted(started.begin(), started.end()));
  // The first connection, then nothing for one interval; 2 more in the next,
  // 3 in the one after, 4 after that: the 2nd, 4th and 7th attempts cannot
  // start before 1, 2 and 3 intervals.
  EXPECT_GE(started[1], interval) << Durations(started);
  EXPECT_GE(started[3], 2 * interval) << Durations(started);
  EXPECT_GE(started[6], 3 * interval) << Durations(started);
}

TEST_F(ExecutorTest, FewShortTasksReuseOneCachedConnection) {
  // With one connection per pool, what is left to see is the cache: one
  // connection per worker, opened once and reused by every later execution.
  // The workers' own logs must agree. (Whether slow start opens more for
  // short tasks depends on how fast they run here, so that is reported by
  // the next test, not asserted.)
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  // Nobody else connects to the workers during the loop (the observers are
  // connected already), so every connection they receive is the executor's.
  const LoggedConnections before1 = Logged(*w1_), before2 = Logged(*w2_);
  std::vector<Task> tasks;
  for (int i = 0; i < 32; ++i) tasks.push_back(Task{i % 2 == 0 ? n1 : n2, "SELECT 1"});
  ExecutorOptions options;
  options.max_pool_size = 1;
  std::vector<int> started, reused;
  {
    Session s(table(), Settings(16), options);
    for (int e = 0; e < 20; ++e) {
      absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
      ASSERT_TRUE(r.ok()) << r.status();
      for (const TaskResult& t : r->tasks) ASSERT_TRUE(t.status.ok()) << t.status;
      started.push_back(r->stats.connections_started);
      reused.push_back(r->stats.connections_reused);
    }
  }
  Report("low churn, 20 x 32 SELECT 1: connection attempts started per execution",
         absl::StrCat("[", absl::StrJoin(started, " "), "]"));
  Report("low churn: connections reused per execution",
         absl::StrCat("[", absl::StrJoin(reused, " "), "]"));
  EXPECT_EQ(started[0], 2) << "one first connection per worker";
  for (int e = 1; e < 20; ++e) {
    EXPECT_EQ(started[e], 0) << "execution " << e << " connected again";
    EXPECT_EQ(reused[e], 2) << "execution " << e << " did not reuse both cached connections";
  }
  // The workers' view: each started exactly one backend for the executor. The
  // executor is gone and has waited for its backends to close, but the log is
  // read from a file the servers append to: await the figures.
  LoggedConnections after1, after2;
  PollUntil([&] {
    after1 = Logged(*w1_);
    after2 = Logged(*w2_);
    return after1.received - before1.received >= 1 && after2.received - before2.received >= 1;
  });
  Report("low churn: backends the workers started for the executor",
         absl::StrCat("worker1 ", after1.received - before1.received, ", worker2 ",
                      after2.received - before2.received));
  EXPECT_EQ(after1.received - before1.received, 1);
  EXPECT_EQ(after2.received - before2.received, 1);
}

TEST_F(ExecutorTest, EveryBackendAWorkerStartsIsCountedAsAConnectionAttempt) {
  // With the default slow start, short tasks may make the executor start
  // connections it then abandons while they are still connecting (the tasks
  // were done first). How many depends on the machine's speed, so that is
  // not asserted; what is asserted is that each one is counted: the workers'
  // logs show exactly as many backends as ExecutionStats says were started.
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  const LoggedConnections before1 = Logged(*w1_), before2 = Logged(*w2_);
  std::vector<Task> tasks;
  for (int i = 0; i < 64; ++i) {
    tasks.push_back(Task{i % 2 == 0 ? n1 : n2, i % 8 < 2 ? "SELECT pg_sleep(0.005)" : "SELECT 1"});
  }
  std::map<NodeAddress, int> started;
  int opened = 0, abandoned = 0, failed = 0;
  {
    Session s(table(), Settings(16));
    for (int e = 0; e < 10; ++e) {
      absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
      ASSERT_TRUE(r.ok()) << r.status();
      for (const TaskResult& t : r->tasks) ASSERT_TRUE(t.status.ok()) << t.status;
      for (const auto& [node, at] : r->stats.started_after) started[node] += at.size();
      opened += r->stats.connections_opened;
      abandoned += r->stats.connections_abandoned;
      failed += r->stats.connections_failed;
      EXPECT_EQ(r->stats.connections_started, r->stats.connections_opened +
                                                  r->stats.connections_failed +
                                                  r->stats.connections_abandoned);
    }
  }
  LoggedConnections after1, after2;
  const bool agreed = PollUntil([&] {
    after1 = Logged(*w1_);
    after2 = Logged(*w2_);
    return after1.received - before1.received == started[n1] &&
           after2.received - before2.received == started[n2];
  });
  Report("10 x 64 short tasks: attempts opened / abandoned / failed",
         absl::StrCat(opened, " / ", abandoned, " / ", failed));
  Report("10 x 64 short tasks: backends started, worker1 / worker2 (ExecutionStats vs logs)",
         absl::StrCat(started[n1], " vs ", after1.received - before1.received, " / ", started[n2],
                      " vs ", after2.received - before2.received));
  EXPECT_TRUE(agreed) << "the workers started backends the executor did not count";
  EXPECT_GE(started[n1], 1);
  EXPECT_GE(started[n2], 1);
}

TEST_F(ExecutorTest, WaitingForResultsDoesNotSpin) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  ExecutorOptions options;
  options.max_pool_size = 1;
  Session s(table(), Settings(16), options);
  std::vector<Task> tasks = {Task{n1, "SELECT pg_sleep(0.2)"}, Task{n1, "SELECT pg_sleep(0.2)"},
                             Task{n1, "SELECT pg_sleep(0.2)"}, Task{n2, "SELECT 1"}};
  auto cpu = [] {
    rusage u{};
    getrusage(RUSAGE_THREAD, &u);
    return absl::DurationFromTimeval(u.ru_utime) + absl::DurationFromTimeval(u.ru_stime);
  };
  const absl::Duration cpu_before = cpu();
  const absl::Time start = absl::Now();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
  const absl::Duration wall = absl::Now() - start;
  const absl::Duration used = cpu() - cpu_before;
  ASSERT_TRUE(r.ok()) << r.status();
  for (const TaskResult& t : r->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
  Report("waiting 3 x pg_sleep(0.2) on one connection: CPU time / wall time",
         absl::StrCat(absl::FormatDuration(used), " / ", absl::FormatDuration(wall)));
  EXPECT_GE(wall, absl::Milliseconds(600));
  EXPECT_LT(used, wall / 4) << "the event loop spun instead of sleeping in poll()";
}

}  // namespace
}  // namespace connthrottle::testing
