// The shared pool through SQL: run_tasks with connthrottle.executor_transport
// = 'shared_pool' on a real cluster (a coordinator with connthrottle
// preloaded, so its communicator background worker runs, and two plain
// workers, all on 127.0.0.1).
//
// Covers the same results as the direct transport; many sessions sharing a
// pool smaller than they are; cancel, statement_timeout and a terminated
// session; a worker backend killed mid-task; a restarted worker; local
// failover; a session that stops reading in the middle of a large result;
// and the communicator terminated (57P01), also mid-response, and killed
// (the postmaster restarts the server). Every case ends with the counters exact —
// what connthrottle.nodes counts for each worker equals the pooled
// connections the communicator reports and the coordinator backends the
// worker itself shows — and a clean connthrottle.audit(). Synchronisation is
// by polling SQL state with deadlines; no assertion is on a duration. Each
// case checks through pool_stats() that the pool ran its tasks (the glue
// would fall back to the direct transport, with the same answers), and
// settings are applied only once the communicator counted the reload.

#include <signal.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kCoordinatorConnections[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle'";

int ToInt(const std::optional<std::string>& v) { return v.has_value() ? std::stoi(*v) : 0; }

class PgPoolTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-pgpool");
    if (!root.ok()) {
      *startup_error_ = root.status().ToString();
      return;
    }
    *root_ = *root;
    ServerConfig coordinator;
    coordinator.name = "coordinator";
    coordinator.max_connections = 50;
    coordinator.preload_connthrottle = true;
    coordinator.settings = {{"connthrottle.executor_transport", "'shared_pool'"}};
    absl::StatusOr<std::unique_ptr<LocalServer>> c = LocalServer::Start(*root_, coordinator);
    if (!c.ok()) {
      *startup_error_ = c.status().ToString();
      return;
    }
    for (int i = 0; i < 2; ++i) {
      ServerConfig worker;
      worker.name = absl::StrCat("worker", i + 1);
      worker.max_connections = 30;
      absl::StatusOr<std::unique_ptr<LocalServer>> w = LocalServer::Start(*root_, worker);
      if (!w.ok()) {
        *startup_error_ = w.status().ToString();
        return;
      }
      workers_[i] = w->release();
    }
    for (const std::string& sql :
         {std::string("CREATE EXTENSION connthrottle"),
          absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", workers_[0]->port(), ")"),
          absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", workers_[1]->port(), ")")}) {
      absl::StatusOr<QueryResult> r = (*c)->Query(sql);
      if (!r.ok()) {
        *startup_error_ = r.status().ToString();
        return;
      }
    }
    coordinator_ = c->release();
  }

  static void TearDownTestSuite() {
    delete coordinator_;
    coordinator_ = nullptr;
    for (LocalServer*& w : workers_) {
      delete w;
      w = nullptr;
    }
    if (!root_->empty()) RemoveTree(*root_);
  }

  void SetUp() override {
    ASSERT_NE(coordinator_, nullptr) << "cluster did not start: " << *startup_error_;
    ASSERT_TRUE(PollUntil([&] { return (obs_ = Connect()) != nullptr; }))
        << "the coordinator does not accept connections";
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<PgClient>> w = workers_[i]->Connect();
      ASSERT_TRUE(w.ok()) << w.status();
      wobs_[i] = *std::move(w);
    }
    ASSERT_TRUE(PollUntil([&] { return CommunicatorPid() != 0; })) << "no communicator runs";
  }

  // Every case ends with the counters exact and a clean audit.
  void TearDown() override {
    if (obs_ == nullptr) return;
    for (const std::string& name : changed_settings_) {
      EXPECT_TRUE(obs_->Exec(absl::StrCat("ALTER SYSTEM RESET ", name)).ok());
    }
    if (!changed_settings_.empty()) {
      EXPECT_TRUE(Reload());
    }
    ExpectCountersExact();
    absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
    EXPECT_TRUE(audit.ok()) << audit;
  }

  // What the table counts per worker, what the communicator says it holds,
  // and what the workers see agree (polled: each publishes its figures on
  // its own schedule).
  void ExpectCountersExact() {
    std::string last;
    const bool exact = PollUntil([&] {
      const int table0 = TableConnections(0), table1 = TableConnections(1);
      const int seen0 = CoordinatorConnectionsOn(0), seen1 = CoordinatorConnectionsOn(1);
      const int pool = ToInt(PoolStat("connections"));
      last = absl::StrCat("table ", table0, "+", table1, ", workers see ", seen0, "+", seen1,
                          ", communicator holds ", pool);
      return table0 == seen0 && table1 == seen1 && table0 + table1 == pool;
    });
    EXPECT_TRUE(exact) << last << "; nodes: " << Rows(*obs_, kNodes);
  }

  static std::unique_ptr<PgClient> Connect() {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // pg_reload_conf(), then waits until the communicator has applied it.
  bool Reload() {
    const int64_t before = Stat("reloads");
    return obs_->Exec("SELECT pg_reload_conf()").ok() &&
           PollUntil([&] { return Stat("reloads") > before; });
  }

  void SetSetting(const std::string& name, const std::string& value) {
    changed_settings_.push_back(name);
    ASSERT_TRUE(obs_->Exec(absl::StrCat("ALTER SYSTEM SET ", name, " = '", value, "'")).ok());
    ASSERT_TRUE(Reload()) << "the communicator did not reload";
    ASSERT_TRUE(PollUntil([&] {
      std::unique_ptr<PgClient> fresh = Connect();
      return fresh != nullptr && Value(*fresh, absl::StrCat("SHOW ", name)) == value;
    }));
  }

  // Waits until the pool's published `column` has grown by at least `by`
  // since `before`.
  bool Grew(const std::string& column, int64_t before, int64_t by) {
    return PollUntil([&] { return Stat(column) - before >= by; }, 15s);
  }

  static std::string Value(PgClient& c, const std::string& sql) {
    absl::StatusOr<QueryResult> r = c.Query(sql);
    return r.ok() ? r->Value() : r.status().ToString();
  }

  static std::string Rows(PgClient& c, const std::string& sql) {
    absl::StatusOr<QueryResult> r = c.Query(sql);
    if (!r.ok()) return r.status().ToString();
    std::vector<std::string> rows;
    for (const auto& row : r->rows) {
      std::vector<std::string> cells;
      for (const auto& cell : row) cells.push_back(cell.value_or("NULL"));
      rows.push_back(absl::StrCat("(", absl::StrJoin(cells, ","), ")"));
    }
    return rows.empty() ? "none" : absl::StrJoin(rows, " ");
  }

  std::optional<std::string> PoolStat(const std::string& column) {
    absl::StatusOr<QueryResult> r =
        obs_->Query(absl::StrCat("SELECT ", column, " FROM connthrottle.pool_stats()"));
    return r.ok() && !r->rows.empty() ? r->rows[0][0] : std::nullopt;
  }
  int CommunicatorPid() { return ToInt(PoolStat("pid")); }
  int64_t Stat(const std::string& column) {
    std::optional<std::string> v = PoolStat(column);
    return v.has_value() ? std::stoll(*v) : -1;
  }

  int TableConnections(int i) {
    return ToInt(obs_->Query(absl::StrCat("SELECT coalesce(sum(connections), 0) FROM "
                                          "connthrottle.nodes WHERE port = ",
                                          Port(i)))
                     ->rows[0][0]);
  }
  int CoordinatorConnectionsOn(int i, const std::string& extra = "") {
    absl::StatusOr<QueryResult> r = wobs_[i]->Query(absl::StrCat(kCoordinatorConnections, extra));
    return r.ok() ? std::stoi(r->Value()) : -1;
  }
  // Backends on worker i running `query_part` for the coordinator.
  int Running(int i, const std::string& query_part) {
    return CoordinatorConnectionsOn(
        i, absl::StrCat(" AND state = 'active' AND query LIKE '%", query_part, "%'"));
  }

  // A session whose backend is stopped (SIGSTOP) just as the communicator
  // has the response of its 1 MB task: the task waits on worker 1 for the
  // advisory lock `lock`, which the test lets go once the backend is stopped.
  struct StoppedReader {
    int pid = 0;
    std::unique_ptr<AsyncQuery> query;
    void Resume() {
      if (pid != 0) kill(pid, SIGCONT);
      pid = 0;
    }
    ~StoppedReader() { Resume(); }
  };
  void StopMidResponse(PgClient& session, int lock, StoppedReader& reader) {
    const std::string waits = absl::StrCat("pg_advisory_xact_lock(", lock, ")");
    ASSERT_TRUE(wobs_[0]->Exec(absl::StrCat("SELECT pg_advisory_lock(", lock, ")")).ok());
    const int pid = session.BackendPid();
    reader.query = std::make_unique<AsyncQuery>(
        session,
        absl::StrCat("SELECT length(result), result = repeat('x', 1000000) FROM "
                     "connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
                     Port(0), "], ARRAY['SELECT repeat(''x'', 1000000) FROM ", waits, "'])"));
    ASSERT_TRUE(PollUntil([&] { return Running(0, waits) == 1; }));
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    reader.pid = pid;
    ASSERT_TRUE(wobs_[0]->Exec(absl::StrCat("SELECT pg_advisory_unlock(", lock, ")")).ok());
    ASSERT_TRUE(PollUntil([&] { return Running(0, waits) == 0; }));
  }

  // Lets a StopMidResponse reader run again: it gets all 1,000,000 bytes.
  static void ResumeAndExpectTheWholeResult(StoppedReader& reader) {
    reader.Resume();
    ASSERT_TRUE(reader.query->WaitDone(60s));
    ASSERT_TRUE(reader.query->result().ok()) << reader.query->result().status();
    EXPECT_EQ(reader.query->result()->rows[0][0], "1000000");
    EXPECT_EQ(reader.query->result()->rows[0][1], "t");
  }

  // The session's slot serves its next request: it answers SELECT value.
  static void ExpectSlotServes(PgClient& session, int value) {
    absl::StatusOr<std::vector<TaskRow>> after =
        RunTasks(session, {On(0, absl::StrCat("SELECT ", value))});
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ((*after)[0].result, std::to_string(value));
  }

  static int Port(int i) { return workers_[i]->port(); }
  static TaskSpec On(int i, std::string sql) { return {"127.0.0.1", Port(i), std::move(sql)}; }

  static constexpr char kNodes[] =
      "SELECT host, port, connections, forced, reserved, waiters FROM connthrottle.nodes "
      "ORDER BY host, port";

  static inline LocalServer* coordinator_ = nullptr;
  static inline LocalServer* workers_[2] = {nullptr, nullptr};
  static inline std::string* root_ = new std::string;
  static inline std::string* startup_error_ = new std::string;

  std::unique_ptr<PgClient> obs_;
  std::unique_ptr<PgClient> wobs_[2];
  std::vector<std::string> changed_settings_;
};

