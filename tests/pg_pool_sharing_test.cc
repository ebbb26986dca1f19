// Sharing the pool safely (issue 24, PgPoolSharingTest). Sessions run as
// roles of their own: superusers on the coordinator (so run_tasks needs no
// grants), plain roles on the workers, where the pool connects as them.

#include <atomic>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_pool_fixture.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;

class PgPoolSharingTest : public PgPoolTest {
 protected:
  void SetUp() override {
    PgPoolTest::SetUp();
    if (HasFatalFailure()) return;
    for (const char* role : {"app", "app_admin", "alice", "bob"}) {
      ASSERT_TRUE(obs_->Exec(absl::StrCat("CREATE ROLE ", role, " SUPERUSER")).ok());
    }
    for (auto& w : wobs_) {
      ASSERT_TRUE(w->Exec("CREATE ROLE app LOGIN NOINHERIT; CREATE ROLE app_admin; "
                          "GRANT app_admin TO app; CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; "
                          "CREATE TABLE events AS SELECT g FROM generate_series(1, 100) g; "
                          "GRANT SELECT ON events TO PUBLIC; "
                          "CREATE TABLE secret AS SELECT 'admin only' AS x; "
                          "GRANT SELECT ON secret TO app_admin; CREATE SEQUENCE side; "
                          "GRANT USAGE ON SEQUENCE side TO PUBLIC")
                      .ok());
    }
  }
  void TearDown() override {
    if (obs_ != nullptr) {
      // The roles' pooled connections close (idle at once), so the roles
      // can be dropped on the workers; PgPoolTest::TearDown resets it.
      SetSetting("connthrottle.pool_idle_timeout", "0");
      EXPECT_TRUE(PollUntil([&] { return Stat("connections") == 0; }));
    }
    PgPoolTest::TearDown();
    if (obs_ == nullptr) return;
    for (const char* role : {"app", "app_admin", "alice", "bob"}) {
      EXPECT_TRUE(obs_->Exec(absl::StrCat("DROP ROLE ", role)).ok());
    }
    for (auto& w : wobs_) {
      EXPECT_TRUE(w->Exec("DROP TABLE events, secret; DROP SEQUENCE side").ok());
      EXPECT_TRUE(w->Exec("DROP ROLE app, app_admin, alice, bob").ok());
    }
  }

  // A new coordinator session running as `role`.
  std::unique_ptr<PgClient> SessionAs(const std::string& role) {
    std::unique_ptr<PgClient> c = Connect();
    EXPECT_NE(c, nullptr);
    if (c != nullptr) {
      EXPECT_TRUE(c->Exec(absl::StrCat("SET ROLE ", role)).ok());
    }
    return c;
  }
  // What one task on worker 0 gives, run by a new session as `role`: its
  // value, or its SQLSTATE.
  std::string OutcomeAs(const std::string& role, const std::string& sql) {
    std::unique_ptr<PgClient> c = SessionAs(role);
    if (c == nullptr) return "(no session)";
    absl::StatusOr<std::vector<TaskRow>> r = RunTasks(*c, {On(0, sql)});
    if (!r.ok()) return r.status().ToString();
    const TaskRow& t = (*r)[0];
    return t.success ? t.result.value_or("NULL") : absl::StrCat("error ", t.sqlstate.value_or(""));
  }
};

TEST_F(PgPoolSharingTest, NoSessionsLeftoversChangeAnotherSessionsResult) {
  // One slot: every task runs on the same pooled connection.
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  const std::string backend = OutcomeAs("app", "SELECT pg_backend_pid()");
  struct Case {
    const char* leave;
    const char* check;
    const char* fresh;  // what the check gives on a fresh connection
  };
  const Case cases[] = {
      {"CREATE TEMP TABLE events AS SELECT 1", "SELECT count(*) FROM events", "100"},
      {"SET ROLE app_admin", "SELECT x FROM secret", "error 42501"},
      {"SET statement_timeout = '50ms'", "SELECT pg_sleep(0.2)::text", ""},
      {"SET search_path = nowhere", "SELECT count(*) FROM events", "100"},
      {"LISTEN chan", "SELECT count(*) FROM pg_listening_channels()", "0"},
      {"SELECT pg_advisory_lock(77)",
       "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()", "0"},
      {"SELECT nextval('side')", "SELECT currval('side')", "error 55000"},
      {"PREPARE mine AS SELECT 1", "SELECT count(*) FROM pg_prepared_statements", "0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.leave);
    EXPECT_EQ(OutcomeAs("app", c.check), c.fresh) << "before";
    EXPECT_THAT(OutcomeAs("app", c.leave), ::testing::Not(HasSubstr("error"))) << "its own";
    EXPECT_EQ(OutcomeAs("app", c.check), c.fresh);
  }
  EXPECT_EQ(OutcomeAs("app", "SELECT pg_backend_pid()"), backend) << "other connections ran them";
  // Mutual exclusion holds: the lock went with the task that took it.
  EXPECT_EQ(Value(*wobs_[0], "SELECT pg_try_advisory_lock(77)"), "t");
  ASSERT_TRUE(wobs_[0]->Exec("SELECT pg_advisory_unlock_all()").ok());
  EXPECT_TRUE(Grew("resets", 0, static_cast<int64_t>(3 * std::size(cases)))) << Stat("resets");
}

TEST_F(PgPoolSharingTest, NoTaskCanChangeWhatAnotherSessionsTaskRuns) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  const std::string count = "SELECT count(*) FROM events";
  EXPECT_EQ(OutcomeAs("app", count), "100");
  EXPECT_EQ(OutcomeAs("app", count), "100");
  for (const char* takeover : {"PREPARE connthrottle_1 AS SELECT 424242::bigint",
                               "DEALLOCATE ALL; PREPARE connthrottle_1 AS SELECT 424242::bigint",
                               "DISCARD ALL", "DEALLOCATE ALL"}) {
    SCOPED_TRACE(takeover);
    OutcomeAs("app", takeover);
    EXPECT_EQ(OutcomeAs("app", count), "100");
    EXPECT_EQ(OutcomeAs("app", count), "100");
  }
}

