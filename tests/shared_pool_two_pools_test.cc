// Two pools of one node (the same database, other credentials) share its
// slots: an idle pool's connection is handed to another at once, busy pools
// converge to fair shares, and a slot given up for a pool goes to it.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

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