// ---------------------------------------------------------------------------

TEST_F(PgPoolTest, GivesTheSameRowsAsTheDirectTransport) {
  const std::vector<TaskSpec> tasks = {
      On(0, "SELECT 41 + 1"),
      On(1, "SELECT NULL::text"),
      On(0, "SELECT g FROM generate_series(1, 5) g"),
      On(1, "SELECT 1/0"),
      On(0, "DO $$ BEGIN END $$"),
      On(1, "SELECT repeat('x', 5000)"),
  };
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_EQ(Value(*session, "SHOW connthrottle.executor_transport"), "shared_pool");
  // Rounds 1 and 2 run on connections that earlier rounds used (and reset).
  constexpr int kRounds = 3;
  std::vector<std::vector<TaskRow>> rounds;
  for (int round = 0; round < kRounds; ++round) {
    const int64_t run_before = Stat("tasks_run");
    absl::StatusOr<std::vector<TaskRow>> pooled = RunTasks(*session, tasks);
    ASSERT_TRUE(pooled.ok()) << pooled.status();
    ASSERT_EQ(pooled->size(), tasks.size());
    EXPECT_TRUE(Grew("tasks_run", run_before, 6)) << "the pool did not run the tasks";
    rounds.push_back(*std::move(pooled));
  }
  ASSERT_TRUE(session->Exec("SET connthrottle.executor_transport = direct").ok());
  absl::StatusOr<std::vector<TaskRow>> direct = RunTasks(*session, tasks);
  ASSERT_TRUE(direct.ok()) << direct.status();
  for (int round = 0; round < kRounds; ++round) {
    for (size_t t = 0; t < tasks.size(); ++t) {
      SCOPED_TRACE(absl::StrCat("round ", round, ": ", tasks[t].sql));
      const TaskRow& p = rounds[round][t];
      const TaskRow& d = (*direct)[t];
      EXPECT_EQ(p.success, d.success);
      EXPECT_EQ(p.result, d.result);
      EXPECT_EQ(p.sqlstate, d.sqlstate);
      EXPECT_EQ(p.error, d.error);
    }
  }
  const std::vector<TaskRow>* pooled = &rounds[1];
  EXPECT_EQ((*pooled)[0].result, "42");
  EXPECT_EQ((*pooled)[1].result, std::nullopt);
  EXPECT_EQ((*pooled)[2].result, "SELECT 5");
  EXPECT_EQ((*pooled)[3].sqlstate, "22012");
  EXPECT_EQ((*pooled)[5].result, std::string(5000, 'x'));
  // The direct transport's cached connections go with the session.
  session.reset();
  ASSERT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == TableConnections(0); }));
}

