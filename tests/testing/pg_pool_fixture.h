// The fixture of pg_pool_test (tests/pg_pool_*_test.cc): the shared pool
// through SQL, run_tasks with connthrottle.executor_transport = 'shared_pool'
// on a real cluster (a coordinator with connthrottle preloaded, so its
// communicator background worker runs, and two plain workers, all on
// 127.0.0.1), started once for each suite.
//
// Every case ends with the counters exact — what connthrottle.nodes counts
// for each worker equals the pooled connections the communicator reports and
// the coordinator backends the worker itself shows — and a clean
// connthrottle.audit(). Synchronisation is by polling SQL state with
// deadlines; no assertion is on a duration. Each case checks through
// pool_stats() that the pool ran its tasks (the glue would fall back to the
// direct transport, with the same answers), and settings are applied only
// once the communicator counted the reload.

#ifndef CONNTHROTTLE_TESTS_TESTING_PG_POOL_FIXTURE_H_
#define CONNTHROTTLE_TESTS_TESTING_PG_POOL_FIXTURE_H_

#include <signal.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {

inline constexpr char kCoordinatorConnections[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle'";

inline int ToInt(const std::optional<std::string>& v) { return v.has_value() ? std::stoi(*v) : 0; }

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
    if (absl::Status s = AddExtensionAndWorkers(**c, {workers_[0]->port(), workers_[1]->port()});
        !s.ok()) {
      *startup_error_ = s.ToString();
      return;
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
    return PollUntil([&] { return Stat(column) - before >= by; }, std::chrono::seconds(15));
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
    ASSERT_TRUE(reader.query->WaitDone(std::chrono::seconds(60)));
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

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_PG_POOL_FIXTURE_H_
