// The fixture of pg_executor_test (tests/pg_executor_*_test.cc): run_tasks,
// run_on_all_nodes and distribute through SQL on a real cluster: a
// coordinator with connthrottle preloaded and two plain PostgreSQL workers,
// all on 127.0.0.1. Every case runs on both transports
// (connthrottle.executor_transport = direct, each session's own adaptive
// executor, and shared_pool, the communicator's pooled connections): the
// same assertions hold for both (the one instantiation of PgExecutorTest, for
// the cases of every file, is in pg_executor_catalog_settings_test.cc).
// Covers the worker-node catalog, run_tasks / run_on_all_nodes fan-out, the
// shared limit across concurrent coordinator sessions (checked from the
// workers' own pg_stat_activity), local-execution failover, distribute (COPY
// with up-front reservations), query cancel and backend termination, the
// executor settings' defaults, and a worker that is down.
//
// The servers are started once for the binary. Every case starts from the
// same state (the catalog holds exactly the two workers, no busy node, the
// executor settings at their defaults) and ends by restoring it: its sessions
// gone, no coordinator connection left on any worker, no busy node, a clean
// connthrottle.audit(). On the shared pool the communicator's idle
// connections close after kPoolIdleTimeout, so that holds there too. Synchronisation is by polling
// SQL state with deadlines; timings are printed and only bounded generously.

#ifndef CONNTHROTTLE_TESTS_TESTING_PG_EXECUTOR_FIXTURE_H_
#define CONNTHROTTLE_TESTS_TESTING_PG_EXECUTOR_FIXTURE_H_

#include <functional>
#include <map>
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

namespace connthrottle::cluster {

using Cell = std::optional<std::string>;

// Runs a function when leaving the scope (cleanup that must run even when an
// assertion returns early).
class Defer {
 public:
  explicit Defer(std::function<void()> f) : f_(std::move(f)) {}
  Defer(const Defer&) = delete;
  Defer& operator=(const Defer&) = delete;
  ~Defer() { f_(); }

 private:
  std::function<void()> f_;
};

inline int ToInt(const Cell& v) { return v.has_value() ? std::stoi(*v) : 0; }

// Coordinator backends on a worker: the executor's connections carry
// application_name 'connthrottle' (the test's own sessions use 'connthrottle-test').
inline constexpr char kCoordinatorConnections[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle'";

// How long the shared pool keeps an idle connection in these cases: short,
// so that every case can end with no coordinator connection on a worker.
inline constexpr char kPoolIdleTimeout[] = "200ms";

class PgExecutorTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-pgexec");
    if (!root.ok()) {
      *startup_error_ = root.status().ToString();
      return;
    }
    *root_ = *root;
    ServerConfig coordinator;
    coordinator.name = "coordinator";
    coordinator.max_connections = 50;
    coordinator.preload_connthrottle = true;
    coordinator.settings = {
        {"connthrottle.pool_idle_timeout", absl::StrCat("'", kPoolIdleTimeout, "'")}};
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
    // Catalog order is (host, port): keep workers_ in that order.
    if (workers_[1]->port() < workers_[0]->port()) std::swap(workers_[0], workers_[1]);
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
    obs_ = Connect();
    ASSERT_NE(obs_, nullptr);
    ASSERT_NO_FATAL_FAILURE(ConnectWorkerObservers());
    ASSERT_NO_FATAL_FAILURE(UseTransport(GetParam()));
    ASSERT_EQ(Catalog(), ExpectedCatalog()) << "catalog not as the suite set it up";
    ASSERT_EQ(Value(*obs_, kCountNodes), "0")
        << "busy nodes before the test: " << Rows(*obs_, kNodes);
  }

