// The shared limit across concurrent coordinator sessions, checked from the
// workers' own pg_stat_activity, and idle sessions that never hold a node's
// last slot.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using namespace std::chrono_literals;

TEST_P(PgExecutorTest, SharedLimitHoldsAcrossConcurrentCoordinatorSessions) {
  constexpr int kLimit = 2;
  constexpr int kSessions = 6;
  constexpr int kTasks = 20;
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", std::to_string(kLimit)));
  std::vector<std::unique_ptr<PgClient>> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.push_back(Connect());
    ASSERT_NE(clients.back(), nullptr);
  }
  std::vector<std::unique_ptr<PgClient>> samplers;
  for (int w = 0; w < 2; ++w) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[w]->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    samplers.push_back(*std::move(c));
  }
  std::unique_ptr<PgClient> counter_sampler = Connect();
  ASSERT_NE(counter_sampler, nullptr);

  std::vector<TaskSpec> tasks;
  for (int i = 0; i < kTasks; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(0.01)"});

  std::atomic<bool> stop{false};
  std::atomic<int> peak[2] = {0, 0};
  std::atomic<int> samples[2] = {0, 0};
  std::atomic<int> counted_peak{0};
  std::atomic<int> counter_samples{0};
  std::atomic<int> queued_peak{0};  // the communicator's queue (shared pool)
  std::atomic<bool> sample_failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      while (!stop.load()) {
        absl::StatusOr<std::string> v = samplers[w]->QueryValue(kCoordinatorConnections);
        if (!v.ok()) {
          sample_failed = true;
          return;
        }
        const int n = std::stoi(*v);
        if (n > peak[w].load()) peak[w] = n;
        ++samples[w];
      }
    });
  }
  // The coordinator's own count of slots held for each worker.
  threads.emplace_back([&] {
    while (!stop.load()) {
      absl::StatusOr<std::string> v = counter_sampler->QueryValue(absl::StrCat(
          "SELECT coalesce(max(connections), 0) FROM connthrottle.nodes WHERE port IN (", Port(0),
          ", ", Port(1), ")"));
      if (!v.ok()) {
        sample_failed = true;
        return;
      }
      const int n = std::stoi(*v);
      if (n > counted_peak.load()) counted_peak = n;
      ++counter_samples;
      if (OnSharedPool()) {
        absl::StatusOr<std::string> q =
            counter_sampler->QueryValue("SELECT tasks_queued FROM connthrottle.pool_stats()");
        if (!q.ok()) {
          sample_failed = true;
          return;
        }
        queued_peak = std::max(queued_peak.load(), std::stoi(*q));
      }
    }
  });

  const std::string waited_before = Value(*obs_, "SELECT waited FROM connthrottle.table_stats()");
  // A first connection never needs to wait long here (an execution takes
  // tens of milliseconds); 10 s bounds the run if one starves.
  for (auto& c : clients) {
    ASSERT_TRUE(c->Exec("SET connthrottle.connection_wait_timeout = '10s'").ok());
  }
  std::latch go(kSessions);
  std::vector<std::string> failures(kSessions);
  std::vector<int> executions(kSessions, 0);
  std::vector<std::thread> sessions;
  const Clock::time_point began = Clock::now();
  for (int i = 0; i < kSessions; ++i) {
    sessions.emplace_back([&, i] {
      go.arrive_and_wait();
      // Until this session has 3 executions and the samplers 100 samples
      // each, however fast the machine; the deadline only stops a hang.
      const Clock::time_point give_up = Clock::now() + 120s;
      while ((executions[i] < 3 || samples[0].load() < 100 || samples[1].load() < 100) &&
             Clock::now() < give_up && failures[i].empty()) {
        absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*clients[i], tasks);
        if (!rows.ok()) {
          failures[i] = rows.status().ToString();
          break;
        }
        if (rows->size() != static_cast<size_t>(kTasks)) {
          failures[i] = absl::StrCat(rows->size(), " rows");
        }
        for (const TaskRow& r : *rows) {
          if (!r.success) failures[i] = ::testing::PrintToString(r);
        }
        ++executions[i];
      }
    });
  }
  for (std::thread& t : sessions) t.join();
  const Clock::duration took = Clock::now() - began;
  stop = true;
  for (std::thread& t : threads) t.join();

  int total = 0;
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_EQ(failures[i], "") << "session " << i;
    EXPECT_GE(executions[i], 3) << "session " << i << " did not complete 3 executions";
    total += executions[i];
  }
  EXPECT_FALSE(sample_failed.load());
  Report("6 sessions x run_tasks(20 x pg_sleep(0.01)) over 2 workers, limit 2",
         absl::StrCat(Ms(took), " ms, ", total, " executions (per session ",
                      absl::StrJoin(executions, "/"), ")"));
  Report("peak coordinator backends on worker1 / worker2 (pg_stat_activity)",
         absl::StrCat(peak[0].load(), " / ", peak[1].load(), " in ", samples[0].load(), " / ",
                      samples[1].load(), " samples (",
                      absl::StrFormat("%.2f", Ms(took) / std::max(1, samples[0].load())),
                      " ms apart)"));
  Report("peak slots counted per worker on the coordinator",
         absl::StrCat(counted_peak.load(), " in ", counter_samples.load(), " samples"));
  for (int w = 0; w < 2; ++w) {
    EXPECT_LE(peak[w].load(), kLimit) << "worker " << w + 1 << " saw more coordinator backends";
    EXPECT_GE(peak[w].load(), 1) << "the sampler never saw a coordinator backend";
    EXPECT_GE(samples[w].load(), 100);
  }
  EXPECT_LE(counted_peak.load(), kLimit);
  const int64_t waited = std::stoll(Value(*obs_, "SELECT waited FROM connthrottle.table_stats()")) -
                         std::stoll(waited_before);
  Report("waiting acquires during the run (first connections that waited)", std::to_string(waited));
  if (OnSharedPool()) {
    // Sessions wait for their tasks' turn, not for a slot: the pool never
    // waits (it only tries for more connections), its queue does.
    Report("peak tasks queued in the communicator (sampled every 100 ms)",
           std::to_string(queued_peak.load()));
    EXPECT_EQ(waited, 0) << "the shared pool waited for a slot";
    EXPECT_GT(queued_peak.load(), 0) << "the limit was never contended";
  } else {
    EXPECT_GT(waited, 0) << "the limit was never contended";
  }

  // Only idle cached connections remain, each a real worker backend.
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE(absl::StrCat("worker ", w + 1));
    const NodeCounters c = WorkerCounters(w);
    EXPECT_LE(c.connections, std::min(kLimit, kSessions));
    EXPECT_EQ(c.forced, 0);
    EXPECT_EQ(c.reserved, 0);
    EXPECT_EQ(c.waiters, 0);
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(w) == WorkerCounters(w).connections;
    })) << CoordinatorConnectionsOn(w)
        << " backends vs " << WorkerCounters(w);
    EXPECT_EQ(CoordinatorConnectionsOn(w, " AND state <> 'idle'"), 0);
  }
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
  // Ending the sessions gives everything back (TearDown checks the workers).
  clients.clear();
  counter_sampler.reset();
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; })) << Rows(*obs_, kNodes);
}