TEST_F(PgPoolTest, ManySessionsShareAPoolSmallerThanThemWithinTheLimit) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  // Connections pooled under the old limit are closed down to the new one.
  ASSERT_TRUE(PollUntil([&] {
    return CoordinatorConnectionsOn(0) <= 2 && CoordinatorConnectionsOn(1) <= 2;
  })) << "the pool kept more connections than the lowered limit";
  const int64_t started_before = ToInt(PoolStat("connections_started"));
  const int64_t run_before = ToInt(PoolStat("tasks_run"));
  constexpr int kSessions = 12, kExecutions = 15;
  std::atomic<int> failures{0}, peak0{0}, peak1{0};
  std::atomic<bool> stop{false};
  // The workers' own count of coordinator backends, sampled throughout.
  std::thread watcher([&] {
    std::unique_ptr<PgClient> w0 = *workers_[0]->Connect(), w1 = *workers_[1]->Connect();
    while (!stop.load()) {
      peak0 = std::max(peak0.load(), std::stoi(Value(*w0, kCoordinatorConnections)));
      peak1 = std::max(peak1.load(), std::stoi(Value(*w1, kCoordinatorConnections)));
    }
  });
  std::vector<std::thread> sessions;
  std::vector<std::string> errors(kSessions);
  for (int s = 0; s < kSessions; ++s) {
    sessions.emplace_back([&, s] {
      std::unique_ptr<PgClient> c = Connect();
      if (c == nullptr) {
        ++failures;
        return;
      }
      for (int e = 0; e < kExecutions; ++e) {
        absl::StatusOr<std::vector<TaskRow>> rows =
            RunTasks(*c, {On(0, "SELECT pg_sleep(0.002)"), On(1, "SELECT pg_sleep(0.002)"),
                          On(0, absl::StrCat("SELECT ", s)), On(1, absl::StrCat("SELECT ", e))});
        bool ok = rows.ok() && rows->size() == 4;
        for (size_t t = 0; ok && t < rows->size(); ++t) ok = (*rows)[t].success;
        if (ok)
          ok = (*rows)[2].result == std::to_string(s) && (*rows)[3].result == std::to_string(e);
        if (!ok) {
          ++failures;
          errors[s] = rows.ok() ? "a task failed or gave a wrong value" : rows.status().ToString();
        }
      }
    });
  }
  for (auto& t : sessions) t.join();
  stop = true;
  watcher.join();
  EXPECT_EQ(failures.load(), 0) << absl::StrJoin(errors, "; ");
  EXPECT_LE(peak0.load(), 2);
  EXPECT_LE(peak1.load(), 2);
  // Connections live across sessions: the whole run cost each worker at most
  // its limit of backends, however many sessions came and went.
  ASSERT_TRUE(PollUntil(
      [&] { return ToInt(PoolStat("tasks_run")) - run_before >= kSessions * kExecutions * 4; }));
  EXPECT_LE(ToInt(PoolStat("connections_started")) - started_before, 4);
  Report("worker backends started by the pool for 720 tasks",
         std::to_string(ToInt(PoolStat("connections_started")) - started_before));
}

