// Local-execution failover: tasks for the coordinator itself run in its own
// backend when it may not connect to itself or is at its local limit; the
// local limit counts client backends only; a local task may not call
// run_tasks or distribute itself.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST_P(PgExecutorTest, LocalFailoverWhenNeverConnectingToSelf) {
  const std::string c_port = std::to_string(coordinator_->port());
  const int cport = coordinator_->port();
  ASSERT_EQ(
      Value(*obs_, absl::StrCat("SELECT connthrottle.is_local_node('127.0.0.1', ", c_port, ")")),
      "t");
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", c_port, ")")).ok());
  ASSERT_TRUE(obs_->Exec("CREATE TABLE local_probe(x int)").ok());
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  auto self_backends = [&] {
    return Value(*obs_,
                 "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                 "'connthrottle'");
  };

  {
    std::unique_ptr<PgClient> r = Connect();
    ASSERT_NE(r, nullptr);
    const std::vector<TaskSpec> tasks = {
        {Host(), cport, "SELECT 41+1"},
        {Host(), cport, "INSERT INTO local_probe VALUES (1)"},
        {Host(), cport, "INSERT INTO local_probe VALUES (1/0)"},
        {Host(), cport, "INSERT INTO local_probe VALUES (3)"},
        {Host(), cport, "SELECT current_setting('port')"},
        {Host(), Port(0), "SELECT current_setting('port')"},
    };
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*r, tasks);
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), tasks.size());
    for (const TaskRow& row : *rows) {
      SCOPED_TRACE(::testing::PrintToString(row));
      EXPECT_EQ(row.ran_locally, row.port == cport);
      EXPECT_EQ(row.success, row.task != 3);
    }
    EXPECT_EQ((*rows)[0].result, Cell("42"));
    EXPECT_EQ((*rows)[1].result, Cell("INSERT 0 1"));
    EXPECT_EQ((*rows)[2].sqlstate, Cell("22012"));
    ASSERT_TRUE((*rows)[2].error.has_value());
    EXPECT_THAT(*(*rows)[2].error, HasSubstr("division by zero"));
    // executor.h: a failed task's message names the node, local or not.
    EXPECT_THAT(*(*rows)[2].error, HasSubstr(CoordinatorNode()))
        << "the local task's error does not name the node";
    EXPECT_EQ((*rows)[3].result, Cell("INSERT 0 1"));
    EXPECT_EQ((*rows)[4].result, Cell(c_port));
    EXPECT_EQ((*rows)[5].result, Cell(std::to_string(Port(0))));
    // The failed task's subtransaction was rolled back, the others' effects
    // are the caller's; the session is not left in a failed transaction.
    EXPECT_EQ(Rows(*r, "SELECT x FROM local_probe ORDER BY x"), "(1) (3)");
    EXPECT_EQ(self_backends(), "0") << "the coordinator connected to itself";
    EXPECT_EQ(Counters(cport), NodeCounters{});
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(0, /*at_most=*/1);
    } else {
      EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, 1, 0, 0, 0}));
    }

    // Inside a transaction block the local tasks are part of the caller's
    // transaction: a rollback undoes them.
    ASSERT_TRUE(r->Exec("BEGIN").ok());
    absl::StatusOr<std::vector<TaskRow>> in_tx =
        RunTasks(*r, {{Host(), cport, "INSERT INTO local_probe VALUES (5)"}});
    ASSERT_TRUE(in_tx.ok()) << in_tx.status();
    ASSERT_EQ(in_tx->size(), 1u);
    EXPECT_TRUE((*in_tx)[0].success && (*in_tx)[0].ran_locally) << (*in_tx)[0];
    EXPECT_EQ(Value(*r, "SELECT count(*) FROM local_probe WHERE x = 5"), "1");
    ASSERT_TRUE(r->Exec("ROLLBACK").ok());
    EXPECT_EQ(Value(*r, "SELECT count(*) FROM local_probe WHERE x = 5"), "0");
  }

  // Control: with room under local_shared_pool_size (0 = half of
  // max_connections) the coordinator does connect to itself.
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "0"));
  {
    std::unique_ptr<PgClient> r = Connect();
    ASSERT_NE(r, nullptr);
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*r, {{Host(), cport, "SELECT 41+1"}});
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), 1u);
    EXPECT_TRUE((*rows)[0].success) << (*rows)[0];
    EXPECT_FALSE((*rows)[0].ran_locally) << "room under the local limit, yet ran locally";
    EXPECT_EQ((*rows)[0].result, Cell("42"));
    if (OnSharedPool()) {
      // The pool's connection to itself, until it idles out: counted once.
      EXPECT_TRUE(PollUntil([&] {
        const NodeCounters counted = Counters(cport);
        return self_backends() == std::to_string(counted.connections) && counted.connections <= 1 &&
               Counters(cport) == counted;
      })) << self_backends()
          << " backends vs " << Counters(cport);
    } else {
      EXPECT_EQ(self_backends(), "1") << "the cached connection to itself";
      EXPECT_EQ(Counters(cport), (NodeCounters{1, 1, 0, 0, 0}));
    }
  }
  EXPECT_TRUE(PollUntil([&] { return self_backends() == "0"; }));

  // At its limit: local_shared_pool_size = 1 and a slot held by another
  // session. The limit also bounds the active client backends (limit.h), so
  // an optional acquire is refused even before any slot is held; the holder
  // forces its slot.
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "1"));
  {
    std::unique_ptr<PgClient> holder = Connect();
    std::unique_ptr<PgClient> r = Connect();
    ASSERT_NE(holder, nullptr);
    ASSERT_NE(r, nullptr);
    // The holder is itself an active client backend: a limit of 1 admits
    // no optional acquire at all (limit.h), so the holder forces its slot.
    EXPECT_EQ(
        Value(*holder, absl::StrCat("SELECT connthrottle.try_acquire('127.0.0.1', ", c_port, ")")),
        "f");
    ASSERT_TRUE(
        holder->Exec(absl::StrCat("SELECT connthrottle.force_acquire('127.0.0.1', ", c_port, ")"))
            .ok());
    const NodeCounters held = Counters(cport);
    EXPECT_EQ(held.connections, 1);
    absl::StatusOr<std::vector<TaskRow>> rows =
        RunTasks(*r, {{Host(), cport, "SELECT 41+1"},
                      {Host(), cport, "SELECT 1/0"},
                      {Host(), cport, "SELECT 'still here'"}});
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), 3u);
    for (const TaskRow& row : *rows) EXPECT_TRUE(row.ran_locally) << row;
    EXPECT_EQ((*rows)[0].result, Cell("42"));
    EXPECT_FALSE((*rows)[1].success);
    EXPECT_EQ((*rows)[1].sqlstate, Cell("22012"));
    EXPECT_TRUE((*rows)[2].success);
    EXPECT_EQ((*rows)[2].result, Cell("still here"));
    EXPECT_EQ(self_backends(), "0") << "the coordinator connected to itself at its limit";
    EXPECT_EQ(Counters(cport), held) << "the executor took a local slot";
    EXPECT_EQ(Value(*holder, "SELECT connthrottle.release_all()"), "1");
  }
  EXPECT_TRUE(obs_->Exec("DROP TABLE local_probe").ok());
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('127.0.0.1', ", c_port, ")")).ok());
}

