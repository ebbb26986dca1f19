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

#include "connthrottle/shared_pool.h"

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
#include "connthrottle/executor.h"
#include "connthrottle/standalone_context.h"
#include "connthrottle/transport.h"
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
  absl::StatusOr<ExecutionResult> r =
      s->transport->Execute({Task{n1, "BEGIN; SELECT pg_backend_pid()"}});
  ASSERT_TRUE(r.ok()) << r.status();
  const int pid = Pid(r->tasks[0]);
  r = s->transport->Execute({Task{n1, "SELECT pg_backend_pid(), now() = statement_timestamp()"}});
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
// Prepared statements on pooled connections. One slot, so every task of a
// case runs on the same worker backend, whose pg_prepared_statements the
// cases read through the pool itself.

class PreparedStatementTest : public SharedPoolTest {
 protected:
  // Runs `sql` through the pool as one task on worker 1.
  TaskResult Run(const std::string& sql) {
    auto s = PoolSession(Settings(1));
    absl::StatusOr<ExecutionResult> r = s->transport->Execute({Task{Addr(*w1_), sql}});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->tasks[0] : TaskResult{};
  }
  // The single value `sql` returns through the pool.
  std::string Value(const std::string& sql) {
    const TaskResult t = Run(sql);
    EXPECT_TRUE(t.status.ok()) << sql << ": " << t.status;
    return t.status.ok() && t.rows.size() == 1 && t.rows[0].size() == 1
               ? t.rows[0][0].value_or("NULL")
               : "(no single value)";
  }
  // The statements prepared on the pooled connection: "text: generic plans"
  // (how many times each ran). A text of its own each time: never prepared.
  std::vector<std::string> Prepared() {
    const TaskResult t =
        Run(absl::StrCat("SELECT statement || ': ' || generic_plans FROM pg_prepared_statements "
                         "WHERE name LIKE 'connthrottle\\_%' ORDER BY statement /* look ",
                         ++looks_, " */"));
    EXPECT_TRUE(t.status.ok()) << t.status;
    std::vector<std::string> out;
    for (const auto& row : t.rows) out.push_back(row[0].value_or("NULL"));
    return out;
  }

  int looks_ = 0;
};

TEST_F(PreparedStatementTest, ATextSentAgainRunsItsPreparedStatementPlannedOnce) {
  Pool(Settings(1));
  EXPECT_EQ(Value("SELECT 6 * 7"), "42");  // first seen: runs as text
  EXPECT_THAT(Prepared(), IsEmpty());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Value("SELECT 6 * 7"), "42");
  // Prepared at its second run, then planned once and run three times.
  EXPECT_THAT(Prepared(), ElementsAre("SELECT 6 * 7: 3"));
  EXPECT_EQ(pool_->stats().statements_prepared, 1);
  EXPECT_EQ(pool_->stats().tasks_run_prepared, 3);
  EXPECT_EQ(pool_->stats().connections_opened, 1);
}

TEST_F(PreparedStatementTest, TextsThatCannotBePreparedRunAsTextEveryTime) {
  Pool(Settings(1));
  ASSERT_TRUE(obs1_->Exec("CREATE TABLE vacuumed (a int)").ok());
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    // Several statements: the last one's result, as with plain text.
    TaskResult t = Run("SELECT 1; SELECT 2");
    ASSERT_TRUE(t.status.ok()) << t.status;
    EXPECT_EQ(t.rows, (std::vector<std::vector<std::optional<std::string>>>{{"2"}}));
    // An error: the same SQLSTATE and message every time.
    t = Run("SELECT * FROM no_such_table");
    EXPECT_EQ(t.sqlstate, "42P01");
    EXPECT_THAT(std::string(t.status.message()), HasSubstr("\"no_such_table\" does not exist"));
    // A utility statement prepares and runs like any other.
    t = Run("VACUUM vacuumed");
    EXPECT_TRUE(t.status.ok()) << t.status;
    EXPECT_EQ(t.command_tag, "VACUUM");
  }
  EXPECT_THAT(Prepared(), ElementsAre("VACUUM vacuumed: 2"));
  EXPECT_EQ(pool_->stats().statements_prepared, 1);
  EXPECT_EQ(pool_->stats().tasks_run_prepared, 2);
  ASSERT_TRUE(obs1_->Exec("DROP TABLE vacuumed").ok());
}