TEST_F(PgPoolTest, CancelAndStatementTimeoutWithdrawTheTasksAndKeepTheConnections) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  // Warm: a connection to worker 1 in the pool.
  ASSERT_TRUE(RunTasks(*session, {On(0, "SELECT 1")}).ok());
  ASSERT_TRUE(PollUntil([&] { return Stat("connections") >= 1; }));
  const int64_t cancelled_before = Stat("tasks_cancelled");
  const int64_t started_before = Stat("connections_started");
  {
    AsyncQuery q(*session,
                 absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
                              Port(0), "], ARRAY['SELECT pg_sleep(600)'])"));
    ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 1; }));
    const Clock::time_point cancelled = Clock::now();
    ASSERT_TRUE(session->Cancel().ok());
    ASSERT_TRUE(q.WaitDone(60s));
    EXPECT_EQ(SqlState(q.result().status()), "57014") << q.result().status();
    // The worker's query was cancelled too, long before it would have ended.
    EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 0; }, 15s));
    // Printed, not asserted (issue 11 wants 50 ms; these machines are shared).
    Report("cancel -> the session's error",
           absl::StrCat(Ms(q.ended() - cancelled), " ms; -> the worker's query gone: ",
                        Ms(Clock::now() - cancelled), " ms (poll granularity ~1 ms)"));
  }
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 1));
  ASSERT_TRUE(session->Exec("SET statement_timeout = '300ms'").ok());
  absl::StatusOr<std::vector<TaskRow>> slow = RunTasks(*session, {On(0, "SELECT pg_sleep(600)")});
  EXPECT_EQ(SqlState(slow.status()), "57014") << slow.status();
  EXPECT_THAT(std::string(slow.status().message()), HasSubstr("statement timeout"));
  EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 0; }, 15s));
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 2));
  ASSERT_TRUE(session->Exec("RESET statement_timeout").ok());
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 7")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "7");
  // The cancelled tasks' connection was drained and kept, not replaced.
  EXPECT_EQ(Stat("connections_started"), started_before);
}

