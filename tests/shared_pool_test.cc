// The shared pool against real PostgreSQL 15 workers.
//
// TransportTest runs the same cases on both transports (the direct
// AdaptiveExecutor and SharedPoolTransport): results per task, the strict
// limit as the workers see it with more sessions than slots, local
// failover, a worker error, a refused node, bounded rows, cancel.
//
// SharedPoolTest checks what only the pool does: connections that outlive
// sessions (counted by the backends the workers started), round-robin
// between sessions (the order tasks ran, read from a sequence on the
// worker), idle connections closed after the idle timeout, a dead idle
// connection replaced, a worker backend killed mid-task (08006), a cancel
// that leaves the connection usable, a task that leaves a transaction open.
//
// Every case ends with every count at zero, a clean Audit() and no
// coordinator backend left on the workers (WorkerPairTest::TearDown), after
// its pool is destroyed. Cases synchronise by awaiting conditions.

#include "connthrottle/executor/shared_pool.h"

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/executor/transport.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/worker_pair.h"

namespace connthrottle::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// The backends of this test's coordinator connections that run `pattern`.
std::string ActiveQueries(const std::string& pattern) {
  return absl::StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND backend_type = 'client backend' AND state = 'active' AND query LIKE '%",
      pattern, "%'");
}

// One session of either transport.
struct AnySession {
  explicit AnySession(StandaloneContext::Settings settings) : context(std::move(settings)) {}
  std::unique_ptr<Owner> owner;  // direct transport only
  StandaloneContext context;
  std::unique_ptr<Transport> transport;
};

// A fixture with one SharedPool per case, created on first use with the
// limits of the settings it is given.
class PoolFixture : public WorkerPairTest {
 protected:
  void TearDown() override {
    pool_.reset();  // closes every pooled connection, giving back its slot
    pool_owner_.reset();
    WorkerPairTest::TearDown();
  }

  // The case's pool; made by the first call (from the test's main thread).
  SharedPool& Pool(const StandaloneContext::Settings& settings, SharedPoolOptions options = {}) {
    if (pool_ == nullptr) {
      pool_limits_ = std::make_unique<StandaloneContext>(settings);
      pool_owner_ = MustRegister(table());
      StandaloneContext* limits = pool_limits_.get();
      pool_ = std::make_unique<SharedPool>(
          *pool_owner_,
          [limits](const NodeAddress& node, bool local) { return limits->LimitFor(node, local); },
          options);
    }
    return *pool_;
  }

  std::unique_ptr<AnySession> PoolSession(StandaloneContext::Settings settings,
                                          SharedPoolTransport::Options options = {}) {
    SharedPool& pool = Pool(settings);
    auto s = std::make_unique<AnySession>(std::move(settings));
    s->transport = std::make_unique<SharedPoolTransport>(pool, s->context, options);
    return s;
  }

  std::unique_ptr<StandaloneContext> pool_limits_;
  std::unique_ptr<Owner> pool_owner_;
  std::unique_ptr<SharedPool> pool_;
};

// ---------------------------------------------------------------------------
// The same cases on both transports.

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

// ---------------------------------------------------------------------------
// What only the shared pool does.

class SharedPoolTest : public PoolFixture {
 protected:
  // The backend pid of the worker connection that runs a task.
  static int Pid(const TaskResult& t) {
    EXPECT_TRUE(t.status.ok()) << t.status;
    return t.status.ok() && t.rows.size() == 1 ? std::stoi(*t.rows[0][0]) : -1;
  }
};