// A session that ran a query and went idle keeps a cached connection, and its
// slot; a session that then needs a first connection to that node must not
// wait for it in vain (executor.h: "no session sits on slots others wait
// for"; max_cached_conns_per_worker: "closed instead when the node has
// waiters").
// A session that goes idle cannot give back its cached connections until it
// runs again, so it keeps one only while the node still has a free slot with
// it counted: idle sessions never hold a node's last slot, and a session
// arriving later is never starved by them. On the shared pool no session
// holds anything: the communicator's connections serve every session, and
// the same sessions run without waiting.
TEST_P(PgExecutorTest, IdleSessionsNeverHoldANodesLastSlot) {
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  std::unique_ptr<PgClient> idle1 = Connect();
  std::unique_ptr<PgClient> idle2 = Connect();
  std::unique_ptr<PgClient> later = Connect();
  ASSERT_NE(idle1, nullptr);
  ASSERT_NE(idle2, nullptr);
  ASSERT_NE(later, nullptr);
  auto run = [&](PgClient& c, const std::string& sql) {
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(c, {{Host(), Port(0), sql}});
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && rows->size() == 1 && (*rows)[0].success;
  };
  const std::string cached_query = absl::StrCat(
      "SELECT coalesce(sum(cached), 0) FROM connthrottle.nodes WHERE port = ", Port(0));
  // On the pool: no session parks a connection; the pool's one is idle.
  auto expect_nothing_parked = [&] {
    EXPECT_EQ(Value(*obs_, cached_query), "0") << "a session parked a connection";
    ExpectIdleConnectionsOn(0, /*at_most=*/1);
  };
  ASSERT_TRUE(run(*idle1, "SELECT 1"));
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(expect_nothing_parked());
  } else {
    EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, 1, 0, 0, 0})) << "cached: a slot is still free";
    EXPECT_EQ(Value(*obs_, cached_query), "1") << "the idle session's connection is parked";
  }
  ASSERT_TRUE(run(*idle2, "SELECT 1"));
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(expect_nothing_parked());
  } else {
    // Another cached connection would have been the node's last slot.
    EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, 1, 0, 0, 0})) << "idle2 must not cache";
  }

  // Both idle: a third session gets the free slot at once, without waiting.
  // (A node's figures are cumulative while it keeps its entry: compare.)
  const std::string waited_query = absl::StrCat(
      "SELECT coalesce(sum(waited), 0) FROM connthrottle.nodes WHERE port = ", Port(0));
  const std::string waited_before = Value(*obs_, waited_query);
  ASSERT_TRUE(later->Exec("SET connthrottle.connection_wait_timeout = '2s'").ok());
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(run(*later, "SELECT 2"));
  Report("run_tasks while idle sessions have cached connections",
         absl::StrCat(Ms(Clock::now() - start), " ms"));
  EXPECT_EQ(Value(*obs_, waited_query), waited_before) << "nobody had to wait";

  // With limit 1 nothing is cached at all.
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  ASSERT_EQ(Value(*idle1, "SELECT connthrottle.release_all()"), "0");
  idle1.reset();  // its cached connection goes with it
  ASSERT_TRUE(PollUntil([&] { return WorkerCounters(0).rows == 0; }));
  ASSERT_TRUE(run(*idle2, "SELECT 3"));
  if (OnSharedPool()) {
    // The pool may keep the only slot: it serves `later` too.
    ASSERT_NO_FATAL_FAILURE(ExpectIdleConnectionsOn(0, /*at_most=*/1));
  } else {
    EXPECT_EQ(WorkerCounters(0).rows, 0) << "a cached connection would hold the only slot";
  }
  ASSERT_TRUE(run(*later, "SELECT 4"));
}

}  // namespace
}  // namespace connthrottle::cluster