TEST_F(PgPoolTest, ATerminatedSessionsTasksAreCancelled) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int pid = session->BackendPid();
  const int64_t cancelled_before = Stat("tasks_cancelled");
  AsyncQuery q(*session, absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1', "
                                      "'127.0.0.1'], ARRAY[",
                                      Port(0), ", ", Port(1),
                                      "], ARRAY['SELECT pg_sleep(601)', 'SELECT pg_sleep(601)'])"));
  ASSERT_TRUE(
      PollUntil([&] { return Running(0, "pg_sleep(601)") + Running(1, "pg_sleep(601)") == 2; }));
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", pid, ")")), "t");
  ASSERT_TRUE(q.WaitDone(60s));
  EXPECT_FALSE(q.result().ok());
  EXPECT_TRUE(PollUntil(
      [&] { return Running(0, "pg_sleep(601)") + Running(1, "pg_sleep(601)") == 0; }, 15s))
      << "the dead session's tasks still run on the workers";
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 2));
}

TEST_F(PgPoolTest, AWorkerBackendKilledMidTaskFailsTheTaskWith08006) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  AsyncQuery q(*session, absl::StrCat("SELECT success, sqlstate FROM connthrottle.run_tasks("
                                      "ARRAY['127.0.0.1'], ARRAY[",
                                      Port(0), "], ARRAY['SELECT pg_sleep(602)'])"));
  ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(602)") == 1; }));
  ASSERT_TRUE(wobs_[0]
                  ->Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                         "application_name = 'connthrottle' AND query LIKE '%pg_sleep(602)%'")
                  .ok());
  ASSERT_TRUE(q.WaitDone(60s));
  ASSERT_TRUE(q.result().ok()) << q.result().status();
  EXPECT_EQ(q.result()->rows[0][0], "f");
  EXPECT_EQ(q.result()->rows[0][1], "08006");
  // The pool replaces the connection.
  const int64_t run_before = Stat("tasks_run");
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 8")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "8");
  EXPECT_TRUE(Grew("tasks_run", run_before, 1));
}

