// The adaptive executor (C++) against real PostgreSQL 15 workers: results per
// task, the strict limit as the workers themselves see it (pg_stat_activity),
// optional connections refused and picked up later, slow start, connection
// reuse across executions, local-execution failover, COPY with reservations,
// a worker that stops mid-run, a cached connection the worker killed, cancel,
// fairness between sessions competing for few slots, and a refused node.
//
// Two workers are started once for the whole binary and shared; every case
// has its own CounterTable (a heap table, or a named shared segment for the
// fairness case), so counters start at zero, and ends with every key's count
// at zero once its executors are gone, a clean Audit(), and no coordinator
// backend left on the workers.
//
// Cases synchronise only by polling conditions with deadlines. The figures
// they measure (peaks, connections opened, timings, fairness) are printed for
// a person to read in `ctest -V`; timing assertions are only liveness bounds.

#include "connthrottle/executor/executor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/executor/copy_stream.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "connthrottle/slot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/worker_pair.h"

namespace connthrottle::testing {
namespace {

class ExecutorTest : public WorkerPairTest {};

// 1 -------------------------------------------------------------------------

TEST_F(ExecutorTest, FanOutReturnsEachTasksOwnResult) {
  Session s(table(), Settings(16));
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  std::vector<Task> tasks;
  for (int i = 0; i < 64; ++i) {
    const bool fails = i % 9 == 4;
    tasks.push_back(Task{i % 2 == 0 ? n1 : n2,
                         fails ? absl::StrCat("SELECT ", i, " / 0")
                               : absl::StrCat("SELECT ", i, ", current_setting('port')")});
  }
  const absl::Time began = absl::Now();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
  const absl::Duration took = absl::Now() - began;
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tasks.size(), tasks.size());
  int failed = 0;
  for (int i = 0; i < 64; ++i) {
    SCOPED_TRACE(absl::StrCat("task ", i, ": ", tasks[i].sql));
    const TaskResult& t = r->tasks[i];
    EXPECT_EQ(t.node, tasks[i].node);
    EXPECT_FALSE(t.ran_locally);
    if (i % 9 == 4) {
      ++failed;
      EXPECT_FALSE(t.status.ok());
      EXPECT_EQ(t.sqlstate, "22012") << t.status;
      EXPECT_THAT(std::string(t.status.message()), HasSubstr(tasks[i].node.ToString()));
      EXPECT_THAT(std::string(t.status.message()), HasSubstr("division by zero"));
      continue;
    }
    ASSERT_TRUE(t.status.ok()) << t.status;
    EXPECT_EQ(t.sqlstate, "");
    EXPECT_EQ(t.command_tag, "SELECT 1");
    ASSERT_EQ(t.rows.size(), 1u);
    ASSERT_EQ(t.rows[0].size(), 2u);
    EXPECT_EQ(t.rows[0][0], std::to_string(i));
    EXPECT_EQ(t.rows[0][1], std::to_string(tasks[i].node.port));
    EXPECT_GE(t.connection, 0);
  }
  EXPECT_GT(failed, 0);
  Report(
      "fan-out: 64 tasks over 2 workers",
      absl::StrFormat("%.1f ms, %d failing as intended, %d connections opened, %d reused", Ms(took),
                      failed, r->stats.connections_opened, r->stats.connections_reused));
}

// 2 -------------------------------------------------------------------------

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

// 3 -------------------------------------------------------------------------

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

// 4 -------------------------------------------------------------------------

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

// 5 -------------------------------------------------------------------------

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

// 6 -------------------------------------------------------------------------

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

// 7 -------------------------------------------------------------------------

TEST_F(ExecutorTest, CopyWithReservationsLandsEveryRowOnItsNode) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  for (LocalServer* w : {w1_, w2_}) {
    ASSERT_TRUE(w->Query("CREATE TABLE copy_target (id int, payload text)").ok());
  }
  constexpr int kRows = 101;
  {
    Session s(table(), Settings(16));
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(s.executor, {n1, n2}, "COPY copy_target FROM STDIN",
                          absl::Now() + absl::Seconds(10), [] { return false; });
    ASSERT_TRUE(copy.ok()) << copy.status();
    for (const NodeAddress& n : {n1, n2}) {
      std::optional<KeyStats> k = StatsOf(table(), n);
      ASSERT_TRUE(k.has_value()) << "no reservation for " << n.ToString();
      EXPECT_EQ(k->reserved, 1u) << n.ToString();
      EXPECT_EQ(k->connections, 1u) << n.ToString();
    }
    EXPECT_EQ(IntValue(*obs1_, kCoordinatorBackends), 0) << "connected before any row";
    EXPECT_EQ(IntValue(*obs2_, kCoordinatorBackends), 0) << "connected before any row";
    for (int id = 0; id < kRows; ++id) {
      absl::Status sent = (*copy)->Send(id % 2, absl::StrCat(id, "\trow ", id, "\n"));
      ASSERT_TRUE(sent.ok()) << sent;
    }
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = (*copy)->Finish();
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), 2u);
    const uint64_t expected_rows[2] = {(kRows + 1) / 2, kRows / 2};
    for (int i = 0; i < 2; ++i) {
      const CopyStream::NodeResult& nr = (*results)[i];
      SCOPED_TRACE(nr.node.ToString());
      EXPECT_TRUE(nr.status.ok()) << nr.status;
      EXPECT_TRUE(nr.connected);
      EXPECT_EQ(nr.rows_sent, expected_rows[i]);
      EXPECT_EQ(nr.command_tag, absl::StrCat("COPY ", expected_rows[i]));
    }
    copy->reset();
    for (int i = 0; i < 2; ++i) {
      LocalServer* w = i == 0 ? w1_ : w2_;
      absl::StatusOr<QueryResult> q = w->Query(
          absl::StrCat("SELECT count(*), count(*) FILTER (WHERE id % 2 <> ", i,
                       " OR payload <> 'row ' || id), coalesce(sum(id), 0) FROM copy_target"));
      ASSERT_TRUE(q.ok()) << q.status();
      int64_t sum = 0;
      for (int id = i; id < kRows; id += 2) sum += id;
      EXPECT_EQ(q->rows[0][0], std::to_string(expected_rows[i])) << w->name();
      EXPECT_EQ(q->rows[0][1], "0") << w->name() << ": rows of the other node";
      EXPECT_EQ(q->rows[0][2], std::to_string(sum)) << w->name();
    }
    // What is counted now is exactly what the cache holds.
    std::map<NodeAddress, int> cached = s.executor.CachedConnections();
    for (const NodeAddress& n : {n1, n2}) {
      EXPECT_EQ(table().ConnectionCount(KeyOf(n)), static_cast<uint32_t>(cached[n]))
          << n.ToString();
    }
    // (A cached connection that consumed a reservation still counts as
    // reserved: the slot keeps its kind until the connection gives it back.)
    std::optional<KeyStats> k1 = StatsOf(table(), n1), k2 = StatsOf(table(), n2);
    Report("COPY: rows per node / cached connections after / of which reported reserved",
           absl::StrCat(expected_rows[0], "+", expected_rows[1], " / ", cached[n1], "+", cached[n2],
                        " / ", k1 ? k1->reserved : 0u, "+", k2 ? k2->reserved : 0u));
  }
  for (LocalServer* w : {w1_, w2_}) ASSERT_TRUE(w->Query("DROP TABLE copy_target").ok());
}

