// Isolation: what a task leaves on its pooled connection. One slot, so every
// task of a case runs on the same worker backend (each case checks that it
// did: otherwise it would prove nothing).

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

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

}  // namespace
}  // namespace connthrottle::testing