TEST_F(PgPoolTest, ARestartedWorkersPooledConnectionsAreReplaced) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(RunTasks(*session, {On(1, "SELECT 1")}).ok());
  ASSERT_GE(CoordinatorConnectionsOn(1), 1);
  const int64_t run_before = Stat("tasks_run");
  const int64_t dead_before = Stat("closed_dead");
  wobs_[1].reset();
  ASSERT_TRUE(workers_[1]->Stop().ok());
  ASSERT_TRUE(workers_[1]->StartAgain().ok());
  absl::StatusOr<std::unique_ptr<PgClient>> w = workers_[1]->Connect();
  ASSERT_TRUE(w.ok()) << w.status();
  wobs_[1] = *std::move(w);
  // The pooled connection is dead; the task had not been sent, so it runs
  // on a new one.
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(1, "SELECT 9")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE((*after)[0].success) << (*after)[0];
  EXPECT_EQ((*after)[0].result, "9");
  EXPECT_TRUE(Grew("tasks_run", run_before, 1));
  EXPECT_TRUE(Grew("closed_dead", dead_before, 1)) << "the dead connection was not noticed";
}

TEST_F(PgPoolTest, TheLocalNodeFailsOverToInProcessExecution) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int64_t handed_before = Stat("tasks_handed_back");
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(
      *session,
      {{"127.0.0.1", coordinator_->port(), "SELECT current_setting('port')"}, On(0, "SELECT 10")});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_TRUE((*rows)[0].ran_locally) << (*rows)[0];
  EXPECT_EQ((*rows)[0].result, std::to_string(coordinator_->port()));
  EXPECT_FALSE((*rows)[1].ran_locally);
  EXPECT_EQ((*rows)[1].result, "10");
  EXPECT_TRUE(Grew("tasks_handed_back", handed_before, 1))
      << "the local task did not go through the pool";
}

TEST_F(PgPoolTest, ATerminatedCommunicatorAnswersWith57P01AndStartsAgain) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int communicator = CommunicatorPid();
  AsyncQuery q(*session,
               absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
                            Port(0), "], ARRAY['SELECT pg_sleep(603)'])"));
  ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(603)") == 1; }));
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", communicator, ")")), "t");
  ASSERT_TRUE(q.WaitDone(60s));
  EXPECT_EQ(SqlState(q.result().status()), "57P01") << q.result().status();
  EXPECT_THAT(std::string(q.result().status().message()), HasSubstr("communicator"));
  // Its connections are closed (the worker's query with them) and their
  // slots given back; a new communicator starts.
  EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(603)") == 0; }, 15s));
  ASSERT_TRUE(PollUntil([&] {
    const int pid = CommunicatorPid();
    return pid != 0 && pid != communicator;
  }));
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 11")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "11");
  EXPECT_TRUE(Grew("tasks_run", 0, 1)) << "the new communicator did not run it";
}

// A response larger than the message area (1 MB against 64 kB) crosses it
// in parts, each sent when the session has read the last. A session that
// stops reading in the middle (its backend SIGSTOPped) holds up nobody: with
// the limit at one connection per worker, another session's tasks run on
// the very connection the big result came from; and once the slow session
// reads again it gets every byte.
TEST_F(PgPoolTest, ASessionReadingALargeResultSlowlyHoldsUpNoOneElse) {
  SetSetting("connthrottle.max_shared_pool_size", "1");
  std::unique_ptr<PgClient> slow = Connect(), other = Connect();
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(other, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4242, reader));

  // While the slow session's backend is stopped, mid-response.
  for (int round = 0; round < 5; ++round) {
    AsyncQuery o(*other, absl::StrCat("SELECT sum(result::int) FROM "
                                      "connthrottle.run_tasks(ARRAY['127.0.0.1', '127.0.0.1'], "
                                      "ARRAY[",
                                      Port(0), ", ", Port(1), "], ARRAY['SELECT ", round,
                                      "', 'SELECT ", round + 10, "'])"));
    ASSERT_TRUE(o.WaitDone(60s)) << "another session waited for the slow reader";
    ASSERT_TRUE(o.result().ok()) << o.result().status();
    EXPECT_EQ(o.result()->Value(), std::to_string(2 * round + 10));
  }
  EXPECT_FALSE(reader.query->done());
  EXPECT_LE(CoordinatorConnectionsOn(0), 1);

  ASSERT_NO_FATAL_FAILURE(ResumeAndExpectTheWholeResult(reader));
}