TEST_F(PgPoolSharingTest, ErrorsATaskRaisesAreItsResultAndNothingRunsTwice) {
  const std::string raises =
      "DO $$ BEGIN PERFORM nextval('side'); "
      "RAISE EXCEPTION 'not here' USING ERRCODE = 'feature_not_supported'; END $$";
  const std::string missing =
      "DO $$ BEGIN PERFORM nextval('side'); EXECUTE 'EXECUTE no_such_statement'; END $$";
  // Several statements: refused at Parse in the pipeline (nothing ran),
  // then run once with the simple protocol.
  const std::string several = "SELECT nextval('side'); SELECT nextval('side')";
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(OutcomeAs("app", raises), "error 0A000");
    EXPECT_EQ(OutcomeAs("app", missing), "error 26000");
    EXPECT_EQ(OutcomeAs("app", several), std::to_string(4 * i + 4));
  }
  EXPECT_EQ(Value(*wobs_[0], "SELECT last_value FROM side"), "12");
}

TEST_F(PgPoolSharingTest, AnIdleOrBusyPoolOfOneRoleDoesNotStarveAnother) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  // The server's wait timeout is long; bob's own is 10 s.
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.connection_wait_timeout", "10min"));
  std::unique_ptr<PgClient> alice = SessionAs("alice");
  ASSERT_NE(alice, nullptr);
  std::vector<TaskSpec> sleeps(4, On(0, "SELECT pg_sleep(0.5)"));
  ASSERT_TRUE(RunTasks(*alice, sleeps).ok());
  ASSERT_EQ(CoordinatorConnectionsOn(0, " AND usename = 'alice'"), 2) << "alice's pool is not idle";
  const int64_t handed_before = Stat("closed_for_pools");
  std::unique_ptr<PgClient> bob = SessionAs("bob");
  ASSERT_NE(bob, nullptr);
  ASSERT_TRUE(bob->Exec("SET connthrottle.connection_wait_timeout = '10s'").ok());
  absl::StatusOr<std::vector<TaskRow>> idle = RunTasks(*bob, {On(0, "SELECT current_user")});
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_TRUE((*idle)[0].success) << (*idle)[0];
  EXPECT_EQ((*idle)[0].result, "bob");
  EXPECT_TRUE(Grew("closed_for_pools", handed_before, 1));
  // Alice keeps both slots busy, round after round; bob is served all the same.
  std::atomic<bool> stop{false};
  std::atomic<int> alice_rounds{0};
  std::thread busy([&] {
    std::unique_ptr<PgClient> a = SessionAs("alice");
    std::vector<TaskSpec> work(8, On(0, "SELECT pg_sleep(0.05)"));
    while (a != nullptr && !stop.load() && RunTasks(*a, work).ok()) ++alice_rounds;
  });
  absl::Cleanup join = [&] {
    stop = true;
    busy.join();
  };
  ASSERT_TRUE(PollUntil([&] { return alice_rounds.load() >= 1; }));
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<std::vector<TaskRow>> r = RunTasks(*bob, {On(0, "SELECT current_user")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE((*r)[0].success) << (*r)[0];
  }
  std::move(join).Invoke();
  EXPECT_GE(alice_rounds.load(), 1);
}

