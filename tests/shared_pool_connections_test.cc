// The shared pool's connections: they outlive sessions and never exceed the
// limit, sessions take turns on a busy pool, idle ones close after the idle
// timeout, dead ones are replaced, a cancelled task's connection stays, one
// left in a transaction is not reused, and idle or busy pools give
// connections back to others waiting for the node.

#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

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
  // Both busy: open, and not idle.
  EXPECT_TRUE(PollUntil([&] { return pool_->Connections()[n1] == 2 && pool_->Idle()[n1] == 0; }))
      << pool_->Idle()[n1];
  ASSERT_TRUE(obs1_->Query("SELECT pg_advisory_unlock(4243)").ok());
  std::move(join).Invoke();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(pool_->Connections()[n1], 2);
  ASSERT_EQ(table().ConnectionCount(KeyOf(n1)), 2u);
  // Both serve no task now: the lease service counts them as no demand.
  EXPECT_TRUE(PollUntil([&] { return pool_->Idle()[n1] == 2; })) << pool_->Idle()[n1];
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

}  // namespace
}  // namespace connthrottle::testing