TEST_F(ExecutorTest, CopyNodeWithoutRowsIsNeverConnectedAndItsReservationGivenBack) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  for (LocalServer* w : {w1_, w2_}) {
    ASSERT_TRUE(w->Query("CREATE TABLE copy_target2 (id int)").ok());
  }
  const int received_before2 = Logged(*w2_).received;
  {
    Session s(table(), Settings(16));
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(s.executor, {n1, n2}, "COPY copy_target2 FROM STDIN",
                          absl::Now() + absl::Seconds(10), [] { return false; });
    ASSERT_TRUE(copy.ok()) << copy.status();
    std::optional<KeyStats> k2 = StatsOf(table(), n2);
    ASSERT_TRUE(k2.has_value());
    EXPECT_EQ(k2->reserved, 1u);
    for (int id = 0; id < 10; ++id) {
      ASSERT_TRUE((*copy)->Send(0, absl::StrCat(id, "\n")).ok());
    }
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = (*copy)->Finish();
    ASSERT_TRUE(results.ok()) << results.status();
    EXPECT_TRUE((*results)[0].connected);
    EXPECT_EQ((*results)[0].rows_sent, 10u);
    EXPECT_TRUE((*results)[0].status.ok()) << (*results)[0].status;
    EXPECT_FALSE((*results)[1].connected);
    EXPECT_EQ((*results)[1].rows_sent, 0u);
    EXPECT_TRUE((*results)[1].status.ok()) << (*results)[1].status;
    EXPECT_EQ(table().ConnectionCount(KeyOf(n2)), 0u) << "the unused reservation was kept";
    EXPECT_EQ(table().ConnectionCount(KeyOf(n1)),
              static_cast<uint32_t>(s.executor.CachedConnections()[n1]));
    copy->reset();
    EXPECT_EQ(IntValue(*obs2_, "SELECT count(*) FROM copy_target2"), 0);
    EXPECT_EQ(IntValue(*obs1_, "SELECT count(*) FROM copy_target2"), 10);
  }
  EXPECT_EQ(Logged(*w2_).received - received_before2, 0)
      << "worker2 was connected to without getting a row";
  for (LocalServer* w : {w1_, w2_}) ASSERT_TRUE(w->Query("DROP TABLE copy_target2").ok());
}