TEST_F(SharedPoolTest, ConnectionsOutliveSessionsAndNeverExceedTheLimit) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  constexpr int kLimit = 4, kSessions = 16, kExecutions = 10;
  const LoggedConnections before1 = Logged(*w1_), before2 = Logged(*w2_);
  std::mutex mu;
  std::map<NodeAddress, std::set<int>> pids;
  std::atomic<int> failures{0};
  Pool(Settings(kLimit));  // before the threads: Pool() is not thread-safe
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&] {
      // A new session for every execution: connections must outlive them.
      for (int e = 0; e < kExecutions; ++e) {
        auto s = PoolSession(Settings(kLimit));
        std::vector<Task> tasks;
        for (int t = 0; t < 8; ++t)
          tasks.push_back(Task{t % 2 ? n1 : n2, "SELECT pg_backend_pid()"});
        absl::StatusOr<ExecutionResult> r = s->transport->Execute(tasks);
        if (!r.ok()) {
          ++failures;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        for (const TaskResult& t : r->tasks) {
          if (!t.status.ok())
            ++failures;
          else
            pids[t.node].insert(Pid(t));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  // Every task ran on one of at most kLimit connections per worker, and the
  // workers started no other backend for this coordinator.
  EXPECT_LE(pids[n1].size(), static_cast<size_t>(kLimit));
  EXPECT_LE(pids[n2].size(), static_cast<size_t>(kLimit));
  const int started1 = Logged(*w1_).authorized - before1.authorized;
  const int started2 = Logged(*w2_).authorized - before2.authorized;
  EXPECT_LE(started1, kLimit);
  EXPECT_LE(started2, kLimit);
  // The loop publishes its figures a moment after the results.
  EXPECT_TRUE(PollUntil([&] { return pool_->stats().tasks_run == kSessions * kExecutions * 8; }))
      << pool_->stats().tasks_run;
  const SharedPoolStats stats = pool_->stats();
  EXPECT_LE(stats.connections_started, 2 * kLimit);
  // Connections stay after their sessions, holding their slots.
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), static_cast<uint32_t>(pool_->Connections()[n1]));
  Report("shared pool: worker backends started for 1,280 tasks of 160 sessions (limit 4)",
         absl::StrCat(started1, " + ", started2, "; distinct backends ", pids[n1].size(), " + ",
                      pids[n2].size()));
}

TEST_F(SharedPoolTest, SessionsTakeTurnsOnABusyPool) {
  const NodeAddress n1 = Addr(*w1_);
  // One connection to worker1. Session A's 50 tasks queue behind its first,
  // which waits for an advisory lock the test holds; session B then submits
  // one task. Each task takes the next value of a sequence on the worker,
  // so the values give the order the tasks ran in.
  ASSERT_TRUE(w1_->Query("DROP SEQUENCE IF EXISTS ct_turns; CREATE SEQUENCE ct_turns").ok());
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4242)").ok());
  // Whatever fails below, the lock goes and the threads are joined.
  std::thread ta, tb;
  absl::Cleanup join = [&] {
    (void)obs1_->Query("SELECT pg_advisory_unlock_all()");
    if (ta.joinable()) ta.join();
    if (tb.joinable()) tb.join();
  };
  auto a = PoolSession(Settings(1));
  auto b = PoolSession(Settings(1));
  std::vector<Task> a_tasks{
      Task{n1, "SELECT pg_advisory_xact_lock_shared(4242), nextval('ct_turns')"}};
  for (int i = 1; i < 50; ++i) a_tasks.push_back(Task{n1, "SELECT 0, nextval('ct_turns')"});
  absl::StatusOr<ExecutionResult> ra = absl::UnknownError("not run");
  ta = std::thread([&] { ra = a->transport->Execute(a_tasks); });
  const std::string waiting =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND wait_event_type = 'Lock'";
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, waiting) == 1; }));
  absl::StatusOr<ExecutionResult> rb = absl::UnknownError("not run");
  tb = std::thread([&] {
    rb = b->transport->Execute({Task{n1, "SELECT 1, nextval('ct_turns')"}});
  });
  // B's task is queued behind A's 49 (the pool's queue, read by the test).
  ASSERT_TRUE(PollUntil([&] { return pool_->Queued()[n1] == 50; }));
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4242)").ok());
  std::move(join).Invoke();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_TRUE(rb->tasks[0].status.ok()) << rb->tasks[0].status;
  // A's first task took 1; B's came next, not after A's other 49.
  EXPECT_EQ(rb->tasks[0].rows[0][1], "2");
  EXPECT_EQ(ra->tasks[0].rows[0][1], "1");
  EXPECT_EQ(ra->tasks[49].rows[0][1], "51");
  ASSERT_TRUE(w1_->Query("DROP SEQUENCE ct_turns").ok());
}