// A session cancelled while it holds the first part of a response in parts
// gives up the rest (the communicator drops it) and its slot serves its next
// request at once.
TEST_F(PgPoolTest, ACancelMidResponseDropsTheRestAndFreesTheSlot) {
  std::unique_ptr<PgClient> slow = Connect();
  ASSERT_NE(slow, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4244, reader));
  // Delivered when the backend runs again, with the first part in its area.
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_cancel_backend(", reader.pid, ")")), "t");
  reader.Resume();
  ASSERT_TRUE(reader.query->WaitDone(60s));
  EXPECT_EQ(SqlState(reader.query->result().status()), "57014") << reader.query->result().status();
  ExpectSlotServes(*slow, 14);
}

// The communicator holds at most connthrottle.pool_response_memory of
// results waiting to be read in parts. With 1500 kB and a stopped reader
// holding about 1 MB, another session's 1 MB result cannot wait too: its
// task fails at once with 54000 naming the setting (the session is not held
// up). Once the reader has read its result, the same task succeeds.
TEST_F(PgPoolTest, ResultsWaitingForSlowReadersStayWithinPoolResponseMemory) {
  SetSetting("connthrottle.pool_response_memory", "1500kB");
  std::unique_ptr<PgClient> slow = Connect(), other = Connect();
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(other, nullptr);
  const std::vector<TaskSpec> big = {On(1, "SELECT repeat('y', 1000000)")};
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4245, reader));

  absl::StatusOr<std::vector<TaskRow>> refused = RunTasks(*other, big);
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->size(), 1u);
  EXPECT_FALSE((*refused)[0].success);
  EXPECT_EQ((*refused)[0].sqlstate, "54000") << (*refused)[0];
  EXPECT_THAT((*refused)[0].error.value_or(""), HasSubstr("connthrottle.pool_response_memory"));
  EXPECT_FALSE(reader.query->done());

  ASSERT_NO_FATAL_FAILURE(ResumeAndExpectTheWholeResult(reader));

  absl::StatusOr<std::vector<TaskRow>> again = RunTasks(*other, big);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_TRUE((*again)[0].success) << (*again)[0].error.value_or("");
  EXPECT_TRUE((*again)[0].result == std::string(1000000, 'y')) << "the result is not intact";
}

// The communicator terminated while a session is stopped in the middle of
// reading a response in parts: once the session reads again it fails with
// 57P01 or 08006 (whichever communicator it finds), and its slot is usable.
TEST_F(PgPoolTest, ACommunicatorGoneMidResponseFailsTheReaderCleanly) {
  std::unique_ptr<PgClient> slow = Connect();
  ASSERT_NE(slow, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4243, reader));
  const int communicator = CommunicatorPid();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", communicator, ")")), "t");
  ASSERT_TRUE(PollUntil([&] { return CommunicatorPid() != communicator; }));

  reader.Resume();
  AsyncQuery& q = *reader.query;
  ASSERT_TRUE(q.WaitDone(60s));
  const std::string state = SqlState(q.result().status());
  EXPECT_TRUE(state == "57P01" || state == "08006") << q.result().status();
  ASSERT_TRUE(PollUntil([&] { return CommunicatorPid() != 0; }));
  ExpectSlotServes(*slow, 13);
}

// ---------------------------------------------------------------------------
// Sharing the pool safely (issue 24). Sessions run as roles of their own:
// superusers on the coordinator (so run_tasks needs no grants), plain roles
// on the workers, where the pool connects as them.

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

// Last (gtest runs a suite's cases in the order written): the server restarts.
TEST_F(PgPoolTest, ZKilledCommunicatorRestartsTheServerWithNothingCounted) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(RunTasks(*session, {On(0, "SELECT 1"), On(1, "SELECT 1")}).ok());
  const int communicator = CommunicatorPid();
  ASSERT_GT(communicator, 0);
  ASSERT_EQ(kill(communicator, SIGKILL), 0);
  // The postmaster ends every backend and re-initialises shared memory.
  EXPECT_TRUE(PollUntil([&] { return !session->Exec("SELECT 1").ok(); }));
  obs_.reset();
  ASSERT_TRUE(PollUntil([&] { return (obs_ = Connect()) != nullptr && CommunicatorPid() != 0; }));
  EXPECT_EQ(Rows(*obs_, kNodes), "none");
  session = Connect();
  ASSERT_NE(session, nullptr);
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 12")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "12");
  EXPECT_TRUE(Grew("tasks_run", 0, 1)) << "the new communicator did not run it";
}

}  // namespace
}  // namespace connthrottle::cluster