// 8 -------------------------------------------------------------------------

TEST_F(ExecutorTest, WorkerStoppedMidRun) {
  absl::StatusOr<std::unique_ptr<LocalServer>> started =
      LocalServer::Start(*root_, ServerConfig{.name = "worker3",
                                              .max_connections = 40,
                                              .settings = {{"log_connections", "on"}}});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<LocalServer> w3 = *std::move(started);
  const NodeAddress n3 = Addr(*w3);
  keys_.push_back(KeyOf(n3));
  absl::StatusOr<std::unique_ptr<PgClient>> obs3 = w3->Connect();
  ASSERT_TRUE(obs3.ok()) << obs3.status();

  Session s(table(), Settings(16));
  // Tasks that never end on their own: each must end through the stop.
  const std::vector<Task> tasks(20, Task{n3, "SELECT pg_sleep(600)"});
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::thread runner([&] {
    r = s.executor.Execute(tasks);
    done = true;
  });
  const bool running =
      PollUntil([&] { return done || IntValue(**obs3, kActiveCoordinatorQueries) >= 2; });
  const int running_before_stop = IntValue(**obs3, kActiveCoordinatorQueries);
  obs3->reset();
  const absl::Time stop_began = absl::Now();
  absl::Status stopped = w3->Stop();
  const bool returned = PollUntil([&] { return done.load(); }, absl::Seconds(120));
  const absl::Duration took = absl::Now() - stop_began;
  if (!returned) s.context.Cancel();  // do not hang the binary
  runner.join();
  ASSERT_TRUE(running) << "the tasks never ran";
  ASSERT_TRUE(stopped.ok()) << stopped;
  ASSERT_TRUE(returned) << "the execution hung after the worker stopped";
  ASSERT_TRUE(r.ok()) << r.status();
  std::map<std::string, int> errors;
  for (const TaskResult& t : r->tasks) {
    EXPECT_FALSE(t.status.ok()) << "a 600 s task completed although its worker stopped";
    EXPECT_THAT(std::string(t.status.message()), HasSubstr(n3.ToString()));
    // Lost (08006), refused (08001) or terminated by the worker (57P01).
    EXPECT_THAT(t.sqlstate, ::testing::AnyOf("08006", "08001", "57P01")) << t.status;
    std::string e(t.status.message().substr(0, 90));
    ++errors[e];
  }
  Report("worker stopped mid-run",
         absl::StrFormat("%d tasks running at the stop; execution returned %.0f ms after the "
                         "stop began",
                         running_before_stop, Ms(took)));
  for (const auto& [e, n] : errors) Report("worker stopped: error", absl::StrCat(n, " x ", e));
  EXPECT_EQ(table().ConnectionCount(KeyOf(n3)),
            static_cast<uint32_t>(s.executor.CachedConnections()[n3]));
  EXPECT_EQ(s.executor.CachedConnections()[n3], 0) << "dead connections were cached";

  // The worker comes back and the same executor works with it again.
  ASSERT_TRUE(w3->StartAgain().ok());
  absl::StatusOr<ExecutionResult> again =
      s.executor.Execute({Task{n3, "SELECT 1"}, Task{n3, "SELECT 2"}});
  ASSERT_TRUE(again.ok()) << again.status();
  for (const TaskResult& t : again->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
  s.executor.CloseIdle();
  EXPECT_EQ(table().ConnectionCount(KeyOf(n3)), 0u);
}

// 9 -------------------------------------------------------------------------

TEST_F(ExecutorTest, CachedConnectionKilledOnTheWorkerIsDetectedBeforeReuse) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  Session s(table(), Settings(16));
  std::vector<Task> tasks;
  for (int i = 0; i < 8; ++i) tasks.push_back(Task{i % 2 == 0 ? n1 : n2, "SELECT 1"});
  absl::StatusOr<ExecutionResult> first = s.executor.Execute(tasks);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(s.executor.CachedConnections()[n1], 1);
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, kCoordinatorBackends) == 1; }))
      << "worker1 should see exactly the cached connection";
  ASSERT_EQ(IntValue(*obs1_,
                     "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     "WHERE application_name = 'connthrottle'"),
            1);
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, kCoordinatorBackends) == 0; }));
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 1u) << "the dead cached connection's slot";

  absl::StatusOr<ExecutionResult> second = s.executor.Execute(tasks);
  ASSERT_TRUE(second.ok()) << second.status();
  for (const TaskResult& t : second->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
  Report("killed cached connection: cached_discarded / tasks_retried / reused",
         absl::StrCat(second->stats.cached_discarded, " / ", second->stats.tasks_retried, " / ",
                      second->stats.connections_reused));
  EXPECT_GE(second->stats.cached_discarded + second->stats.tasks_retried, 1);
  std::map<NodeAddress, int> cached = s.executor.CachedConnections();
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), static_cast<uint32_t>(cached[n1]));
  EXPECT_EQ(table().ConnectionCount(KeyOf(n2)), static_cast<uint32_t>(cached[n2]));
  EXPECT_TRUE(PollUntil([&] { return IntValue(*obs1_, kCoordinatorBackends) == cached[n1]; }))
      << "worker1's coordinator backends differ from the cached connections";
}