// local_shared_pool_size bounds the client backends active on the
// coordinator (limit.h, and the GUC's description): with n client backends a
// limit of n + 1 admits a connection to the local node, a limit of n does not.
// Background processes (autovacuum launcher, logical replication launcher)
// are not client backends.
TEST_P(PgExecutorTest, LocalLimitCountsClientBackendsOnly) {
  const std::string c_port = std::to_string(coordinator_->port());
  std::unique_ptr<PgClient> holder = Connect();
  ASSERT_NE(holder, nullptr);
  const std::string client_backends =
      "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'";
  // obs_ and holder; SetSetting's short-lived sessions must have ended.
  auto settled = [&] { return PollUntil([&] { return Value(*obs_, client_backends) == "2"; }); };
  const std::string try_acquire =
      absl::StrCat("SELECT connthrottle.try_acquire('127.0.0.1', ", c_port, ")");

  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "2"));
  ASSERT_TRUE(settled());
  EXPECT_EQ(Value(*holder, try_acquire), "f") << "2 client backends, limit 2";

  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "3"));
  ASSERT_TRUE(settled());
  // A backend that just left pg_stat_activity may still be counted for a
  // moment: allow it to go.
  const bool admitted = PollUntil([&] { return Value(*holder, try_acquire) == "t"; }, 2s);
  Report("smallest local_shared_pool_size admitting a local slot with 2 client backends",
         admitted ? "3" : "more than 3");
  EXPECT_TRUE(admitted) << "2 client backends, limit 3: refused; background processes are "
                           "counted as active client backends: "
                        << Rows(*obs_,
                                "SELECT backend_type FROM pg_stat_activity WHERE backend_type IN "
                                "('autovacuum launcher', 'autovacuum worker', 'logical "
                                "replication launcher', 'background worker')");
  (void)holder->Exec("SELECT connthrottle.release_all()");
}

// A task that runs locally may not call run_tasks (or distribute) itself: the
// inner call would take over the session's executor and rows, so the outer
// call returned the inner call's rows. It fails as a task instead.
TEST_P(PgExecutorTest, NestedRunTasksFromALocalTaskIsRefused) {
  const int cport = coordinator_->port();
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", cport, ")")).ok());
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  std::unique_ptr<PgClient> r = Connect();
  ASSERT_NE(r, nullptr);
  const std::string inner = absl::StrCat(
      "SELECT count(*) FROM connthrottle.run_tasks(ARRAY['127.0.0.1', '127.0.0.1'], ARRAY[",
      Port(0), ", ", Port(1), "], ARRAY['SELECT 1', 'SELECT 2'])");
  const std::string inner_distribute = absl::StrCat(
      "SELECT count(*) FROM connthrottle.distribute('SELECT 1', 't', ARRAY['127.0.0.1'], ARRAY[",
      Port(0), "])");
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(
      *r, {{Host(), cport, inner}, {Host(), cport, inner_distribute}, {Host(), cport, "SELECT 7"}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (int i = 0; i < 2; ++i) {
    const TaskRow& t = rows->at(i);
    SCOPED_TRACE(::testing::PrintToString(t));
    EXPECT_EQ(t.task, i + 1);
    EXPECT_EQ(t.port, cport);
    EXPECT_TRUE(t.ran_locally);
    EXPECT_FALSE(t.success);
    EXPECT_EQ(t.sqlstate, Cell("55000"));
    EXPECT_THAT(t.error.value_or(""), HasSubstr("while run_tasks or distribute runs"));
  }
  EXPECT_TRUE(rows->at(2).success) << rows->at(2);
  EXPECT_EQ(rows->at(2).result, Cell("7"));
  // The session's executor still works.
  rows = RunTasks(*r, {{Host(), Port(0), "SELECT 3"}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("3"));
}

}  // namespace
}  // namespace connthrottle::cluster