TEST_F(PreparedStatementTest, AStatementATaskDeallocatedRunsAgainAsText) {
  Pool(Settings(1));
  for (int i = 0; i < 2; ++i) EXPECT_EQ(Value("SELECT 7"), "7");
  ASSERT_THAT(Prepared(), ElementsAre("SELECT 7: 1"));
  EXPECT_TRUE(Run("DEALLOCATE ALL").status.ok());
  EXPECT_THAT(Prepared(), IsEmpty());
  // Its statement is gone (26000): it runs as text, and is prepared again.
  EXPECT_EQ(Value("SELECT 7"), "7");
  EXPECT_EQ(Value("SELECT 7"), "7");
  EXPECT_THAT(Prepared(), ElementsAre("SELECT 7: 1"));
  EXPECT_EQ(pool_->stats().statements_prepared, 2);
  EXPECT_EQ(pool_->stats().tasks_run_prepared, 2);
}

TEST_F(PreparedStatementTest, AStatementWhoseResultTypeChangedRunsAgainAsText) {
  Pool(Settings(1));
  ASSERT_TRUE(obs1_->Exec("CREATE TABLE reshaped AS SELECT 1 AS a").ok());
  absl::Cleanup drop = [&] { EXPECT_TRUE(obs1_->Exec("DROP TABLE reshaped").ok()); };
  for (int i = 0; i < 2; ++i) EXPECT_EQ(Run("SELECT * FROM reshaped").columns.size(), 1u);
  ASSERT_THAT(Prepared(), ElementsAre("SELECT * FROM reshaped: 1"));
  ASSERT_TRUE(obs1_->Exec("ALTER TABLE reshaped ADD COLUMN b int DEFAULT 2").ok());
  // "cached plan must not change result type" (0A000): the old statement
  // is deallocated and the task runs as text.
  TaskResult t = Run("SELECT * FROM reshaped");
  ASSERT_TRUE(t.status.ok()) << t.status;
  EXPECT_EQ(t.columns, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(t.rows, (std::vector<std::vector<std::optional<std::string>>>{{"1", "2"}}));
  EXPECT_THAT(Prepared(), IsEmpty());
  t = Run("SELECT * FROM reshaped");
  EXPECT_EQ(t.columns.size(), 2u);
  EXPECT_THAT(Prepared(), ElementsAre("SELECT * FROM reshaped: 1"));
  EXPECT_EQ(pool_->stats().tasks_run_prepared, 2);
}

TEST_F(PreparedStatementTest, EachConnectionKeepsAtMostMaxPreparedStatements) {
  SharedPoolOptions options;
  options.max_prepared_statements = 2;
  Pool(Settings(1), options);
  for (const char* sql : {"SELECT 1", "SELECT 2", "SELECT 1", "SELECT 3"}) {
    for (int i = 0; i < 2; ++i) EXPECT_EQ(Value(sql), std::string(sql).substr(7));
  }
  // "SELECT 2" was the least recently used when "SELECT 3" needed room.
  EXPECT_THAT(Prepared(), ElementsAre("SELECT 1: 3", "SELECT 3: 1"));
  EXPECT_EQ(pool_->stats().statements_prepared, 3);
  // Lowered to none: the connection deallocates them before its next task.
  options.max_prepared_statements = 0;
  pool_->set_options(options);
  EXPECT_EQ(Value("SELECT 1"), "1");
  EXPECT_THAT(Prepared(), IsEmpty());
  EXPECT_EQ(pool_->stats().statements_prepared, 3);
}

TEST_F(PreparedStatementTest, PreparedRunsKeepMaxRowsKept) {
  Pool(Settings(1));
  SharedPoolTransport::Options kept;
  kept.max_rows_kept = 2;
  for (int i = 0; i < 3; ++i) {
    auto s = PoolSession(Settings(1), kept);
    absl::StatusOr<ExecutionResult> r =
        s->transport->Execute({Task{Addr(*w1_), "SELECT g FROM generate_series(1, 5) g"}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->tasks[0].row_count, 5);
    EXPECT_EQ(r->tasks[0].rows.size(), 2u);
  }
  // The loop wakes the session before it publishes its figures.
  EXPECT_TRUE(PollUntil([&] { return pool_->stats().tasks_run_prepared == 2; }))
      << pool_->stats().tasks_run_prepared;
}

TEST_F(PreparedStatementTest, ErrorsRaisedWhileATaskRunsAreItsResultNotARefusal) {
  Pool(Settings(1));
  ASSERT_TRUE(obs1_->Exec("CREATE SEQUENCE side_effects").ok());
  absl::Cleanup drop = [&] { EXPECT_TRUE(obs1_->Exec("DROP SEQUENCE side_effects").ok()); };
  // The SQLSTATEs of a refusal (0A000, 26000), raised by the task itself
  // after a side effect: each run fails once, and runs once.
  const std::string raises =
      "DO $$ BEGIN PERFORM nextval('side_effects'); "
      "RAISE EXCEPTION 'not here' USING ERRCODE = 'feature_not_supported'; END $$";
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    TaskResult t = Run(raises);
    EXPECT_EQ(t.sqlstate, "0A000") << t.status;
    t = Run("EXECUTE no_such_statement");
    EXPECT_EQ(t.sqlstate, "26000") << t.status;
    // A parameter symbol: 42P02 every time, as text (it is not prepared).
    t = Run("SELECT $1::int");
    EXPECT_EQ(t.sqlstate, "42P02") << t.status;
  }
  EXPECT_EQ(IntValue(*obs1_, "SELECT last_value FROM side_effects"), 3);
  // Both stay prepared: their errors were not taken for a refusal.
  EXPECT_THAT(Prepared(), ElementsAre(absl::StrCat(raises, ": 2"), "EXECUTE no_such_statement: 2"));
  EXPECT_EQ(pool_->stats().tasks_run_prepared, 4);
}

// A prepare that waits for a lock: cancelled, or its backend terminated.
class BlockedPrepareTest : public PreparedStatementTest {
 protected:
  static constexpr char kSql[] = "SELECT a FROM locked";

  void SetUp() override {
    PreparedStatementTest::SetUp();
    Pool(Settings(1));
    ASSERT_TRUE(obs1_->Exec("CREATE TABLE locked AS SELECT 5 AS a").ok());
    EXPECT_EQ(Value(kSql), "5");  // first seen: as text
    absl::StatusOr<std::unique_ptr<PgClient>> locker = w1_->Connect();
    ASSERT_TRUE(locker.ok()) << locker.status();
    locker_ = *std::move(locker);
    ASSERT_TRUE(locker_->Exec("BEGIN").ok());
    ASSERT_TRUE(locker_->Exec("LOCK TABLE locked").ok());
    session_ = PoolSession(Settings(1));
    runner_ = std::thread([this] {
      result_ = session_->transport->Execute({Task{Addr(*w1_), kSql}});
    });
  }

  void TearDown() override {
    if (runner_.joinable()) {
      session_->context.Cancel();
      runner_.join();
    }
    locker_.reset();  // its transaction ends with it
    EXPECT_TRUE(obs1_->Exec("DROP TABLE locked").ok());
    PreparedStatementTest::TearDown();
  }

  // Coordinator backends waiting for the lock on `locked`.
  int Waiting() {
    return IntValue(*obs1_,
                    absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                 "'connthrottle' AND wait_event_type = 'Lock' AND query = '",
                                 kSql, "'"));
  }

  std::unique_ptr<PgClient> locker_;
  std::unique_ptr<AnySession> session_;
  std::thread runner_;
  absl::StatusOr<ExecutionResult> result_ = absl::UnknownError("not run");
};