// 10 ------------------------------------------------------------------------

TEST_F(ExecutorTest, CancelDuringExecution) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  Session s(table(), Settings(16));
  std::vector<Task> tasks;
  // Tasks far longer than any wait below: only the cancel can end them.
  for (int i = 0; i < 6; ++i) tasks.push_back(Task{i % 2 == 0 ? n1 : n2, "SELECT pg_sleep(600)"});
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::atomic<int64_t> returned_at_us{0};
  std::thread runner([&] {
    r = s.executor.Execute(tasks);
    returned_at_us = absl::ToUnixMicros(absl::Now());
    done = true;
  });
  const bool running = PollUntil([&] {
    return done || (IntValue(*obs1_, kActiveCoordinatorQueries) >= 1 &&
                    IntValue(*obs2_, kActiveCoordinatorQueries) >= 1);
  });
  const absl::Time cancelled_at = absl::Now();
  s.context.Cancel();
  const bool returned = PollUntil([&] { return done.load(); }, absl::Seconds(120));
  runner.join();
  const absl::Duration to_return = absl::FromUnixMicros(returned_at_us.load()) - cancelled_at;
  ASSERT_TRUE(running) << "the tasks never ran";
  ASSERT_TRUE(returned);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();

  // Only idle cached connections still hold slots.
  std::map<NodeAddress, int> cached = s.executor.CachedConnections();
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), static_cast<uint32_t>(cached[n1]));
  EXPECT_EQ(table().ConnectionCount(KeyOf(n2)), static_cast<uint32_t>(cached[n2]));
  // The remote queries were cancelled: the workers no longer run them.
  EXPECT_TRUE(PollUntil(
      [&] {
        return IntValue(*obs1_, kActiveCoordinatorQueries) == 0 &&
               IntValue(*obs2_, kActiveCoordinatorQueries) == 0;
      },
      absl::Seconds(120)))
      << "pg_sleep(600) still runs on a worker after the cancel";
  Report("cancel: Execute returned after / queries gone from the workers after",
         absl::StrFormat("%.1f ms / %.1f ms (cached after: %d + %d)", Ms(to_return),
                         Ms(absl::Now() - cancelled_at), cached[n1], cached[n2]));
  s.context.Reset();
}

// 11 ------------------------------------------------------------------------

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

// 12 ------------------------------------------------------------------------