// The same under a per-database bound with room on the node: alice's pool
// holds both of the database's slots, busy with tasks always queued; bob's
// pool of the same database, at the database's bound too, gets one of them
// (Rebalance: a pool at its database's bound takes from its own database).
TEST_F(PgPoolSharingTest, APoolAtItsDatabasesBoundDoesNotStarveAnotherRoleOfIt) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "10"));
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size_per_database", "2"));
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.connection_wait_timeout", "10min"));
  std::unique_ptr<PgClient> bob = SessionAs("bob");
  ASSERT_NE(bob, nullptr);
  ASSERT_TRUE(bob->Exec("SET connthrottle.connection_wait_timeout = '10s'").ok());
  // Two sessions of alice, so that her pool always has tasks queued and
  // never gives an idle connection away.
  std::atomic<bool> stop{false};
  std::atomic<int> alice_rounds{0};
  std::vector<std::thread> busy;
  for (int i = 0; i < 2; ++i) {
    busy.emplace_back([&] {
      std::unique_ptr<PgClient> a = SessionAs("alice");
      std::vector<TaskSpec> work(8, On(0, "SELECT pg_sleep(0.05)"));
      while (a != nullptr && !stop.load() && RunTasks(*a, work).ok()) ++alice_rounds;
    });
  }
  absl::Cleanup join = [&] {
    stop = true;
    for (std::thread& t : busy) t.join();
  };
  ASSERT_TRUE(PollUntil([&] {
    return alice_rounds.load() >= 1 && CoordinatorConnectionsOn(0, " AND usename = 'alice'") == 2;
  }));
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<std::vector<TaskRow>> r = RunTasks(*bob, {On(0, "SELECT current_user")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE((*r)[0].success) << (*r)[0];
  }
  EXPECT_LE(CoordinatorConnectionsOn(0), 2);
  std::move(join).Invoke();
  EXPECT_GE(alice_rounds.load(), 1);
}

// The communicator's resident memory, in kB (its /proc status).
int64_t ResidentKb(int pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

TEST_F(PgPoolSharingTest, NotificationsDoNotPileUpInTheCommunicator) {
  const int communicator = CommunicatorPid();
  OutcomeAs("app", "SELECT 1");  // the pool is started
  const int64_t before = ResidentKb(communicator);
  const int64_t dropped = Stat("notifications_dropped");
  // Each task listens and sends itself 6,000 notifications of 8 kB.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(
        OutcomeAs("app",
                  "LISTEN chan_big; SELECT count(pg_notify('chan_big', repeat('x', 7990) || g)) "
                  "FROM generate_series(1, 6000) g"),
        "6000");
  }
  EXPECT_TRUE(Grew("notifications_dropped", dropped, 30000));
  const int64_t after = ResidentKb(communicator);
  RecordProperty("communicator_rss_growth_kb", std::to_string(after - before));
  std::cout << "[ FIGURE   ] communicator RSS " << before << " kB -> " << after << " kB\n";
  EXPECT_LT(after - before, 20 * 1024);
}

TEST_F(PgPoolSharingTest, ASessionsOwnWaitTimeoutDecidesIts53300) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.connection_wait_timeout", "10min"));
  // Another session holds worker 0's only slot in its transaction.
  std::unique_ptr<PgClient> holder = Connect();
  ASSERT_NE(holder, nullptr);
  ASSERT_TRUE(holder->Exec("BEGIN").ok());
  ASSERT_EQ(Value(*holder, absl::StrCat("SELECT connthrottle.reserve(ARRAY['127.0.0.1'], ARRAY[",
                                        Port(0), "])")),
            "1");
  std::unique_ptr<PgClient> s = SessionAs("app");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->Exec("SET connthrottle.connection_wait_timeout = '1s'").ok());
  absl::StatusOr<std::vector<TaskRow>> r = RunTasks(*s, {On(0, "SELECT 1")});
  ASSERT_TRUE(holder->Exec("ROLLBACK").ok());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE((*r)[0].success);
  EXPECT_EQ((*r)[0].sqlstate, "53300") << (*r)[0];
  EXPECT_THAT((*r)[0].error.value_or(""), HasSubstr("within 1s"));
}

TEST_F(PgPoolSharingTest, AResultGatheringBeyondPoolResponseMemoryFailsWith54000) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.pool_response_memory", "1500kB"));
  const int64_t over = Stat("tasks_over_memory");
  std::unique_ptr<PgClient> s = SessionAs("app");
  ASSERT_NE(s, nullptr);
  // Two results of 1 MB in one execution: the first is held while the
  // second gathers, and the second would take the pool beyond 1500 kB.
  absl::StatusOr<std::vector<TaskRow>> r =
      RunTasks(*s, {On(0, "SELECT repeat('a', 1000000)"),
                    On(0, "SELECT pg_sleep(0.2)::text || repeat('b', 1000000)")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].success) << (*r)[0];
  EXPECT_TRUE((*r)[0].result == std::string(1000000, 'a')) << "the first result is not intact";
  EXPECT_FALSE((*r)[1].success);
  EXPECT_EQ((*r)[1].sqlstate, "54000") << (*r)[1];
  EXPECT_THAT((*r)[1].error.value_or(""), HasSubstr("connthrottle.pool_response_memory"));
  EXPECT_TRUE(Grew("tasks_over_memory", over, 1));
}

}  // namespace
}  // namespace connthrottle::cluster