TEST_F(BlockedPrepareTest, ACancelledPrepareLeavesTheConnectionAndTheTextUsable) {
  // The second sighting's PREPARE waits for the lock.
  ASSERT_TRUE(PollUntil([&] { return Waiting() == 1; }));
  session_->context.Cancel();
  runner_.join();
  EXPECT_TRUE(absl::IsCancelled(result_.status())) << result_.status();
  ASSERT_TRUE(locker_->Exec("COMMIT").ok());
  // Drained back to idle, the connection runs the text again and prepares it.
  EXPECT_EQ(Value(kSql), "5");
  EXPECT_THAT(Prepared(), ElementsAre("SELECT a FROM locked: 1"));
  EXPECT_EQ(pool_->stats().connections_opened, 1);
  EXPECT_EQ(pool_->stats().statements_prepared, 1);
}

TEST_F(BlockedPrepareTest, ATaskWhosePrepareLostItsConnectionRunsOnAnotherAsText) {
  ASSERT_TRUE(PollUntil([&] { return Waiting() == 1; }));
  ASSERT_EQ(IntValue(*obs1_, absl::StrCat("SELECT count(pg_terminate_backend(pid)) FROM "
                                          "pg_stat_activity WHERE application_name = "
                                          "'connthrottle' AND query = '",
                                          kSql, "'")),
            1);
  // Nothing of the task ran: it moves to a new connection, as text, and
  // waits for the lock there.
  ASSERT_TRUE(PollUntil([&] { return pool_->stats().tasks_retried == 1 && Waiting() == 1; }));
  ASSERT_TRUE(locker_->Exec("COMMIT").ok());
  runner_.join();
  ASSERT_TRUE(result_.ok()) << result_.status();
  ASSERT_TRUE(result_->tasks[0].status.ok()) << result_->tasks[0].status;
  EXPECT_EQ(result_->tasks[0].rows, (std::vector<std::vector<std::optional<std::string>>>{{"5"}}));
  // The text is not prepared again.
  EXPECT_EQ(Value(kSql), "5");
  EXPECT_THAT(Prepared(), IsEmpty());
  EXPECT_EQ(pool_->stats().connections_opened, 2);
  EXPECT_EQ(pool_->stats().statements_prepared, 0);
}

}  // namespace
}  // namespace connthrottle::testing