  // Restores the shared state and checks that the case left nothing behind.
  void TearDown() override {
    if (coordinator_ == nullptr || obs_ == nullptr) return;
    for (const auto& [name, original] : changed_settings_) {
      EXPECT_TRUE(obs_->Exec(absl::StrCat("ALTER SYSTEM RESET ", name)).ok());
    }
    if (!changed_settings_.empty()) {
      EXPECT_TRUE(obs_->Exec("SELECT pg_reload_conf()").ok());
      for (const auto& [name, original] : changed_settings_) {
        EXPECT_TRUE(PollUntil([&] { return Show(name) == original; }))
            << name << " did not return to " << original;
      }
    }
    EXPECT_TRUE(obs_->Exec(absl::StrCat("DELETE FROM connthrottle.worker_node WHERE NOT (host = "
                                        "'127.0.0.1' AND port IN (",
                                        workers_[0]->port(), ", ", workers_[1]->port(), "))"))
                    .ok());
    EXPECT_TRUE(PollUntil([&] {
      return Value(*obs_,
                   "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()") == "0";
    })) << "sessions left on the coordinator: "
        << Rows(*obs_,
                "SELECT pid, application_name, state, query FROM pg_stat_activity WHERE "
                "backend_type = 'client backend' AND pid <> pg_backend_pid()");
    EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; }))
        << "busy nodes left: " << Rows(*obs_, kNodes);
    for (int i = 0; i < 2; ++i) {
      if (wobs_[i] == nullptr) continue;
      EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(i) == 0; }))
          << "coordinator connections left on worker " << i + 1;
    }
    absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
    EXPECT_TRUE(audit.ok()) << audit;
    obs_.reset();
    for (auto& w : wobs_) w.reset();
  }

  // Makes `transport` the executor_transport of every new session (ALTER
  // SYSTEM, kept across cases of the same transport).
  void UseTransport(const std::string& transport) {
    if (Show("connthrottle.executor_transport") == transport) return;
    ASSERT_TRUE(obs_->Exec(absl::StrCat("ALTER SYSTEM SET connthrottle.executor_transport = '",
                                        transport, "'"))
                    .ok());
    ASSERT_TRUE(obs_->Exec("SELECT pg_reload_conf()").ok());
    ASSERT_TRUE(PollUntil([&] { return Show("connthrottle.executor_transport") == transport; }))
        << "executor_transport did not become " << transport;
  }
  bool OnSharedPool() const { return GetParam() == "shared_pool"; }

  static std::unique_ptr<PgClient> Connect() {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  void ConnectWorkerObservers() {
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[i]->Connect();
      ASSERT_TRUE(c.ok()) << c.status();
      wobs_[i] = *std::move(c);
    }
  }

  static std::string Show(const std::string& name) {
    absl::StatusOr<QueryResult> r = coordinator_->Query(absl::StrCat("SHOW ", name));
    return r.ok() ? r->Value() : r.status().ToString();
  }

  // ALTER SYSTEM SET + reload, then waits until a new session shows the
  // value. TearDown resets it.
  bool SetSetting(const std::string& name, const std::string& value) {
    if (!changed_settings_.contains(name)) changed_settings_[name] = Show(name);
    if (!obs_->Exec(absl::StrCat("ALTER SYSTEM SET ", name, " = '", value, "'")).ok()) return false;
    if (!obs_->Exec("SELECT pg_reload_conf()").ok()) return false;
    return PollUntil([&] { return Show(name) == value; });
  }

  static std::string Value(PgClient& c, const std::string& sql,
                           const std::vector<Cell>& params = {}) {
    absl::StatusOr<QueryResult> r = c.Query(sql, params);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->Value() : "";
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

  // The catalog as "(host,port,is_local)" rows in view order.
  std::string Catalog() {
    return Rows(*obs_, "SELECT host, port, is_local FROM connthrottle.worker_nodes");
  }
  static std::string ExpectedCatalog() {
    return absl::StrCat("(127.0.0.1,", workers_[0]->port(), ",f) (127.0.0.1,", workers_[1]->port(),
                        ",f)");
  }

  NodeCounters Counters(int port) {
    absl::StatusOr<QueryResult> r = obs_->Query(
        "SELECT count(*), sum(connections), sum(forced), sum(reserved), sum(waiters) "
        "FROM connthrottle.nodes WHERE host = '127.0.0.1' AND port = $1",
        {std::to_string(port)});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->rows.empty()) return {};
    const auto& row = r->rows[0];
    return {ToInt(row[0]), ToInt(row[1]), ToInt(row[2]), ToInt(row[3]), ToInt(row[4])};
  }
  NodeCounters WorkerCounters(int i) { return Counters(workers_[i]->port()); }

  // Backends of the coordinator's executor on worker i, per that worker.
  int CoordinatorConnectionsOn(int i, const std::string& extra = "") {
    absl::StatusOr<QueryResult> r = wobs_[i]->Query(absl::StrCat(kCoordinatorConnections, extra));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::stoi(r->Value()) : -1;
  }

  // Nothing runs on worker i: the coordinator's connections there (at most
  // `at_most`) are idle, each a worker backend counted once, and the node
  // has no forced, reserved or waiting slot. For the shared pool, whose
  // connections close when idle for kPoolIdleTimeout, polled until the
  // coordinator's count and the worker's agree.
  void ExpectIdleConnectionsOn(int i, int at_most) {
    int backends = -1;
    NodeCounters counted;
    EXPECT_TRUE(PollUntil([&] {
      counted = WorkerCounters(i);
      backends = CoordinatorConnectionsOn(i);
      return backends == counted.connections && WorkerCounters(i) == counted;
    })) << backends
        << " backends on worker " << i + 1 << " vs " << counted;
    EXPECT_LE(counted.connections, at_most) << "worker " << i + 1;
    EXPECT_EQ(counted.forced, 0);
    EXPECT_EQ(counted.reserved, 0);
    EXPECT_EQ(counted.waiters, 0);
    EXPECT_EQ(CoordinatorConnectionsOn(i, " AND state <> 'idle'"), 0) << "worker " << i + 1;
  }

  static std::string Host() { return "127.0.0.1"; }
  static int Port(int i) { return workers_[i]->port(); }
  static std::string Node(int i) { return absl::StrCat("127.0.0.1:", workers_[i]->port()); }
  static std::string CoordinatorNode() { return absl::StrCat("127.0.0.1:", coordinator_->port()); }

  static constexpr char kCountNodes[] = "SELECT count(*) FROM connthrottle.nodes";
  static constexpr char kNodes[] =
      "SELECT host, port, connections, forced, reserved, waiters FROM connthrottle.nodes "
      "ORDER BY host, port";

  static inline LocalServer* coordinator_ = nullptr;
  static inline LocalServer* workers_[2] = {nullptr, nullptr};
  static inline std::string* root_ = new std::string;
  static inline std::string* startup_error_ = new std::string;

  std::unique_ptr<PgClient> obs_;      // observes the coordinator from a session of its own
  std::unique_ptr<PgClient> wobs_[2];  // observes each worker
  std::map<std::string, std::string> changed_settings_;  // name -> value before the test
};

}  // namespace connthrottle::cluster

#endif  // CONNTHROTTLE_TESTS_TESTING_PG_EXECUTOR_FIXTURE_H_