TEST_F(SharedPoolTest, IdleConnectionsAreClosedAfterTheIdleTimeout) {
  const NodeAddress n1 = Addr(*w1_);
  SharedPoolOptions options;
  options.idle_timeout = absl::Milliseconds(200);
  Pool(Settings(4), options);
  auto s = PoolSession(Settings(4));
  absl::StatusOr<ExecutionResult> r = s->transport->Execute({Task{n1, "SELECT 1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->tasks[0].status.ok()) << r->tasks[0].status;
  ASSERT_TRUE(PollUntil([&] { return pool_->stats().closed_idle == 1; }));
  EXPECT_TRUE(pool_->Connections().empty());
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 0u);
  EXPECT_TRUE(PollUntil([&] { return IntValue(*obs1_, kCoordinatorBackends) == 0; }));
}

TEST_F(SharedPoolTest, ADeadIdleConnectionIsReplaced) {
  const NodeAddress n1 = Addr(*w1_);
  auto s = PoolSession(Settings(4));
  absl::StatusOr<ExecutionResult> r = s->transport->Execute({Task{n1, "SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const int pid = Pid(r->tasks[0]);
  ASSERT_EQ(IntValue(*obs1_, absl::StrCat("SELECT pg_terminate_backend(", pid, ")::int")), 1);
  // The pool sees its idle connection die, closes it and gives its slot back.
  ASSERT_TRUE(PollUntil([&] { return pool_->stats().closed_dead == 1; }));
  EXPECT_EQ(table().ConnectionCount(KeyOf(n1)), 0u);
  r = s->transport->Execute({Task{n1, "SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const int replacement = Pid(r->tasks[0]);
  EXPECT_NE(replacement, pid);
  EXPECT_EQ(pool_->stats().connections_opened, 2);
}

TEST_F(SharedPoolTest, AWorkerBackendKilledMidTaskFailsTheTaskWith08006) {
  const NodeAddress n1 = Addr(*w1_);
  auto s = PoolSession(Settings(4));
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::thread runner([&] { r = s->transport->Execute({Task{n1, "SELECT pg_sleep(600)"}}); });
  bool killed = false;
  absl::Cleanup join = [&] {
    if (!killed) s->context.Cancel();  // an assertion below failed first
    runner.join();
  };
  const std::string sleeping = ActiveQueries("pg_sleep(600)");
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, sleeping) == 1; }));
  ASSERT_EQ(IntValue(*obs1_,
                     "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                     "application_name = 'connthrottle' AND query LIKE '%pg_sleep(600)%'"),
            1);
  killed = true;
  std::move(join).Invoke();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tasks[0].sqlstate, "08006") << r->tasks[0].status;
  EXPECT_THAT(std::string(r->tasks[0].status.message()), HasSubstr(n1.ToString()));
  // The slot is given back once the loop has closed the connection.
  EXPECT_TRUE(PollUntil([&] { return table().ConnectionCount(KeyOf(n1)) == 0; }))
      << "the dead connection's slot is still held";
  s->context.Reset();
  // The next task gets a new connection.
  r = s->transport->Execute({Task{n1, "SELECT 1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tasks[0].status.ok()) << r->tasks[0].status;
}

TEST_F(SharedPoolTest, ACancelledTasksConnectionStaysInThePool) {
  const NodeAddress n1 = Addr(*w1_);
  auto s = PoolSession(Settings(1));
  absl::StatusOr<ExecutionResult> r = s->transport->Execute({Task{n1, "SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const int pid = Pid(r->tasks[0]);
  std::atomic<bool> done{false};
  std::thread runner([&] {
    r = s->transport->Execute({Task{n1, "SELECT pg_sleep(600)"}});
    done = true;
  });
  absl::Cleanup join = [&] {
    s->context.Cancel();
    runner.join();
  };
  const std::string sleeping = ActiveQueries("pg_sleep(600)");
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, sleeping) == 1; }));
  std::move(join).Invoke();
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  s->context.Reset();
  // Another session gets the same worker backend: the connection was drained
  // back to idle, not closed.
  auto other = PoolSession(Settings(1));
  r = other->transport->Execute({Task{n1, "SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Pid(r->tasks[0]), pid);
  EXPECT_EQ(pool_->stats().connections_opened, 1);
  EXPECT_EQ(pool_->stats().tasks_cancelled, 1);
}

TEST_F(SharedPoolTest, AConnectionLeftInATransactionIsNotReused) {
  const NodeAddress n1 = Addr(*w1_);
  auto s = PoolSession(Settings(1));
  absl::StatusOr<ExecutionResult> r = s->transport->Execute(
      {Task{n1, "BEGIN; SET LOCAL work_mem = '77kB'; SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const int pid = Pid(r->tasks[0]);
  r = s->transport->Execute(
      {Task{n1, "SELECT pg_backend_pid(), current_setting('work_mem') <> '77kB'"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(Pid(r->tasks[0]), pid);
  EXPECT_EQ(r->tasks[0].rows[0][1], "t")
      << "the second task ran inside the first one's transaction";
  EXPECT_EQ(pool_->stats().closed_in_transaction, 1);
}

TEST_F(SharedPoolTest, IdleConnectionsAreGivenBackToOthersWaitingForTheNode) {
  const NodeAddress n1 = Addr(*w1_);
  // The pool takes both slots of worker1: its first task waits for an
  // advisory lock the test holds, so the second needs a connection of its own.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4243)").ok());
  auto s = PoolSession(Settings(2));
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::thread runner([&] {
    r = s->transport->Execute({Task{n1, "SELECT pg_advisory_xact_lock_shared(4243)"},
                               Task{n1, "SELECT pg_advisory_xact_lock_shared(4243)"}});
  });
  absl::Cleanup join = [&] {
    (void)obs1_->Query("SELECT pg_advisory_unlock_all()");
    runner.join();
  };
  const std::string waiting =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND wait_event_type = 'Lock'";
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, waiting) == 2; }));
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4243)").ok());
  std::move(join).Invoke();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(pool_->Connections()[n1], 2);
  ASSERT_EQ(table().ConnectionCount(KeyOf(n1)), 2u);
  // A direct-transport session now needs a slot of worker1: it queues, and
  // the pool gives one idle connection back instead of keeping it for its
  // idle timeout (60 s). Without that, the wait would end in 53300.
  ExecutorOptions options;
  options.slot_wait_timeout = absl::Seconds(30);
  Session direct(table(), Settings(2), options);
  absl::StatusOr<ExecutionResult> d = direct.executor.Execute({Task{n1, "SELECT 1"}});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->tasks[0].status.ok()) << d->tasks[0].status;
  EXPECT_EQ(d->stats.waited_for_first, 1);
  EXPECT_EQ(pool_->stats().closed_for_waiters, 1);
  direct.executor.CloseIdle();
}

TEST_F(SharedPoolTest, ABusyPoolGivesAConnectionBackToAWaiterAsATaskEnds) {
  const NodeAddress n1 = Addr(*w1_);
  // Both of worker1's slots go to the pool: its first two tasks wait for
  // lock 1 and every later one for lock 2, both held by the test, so the
  // pool always has work queued.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4244), pg_advisory_lock(4245)").ok());
  auto a = PoolSession(Settings(2));
  std::vector<Task> tasks(2, Task{n1, "SELECT pg_advisory_xact_lock_shared(4244)"});
  for (int i = 0; i < 20; ++i)
    tasks.push_back(Task{n1, "SELECT pg_advisory_xact_lock_shared(4245)"});
  absl::StatusOr<ExecutionResult> ra = absl::UnknownError("not run");
  std::thread ta([&] { ra = a->transport->Execute(tasks); });
  ExecutorOptions options;
  options.slot_wait_timeout = absl::Minutes(1);
  Session direct(table(), Settings(2), options);
  absl::StatusOr<ExecutionResult> rd = absl::UnknownError("not run");
  std::atomic<bool> direct_done{false};
  std::thread td;
  absl::Cleanup join = [&] {
    (void)obs1_->Query("SELECT pg_advisory_unlock_all()");
    ta.join();
    if (td.joinable()) td.join();
  };
  const std::string waiting =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
      "AND wait_event_type = 'Lock'";
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, waiting) == 2; }));
  // A direct-transport session queues for a slot of worker1.
  td = std::thread([&] {
    rd = direct.executor.Execute({Task{n1, "SELECT 1"}});
    direct_done = true;
  });
  ASSERT_TRUE(PollUntil([&] {
    std::optional<KeyStats> k = table().Lookup(KeyOf(n1));
    return k && k->waiters == 1;
  }));
  // Lock 1 goes: the pool's first two tasks end. Lock 2 stays, so the
  // pool's queue never empties; the direct session still gets a slot.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4244)").ok());
  ASSERT_TRUE(PollUntil([&] { return direct_done.load(); }, absl::Minutes(2)));
  ASSERT_TRUE(rd.ok()) << rd.status();
  EXPECT_TRUE(rd->tasks[0].status.ok()) << rd->tasks[0].status;
  EXPECT_GT(pool_->Queued()[n1], 0) << "the pool's queue emptied first: the case proves nothing";
  EXPECT_EQ(pool_->stats().closed_for_waiters, 1);
  direct.executor.CloseIdle();
  std::move(join).Invoke();
  ASSERT_TRUE(ra.ok()) << ra.status();
  for (const TaskResult& t : ra->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
}

// ---------------------------------------------------------------------------
// Isolation: what a task leaves on its pooled connection. One slot, so every
// task of a case runs on the same worker backend (each case checks that it
// did: otherwise it would prove nothing).

class IsolationTest : public SharedPoolTest {
 protected:
  // Runs `sql` through the pool as one task on worker 1, in a session of
  // its own.
  TaskResult Run(const std::string& sql, SharedPoolOptions options = {}) {
    Pool(Settings(1), options);
    auto s = PoolSession(Settings(1));
    absl::StatusOr<ExecutionResult> r = s->transport->Execute({Task{Addr(*w1_), sql}});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tasks[0] : TaskResult{};
  }
  // What `sql` gives: its single value, or its SQLSTATE.
  std::string Outcome(const std::string& sql) {
    const TaskResult t = Run(sql);
    if (!t.status.ok()) return absl::StrCat("error ", t.sqlstate);
    return t.rows.size() == 1 && t.rows[0].size() == 1 ? t.rows[0][0].value_or("NULL")
                                                       : "(no single value)";
  }
};

TEST_F(IsolationTest, NothingATaskLeavesBehindReachesTheNextTask) {
  ASSERT_TRUE(obs1_
                  ->Exec("CREATE TABLE events AS SELECT g FROM generate_series(1, 100) g; "
                         "CREATE SEQUENCE iso_seq; CREATE ROLE iso_role")
                  .ok());
  absl::Cleanup drop = [&] {
    EXPECT_TRUE(obs1_->Exec("DROP TABLE events; DROP SEQUENCE iso_seq; DROP ROLE iso_role").ok());
  };
  const std::string backend = Outcome("SELECT pg_backend_pid()");
  struct Case {
    const char* leave;  // what one task does
    const char* check;  // what the next task, of another session, sees
  };
  const Case cases[] = {
      {"CREATE TEMP TABLE events AS SELECT 1", "SELECT count(*) FROM events"},
      {"SET ROLE iso_role", "SELECT current_user"},
      {"SET SESSION AUTHORIZATION iso_role", "SELECT session_user"},
      {"SET statement_timeout = '50ms'", "SHOW statement_timeout"},
      {"SET search_path = nowhere", "SHOW search_path"},
      {"SELECT set_config('work_mem', '64kB', false)", "SHOW work_mem"},
      {"SELECT pg_advisory_lock(77)", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"},
      {"LISTEN chan", "SELECT count(*) FROM pg_listening_channels()"},
      {"DECLARE held CURSOR WITH HOLD FOR SELECT 1", "SELECT count(*) FROM pg_cursors"},
      {"PREPARE mine AS SELECT 1", "SELECT count(*) FROM pg_prepared_statements"},
      {"SELECT nextval('iso_seq')", "SELECT currval('iso_seq')"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.leave);
    const std::string fresh = Outcome(c.check);
    const TaskResult left = Run(c.leave);
    EXPECT_TRUE(left.status.ok()) << left.status;
    EXPECT_EQ(Outcome(c.check), fresh);
  }
  EXPECT_EQ(Outcome("SELECT pg_backend_pid()"), backend) << "the tasks ran on other connections";
  EXPECT_EQ(pool_->stats().connections_opened, 1);
  // A plain session of the worker sees the advisory lock free.
  EXPECT_EQ(IntValue(*obs1_, "SELECT pg_try_advisory_lock(77)::int"), 1);
  EXPECT_TRUE(obs1_->Exec("SELECT pg_advisory_unlock_all()").ok());
}

TEST_F(IsolationTest, ATaskLeftInATransactionIsClosedNotReset) {
  const std::string backend = Outcome("SELECT pg_backend_pid()");
  EXPECT_TRUE(Run("BEGIN; SET LOCAL work_mem = '64kB'").status.ok());
  EXPECT_NE(Outcome("SELECT pg_backend_pid()"), backend);
  EXPECT_EQ(pool_->stats().closed_in_transaction, 1);
}

TEST_F(IsolationTest, NotificationsATaskListensForAreReadAndDropped) {
  // The task notifies itself: 6,000 notifications of 8 kB arrive with its
  // result (48 MB that would otherwise stay in the pool's memory).
  const TaskResult t =
      Run("LISTEN chan_big; SELECT pg_notify('chan_big', repeat('x', 7990) || g) "
          "FROM generate_series(1, 6000) g");
  EXPECT_TRUE(t.status.ok()) << t.status;
  EXPECT_TRUE(PollUntil([&] { return pool_->stats().notifications_dropped == 6000; }))
      << pool_->stats().notifications_dropped;
  EXPECT_EQ(Outcome("SELECT count(*) FROM pg_listening_channels()"), "0");
}

TEST_F(IsolationTest, AResultBeyondResultMemoryFailsWith54000AndTheConnectionServesOn) {
  SharedPoolOptions options;
  options.result_memory = 1 << 20;
  options.result_memory_setting = "the test's result_memory";
  const TaskResult big = Run("SELECT repeat('x', 2000000)", options);
  EXPECT_EQ(big.sqlstate, "54000") << big.status;
  EXPECT_THAT(std::string(big.status.message()), ::testing::HasSubstr("the test's result_memory"));
  EXPECT_TRUE(PollUntil([&] { return pool_->stats().tasks_over_memory == 1; }));
  // Two results of one execution held together: the second goes beyond.
  auto s = PoolSession(Settings(1));
  absl::StatusOr<ExecutionResult> r =
      s->transport->Execute({Task{Addr(*w1_), "SELECT repeat('a', 700000)"},
                             Task{Addr(*w1_), "SELECT repeat('b', 700000)"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->tasks[0].status.ok()) << r->tasks[0].status;
  EXPECT_EQ(r->tasks[1].sqlstate, "54000") << r->tasks[1].status;
  // Taken by their session, results no longer count: 900 kB fits again.
  EXPECT_EQ(Outcome("SELECT length(repeat('c', 900000))"), "900000");
  const TaskResult fits = Run("SELECT repeat('c', 900000)");
  EXPECT_TRUE(fits.status.ok()) << fits.status;
  EXPECT_EQ(pool_->stats().connections_opened, 1);
}

TEST_F(IsolationTest, ASessionsOwnWaitTimeoutDecidesWhenItsTasksFailWith53300) {
  const NodeAddress n1 = Addr(*w1_);
  SharedPoolOptions options;
  options.slot_wait_timeout = absl::Minutes(10);
  Pool(Settings(1), options);
  // The node's one slot is held elsewhere.
  std::unique_ptr<Owner> holder = MustRegister(table());
  absl::StatusOr<Slot> held = holder->TryAcquire(KeyOf(n1), Limit::AtMost(1));
  ASSERT_TRUE(held.ok()) << held.status();
  SharedPoolTransport::Options mine;
  mine.slot_wait_timeout = absl::Seconds(1);
  auto s = PoolSession(Settings(1), mine);
  absl::StatusOr<ExecutionResult> r = absl::UnknownError("not run");
  std::atomic<bool> done{false};
  std::thread t([&] {
    r = s->transport->Execute({Task{n1, "SELECT 1"}});
    done = true;
  });
  // Far sooner than the pool's 10 minutes (the wait is not timed here).
  const bool ended = PollUntil([&] { return done.load(); }, absl::Minutes(3));
  if (!ended) s->context.Cancel();
  t.join();
  ASSERT_TRUE(ended) << "the session's 1 s wait timeout was not used";
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tasks[0].sqlstate, "53300") << r->tasks[0].status;
  EXPECT_THAT(std::string(r->tasks[0].status.message()), ::testing::HasSubstr("1s"));
}

// Two pools of one node (the same database, other credentials) share its
// slots.
class TwoPoolsTest : public SharedPoolTest {
 protected:
  void SetUp() override {
    SharedPoolTest::SetUp();
    ASSERT_TRUE(obs1_->Exec("CREATE ROLE pool_b LOGIN SUPERUSER").ok());
  }
  void TearDown() override {
    SharedPoolTest::TearDown();
    absl::StatusOr<std::unique_ptr<PgClient>> c = w1_->Connect();
    if (c.ok()) {
      EXPECT_TRUE((*c)->Exec("DROP ROLE pool_b").ok());
    }
  }
  static StandaloneContext::Settings AsB(StandaloneContext::Settings s) {
    s.user = "pool_b";
    return s;
  }
  int ConnectionsOf(const std::string& user) {
    return IntValue(*obs1_, absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE "
                                         "application_name = 'connthrottle' AND usename = '",
                                         user, "'"));
  }
};

TEST_F(TwoPoolsTest, AnIdleConnectionOfOnePoolIsHandedToAnotherAtOnce) {
  const NodeAddress n1 = Addr(*w1_);
  SharedPoolOptions options;
  options.slot_wait_timeout = absl::Minutes(10);  // a 53300 would need ten minutes
  Pool(Settings(2), options);
  // Pool A takes both slots (two tasks that overlap) and goes idle.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4250)").ok());
  auto a = PoolSession(Settings(2));
  absl::StatusOr<ExecutionResult> ra = absl::UnknownError("not run");
  std::thread ta([&] {
    ra = a->transport->Execute(
        std::vector<Task>(4, Task{n1, "SELECT pg_advisory_xact_lock_shared(4250)"}));
  });
  ASSERT_TRUE(PollUntil([&] { return ConnectionsOf("postgres") == 2; }));
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4250)").ok());
  ta.join();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_EQ(ConnectionsOf("postgres"), 2) << "pool A's connections are not idle in the pool";
  // Pool B gets a slot at once: it does not wait for A's idle timeout.
  auto b = PoolSession(AsB(Settings(2)));
  absl::StatusOr<ExecutionResult> rb = b->transport->Execute({Task{n1, "SELECT current_user"}});
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_TRUE(rb->tasks[0].status.ok()) << rb->tasks[0].status;
  EXPECT_EQ(rb->tasks[0].rows[0][0], "pool_b");
  EXPECT_GE(pool_->stats().closed_for_pools, 1);
}

TEST_F(TwoPoolsTest, BusyPoolsConvergeToFairShares) {
  const NodeAddress n1 = Addr(*w1_);
  Pool(Settings(4));
  // Pool A's tasks wait for lock 1 and then lock 2, both held by the test:
  // it has work queued throughout and grows to the whole limit.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4251), pg_advisory_lock(4252)").ok());
  auto a = PoolSession(Settings(4));
  std::vector<Task> a_tasks(4, Task{n1, "SELECT pg_advisory_xact_lock_shared(4251)"});
  for (int i = 0; i < 40; ++i)
    a_tasks.push_back(Task{n1, "SELECT pg_advisory_xact_lock_shared(4252)"});
  absl::StatusOr<ExecutionResult> ra = absl::UnknownError("not run");
  std::thread ta([&] { ra = a->transport->Execute(a_tasks); });
  absl::Cleanup unlock = [&] {
    (void)obs1_->Query("SELECT pg_advisory_unlock_all()");
    if (ta.joinable()) ta.join();
  };
  ASSERT_TRUE(PollUntil([&] { return ConnectionsOf("postgres") == 4; }));
  // Pool B queues work too, and is refused a slot.
  auto b = PoolSession(AsB(Settings(4)));
  absl::StatusOr<ExecutionResult> rb = absl::UnknownError("not run");
  std::thread tb([&] {
    rb = b->transport->Execute(
        std::vector<Task>(8, Task{n1, "SELECT pg_advisory_xact_lock_shared(4252)"}));
  });
  // B's tasks are queued beside A's 40 (not merely submitted).
  ASSERT_TRUE(PollUntil([&] { return pool_->Queued()[n1] == 48; })) << pool_->Queued()[n1];
  // A's first four tasks end: with two pools busy, each gets two of the four.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4251)").ok());
  EXPECT_TRUE(PollUntil([&] { return ConnectionsOf("pool_b") == 2; }))
      << ConnectionsOf("pool_b") << " of pool B's connections";
  EXPECT_EQ(ConnectionsOf("postgres"), 2);
  EXPECT_EQ(pool_->stats().closed_for_pools, 2);
  std::move(unlock).Invoke();
  tb.join();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ASSERT_TRUE(rb.ok()) << rb.status();
  for (const TaskResult& t : ra->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
  for (const TaskResult& t : rb->tasks) EXPECT_TRUE(t.status.ok()) << t.status;
}

TEST_F(TwoPoolsTest, ASlotGivenUpForAPoolGoesToItNotToADirectWaiter) {
  const NodeAddress n1 = Addr(*w1_);
  SharedPoolOptions options;
  options.slot_wait_timeout = absl::Minutes(10);
  Pool(Settings(2), options);
  // Pool A holds both slots: two tasks wait for lock 1, twenty for lock 2.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_lock(4253), pg_advisory_lock(4254)").ok());
  auto a = PoolSession(Settings(2));
  std::vector<Task> a_tasks(2, Task{n1, "SELECT pg_advisory_xact_lock_shared(4253)"});
  for (int i = 0; i < 20; ++i)
    a_tasks.push_back(Task{n1, "SELECT pg_advisory_xact_lock_shared(4254)"});
  absl::StatusOr<ExecutionResult> ra = absl::UnknownError("not run");
  std::thread ta([&] { ra = a->transport->Execute(a_tasks); });
  // A direct-transport session waits for a slot of the node, and so does
  // pool B.
  ExecutorOptions direct_options;
  direct_options.slot_wait_timeout = absl::Minutes(10);
  Session direct(table(), Settings(2), direct_options);
  absl::StatusOr<ExecutionResult> rd = absl::UnknownError("not run");
  std::thread td;
  auto b = PoolSession(AsB(Settings(2)));
  absl::StatusOr<ExecutionResult> rb = absl::UnknownError("not run");
  std::atomic<bool> b_done{false};
  std::thread tb;
  absl::Cleanup join = [&] {
    (void)obs1_->Query("SELECT pg_advisory_unlock_all()");
    ta.join();
    if (td.joinable()) td.join();
    if (tb.joinable()) tb.join();
  };
  ASSERT_TRUE(PollUntil([&] { return ConnectionsOf("postgres") == 2; }));
  td = std::thread([&] { rd = direct.executor.Execute({Task{n1, "SELECT 1"}}); });
  ASSERT_TRUE(PollUntil([&] {
    std::optional<KeyStats> k = table().Lookup(KeyOf(n1));
    return k && k->waiters == 1;
  }));
  tb = std::thread([&] {
    rb = b->transport->Execute({Task{n1, "SELECT current_user"}});
    b_done = true;
  });
  ASSERT_TRUE(PollUntil([&] { return pool_->Queued()[n1] == 21; })) << pool_->Queued()[n1];
  // A's first two tasks end; A stays busy (lock 2). Its connection above
  // its share (one of two) goes to B, slot and all: B is served while A
  // still has work, though a direct waiter queued first for any free slot.
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4253)").ok());
  ASSERT_TRUE(PollUntil([&] { return b_done.load(); }));
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_TRUE(rb->tasks[0].status.ok()) << rb->tasks[0].status;
  EXPECT_GT(pool_->Queued()[n1], 0) << "A's queue emptied first: the case proves nothing";
  std::move(join).Invoke();
  ASSERT_TRUE(rd.ok()) << rd.status();
  EXPECT_TRUE(rd->tasks[0].status.ok()) << rd->tasks[0].status;
  direct.executor.CloseIdle();
}

}  // namespace
}  // namespace connthrottle::testing