TEST_F(ExecutorTest, ConnectionRefusedNodeFailsQuicklyNamingTheNode) {
  const int port = UnusedPort();
  ASSERT_GT(port, 0);
  const NodeAddress nowhere{"127.0.0.1", port};
  keys_.push_back(KeyOf(nowhere));
  // A refused connection must fail at once, not after the connect timeout:
  // make that timeout longer than the test could ever take.
  ExecutorOptions options;
  options.connect_timeout = absl::Minutes(10);
  Session s(table(), Settings(16), options);
  const NodeAddress n1 = Addr(*w1_);
  const absl::Time began = absl::Now();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(
      {Task{nowhere, "SELECT 1"}, Task{nowhere, "SELECT 2"}, Task{n1, "SELECT 3"}});
  const absl::Duration took = absl::Now() - began;
  ASSERT_TRUE(r.ok()) << r.status();
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(absl::IsUnavailable(r->tasks[i].status)) << r->tasks[i].status;
    EXPECT_THAT(std::string(r->tasks[i].status.message()), HasSubstr(nowhere.ToString()));
    EXPECT_EQ(r->tasks[i].sqlstate, "08001");  // sqlclient_unable_to_establish_sqlconnection
  }
  EXPECT_TRUE(r->tasks[2].status.ok())
      << "the other node's task was disturbed: " << r->tasks[2].status;
  EXPECT_GE(r->stats.connections_failed, 1);
  EXPECT_LT(took, options.connect_timeout) << "waited for the connect timeout";
  EXPECT_THAT(std::string(r->tasks[0].status.message()), HasSubstr("refused"));
  EXPECT_EQ(table().ConnectionCount(KeyOf(nowhere)), 0u);
  Report("refused node",
         absl::StrFormat("failed after %.1f ms: %s", Ms(took), r->tasks[0].status.ToString()));
}

// The coordinator's peak resident memory (VmHWM), after resetting the peak
// to the current size (clear_refs 5); -1 when /proc does not allow it.
int64_t ResetPeakRssKb() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  return clear ? 0 : -1;
}
int64_t PeakRssKb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    int64_t kb = 0;
    if (std::sscanf(line.c_str(), "VmHWM: %" SCNd64 " kB", &kb) == 1) return kb;
  }
  return -1;
}
int64_t RssKb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    int64_t kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %" SCNd64 " kB", &kb) == 1) return kb;
  }
  return -1;
}

// With max_rows_kept, a task's rows are counted as they arrive and all but
// the first are dropped: a 2-million-row result costs the coordinator about
// one row's memory (buffered whole by libpq, about 120 MB).
TEST_F(ExecutorTest, RowsPastMaxRowsKeptAreCountedNotKept) {
  ExecutorOptions options;
  options.max_rows_kept = 1;
  Session s(table(), Settings(4), options);
  const NodeAddress n1 = Addr(*w1_);
  constexpr int64_t kRows = 2000000;
  ASSERT_EQ(ResetPeakRssKb(), 0);
  const int64_t before = RssKb();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(
      {Task{n1, absl::StrCat("SELECT g, 'row ' || g FROM generate_series(1, ", kRows, ") g")},
       Task{n1, "SELECT 1; SELECT 'a' UNION ALL SELECT 'b'"}, Task{n1, "SELECT 1 WHERE false"}});
  const int64_t peak = PeakRssKb();
  ASSERT_TRUE(r.ok()) << r.status();
  const TaskResult& big = r->tasks[0];
  ASSERT_TRUE(big.status.ok()) << big.status;
  EXPECT_EQ(big.row_count, kRows);
  ASSERT_EQ(big.rows.size(), 1u);
  EXPECT_EQ(big.rows[0][0], "1");
  EXPECT_EQ(big.rows[0][1], "row 1");
  EXPECT_EQ(big.columns, (std::vector<std::string>{"g", "?column?"}));
  EXPECT_EQ(big.command_tag, absl::StrCat("SELECT ", kRows));
  // Several result sets: the last one is reported, counted from zero.
  const TaskResult& multi = r->tasks[1];
  ASSERT_TRUE(multi.status.ok()) << multi.status;
  EXPECT_EQ(multi.row_count, 2);
  ASSERT_EQ(multi.rows.size(), 1u);
  EXPECT_EQ(multi.rows[0][0], "a");
  EXPECT_EQ(r->tasks[2].row_count, 0);
  EXPECT_TRUE(r->tasks[2].rows.empty());
  EXPECT_EQ(r->tasks[2].command_tag, "SELECT 0");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Sanitizers keep freed memory in quarantine: growth says nothing here.
  Report("rows kept", absl::StrFormat("peak %+.1f MB (sanitizer build)", (peak - before) / 1024.0));
#else
  ASSERT_GT(before, 0);
  ASSERT_GT(peak, 0);
  EXPECT_LT(peak - before, 32 * 1024)
      << "reading " << kRows << " rows grew the peak RSS by " << (peak - before) / 1024 << " MB";
  Report("rows kept", absl::StrFormat("%d rows read, 1 kept: peak RSS %+.1f MB", kRows,
                                      (peak - before) / 1024.0));
#endif
}

}  // namespace
}  // namespace connthrottle::testing
