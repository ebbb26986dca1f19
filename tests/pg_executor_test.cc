// run_tasks, run_on_all_nodes and distribute through SQL on a real cluster:
// a coordinator with connthrottle preloaded and two plain PostgreSQL
// workers, all on 127.0.0.1. Every case runs on both transports
// (connthrottle.executor_transport = direct, each session's own adaptive
// executor, and shared_pool, the communicator's pooled connections): the
// same assertions hold for both.
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

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
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

int ToInt(const Cell& v) { return v.has_value() ? std::stoi(*v) : 0; }

// Counters of one key of connthrottle.nodes.

// Coordinator backends on a worker: the executor's connections carry
// application_name 'connthrottle' (the test's own sessions use 'connthrottle-test').
constexpr char kCoordinatorConnections[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle'";

// How long the shared pool keeps an idle connection in these cases: short,
// so that every case can end with no coordinator connection on a worker.
constexpr char kPoolIdleTimeout[] = "200ms";

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

// ---------------------------------------------------------------------------

TEST_P(PgExecutorTest, CatalogRefusesBadAndDuplicateNodes) {
  const std::string before = Catalog();
  struct Bad {
    std::string call;
    std::string sqlstate;
    std::string message;  // a part of the message
  };
  const std::vector<Bad> bad = {
      {"connthrottle.add_node(NULL, 5432)", "22004", "must not be NULL"},
      {"connthrottle.add_node('127.0.0.1', NULL)", "22004", "must not be NULL"},
      {"connthrottle.add_node('', 5432)", "22023", "1 to 255 bytes"},
      {"connthrottle.add_node(repeat('h', 256), 5432)", "22023", "got 256"},
      {"connthrottle.add_node('127.0.0.1', 0)", "22023", "port 0 is outside"},
      {"connthrottle.add_node('127.0.0.1', 70000)", "22023", "port 70000 is outside"},
      {absl::StrCat("connthrottle.add_node('127.0.0.1', ", Port(0), ")"), "23505",
       absl::StrCat("node ", Node(0), " is already in the catalog")},
      {"connthrottle.remove_node('no-such-node.invalid', 5432)", "42704",
       "node no-such-node.invalid:5432 is not in the catalog"},
      {"connthrottle.remove_node(NULL, 5432)", "22004", "must not be NULL"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.call);
    absl::Status s = obs_->Exec(absl::StrCat("SELECT ", b.call));
    ASSERT_FALSE(s.ok()) << "accepted";
    EXPECT_EQ(SqlState(s), b.sqlstate) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(b.message));
  }
  EXPECT_EQ(Catalog(), before) << "a refused call changed the catalog";

  // 255 bytes is the longest host accepted (the node is never contacted).
  const std::string long_host = std::string(251, 'h') + ".inv";
  ASSERT_EQ(long_host.size(), 255u);
  ASSERT_TRUE(obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('", long_host, "', 1)")).ok());

  // The coordinator itself (by address and by name) is marked local; the
  // view orders by host, then port.
  const std::string c_port = std::to_string(coordinator_->port());
  const std::string id =
      Value(*obs_, absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", c_port, ")"));
  EXPECT_GT(std::stoi(id), 0);
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('localhost', ", c_port, ")")).ok());
  std::vector<std::pair<int, std::string>> on_loopback = {
      {coordinator_->port(), "t"}, {Port(0), "f"}, {Port(1), "f"}};
  std::sort(on_loopback.begin(), on_loopback.end());
  std::vector<std::string> expected;
  for (const auto& [port, local] : on_loopback) {
    expected.push_back(absl::StrCat("(127.0.0.1,", port, ",", local, ")"));
  }
  expected.push_back(absl::StrCat("(", long_host, ",1,f)"));
  expected.push_back(absl::StrCat("(localhost,", c_port, ",t)"));
  EXPECT_EQ(Catalog(), absl::StrJoin(expected, " "));
  EXPECT_EQ(Value(*obs_,
                  "SELECT node_id FROM connthrottle.worker_node WHERE host = '127.0.0.1' "
                  "AND port = " +
                      c_port),
            id);

  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('127.0.0.1', ", c_port, ")")).ok());
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('localhost', ", c_port, ")")).ok());
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('", long_host, "', 1)")).ok());
  EXPECT_EQ(Catalog(), before);
  // Removing it again is refused.
  EXPECT_EQ(SqlState(obs_->Exec(
                absl::StrCat("SELECT connthrottle.remove_node('127.0.0.1', ", c_port, ")"))),
            "42704");
}

TEST_P(PgExecutorTest, RunTasksFanOutResultsPerTask) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  constexpr int kTasks = 40;
  constexpr int kFailing = 17;  // on worker 2 (odd)
  std::vector<TaskSpec> tasks;
  std::vector<std::string> expected;
  for (int i = 0; i < kTasks; ++i) {
    const int w = i % 2;
    if (i == kFailing) {
      tasks.push_back({Host(), Port(w), "SELECT 1/0"});
      expected.push_back("");
    } else if (i % 5 == 0) {
      tasks.push_back({Host(), Port(w), "SELECT current_setting('port')"});
      expected.push_back(std::to_string(Port(w)));
    } else {
      tasks.push_back({Host(), Port(w), absl::StrCat("SELECT ", i)});
      expected.push_back(std::to_string(i));
    }
  }
  constexpr char kPoolTasksRun[] = "SELECT tasks_run FROM connthrottle.pool_stats()";
  const int64_t pool_tasks_before = std::stoll(Value(*obs_, kPoolTasksRun));
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*s, tasks);
  const Clock::duration took = Clock::now() - start;
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), static_cast<size_t>(kTasks));
  // On the shared pool the communicator ran them (it publishes its figures
  // every 100 ms). The direct transport's own cases below fail if the pool
  // ran its tasks (a limit contended without a waiting acquire).
  if (OnSharedPool()) {
    EXPECT_TRUE(PollUntil([&] {
      return std::stoll(Value(*obs_, kPoolTasksRun)) - pool_tasks_before >= kTasks;
    })) << "the communicator did not run the tasks";
  }
  std::map<int, std::set<std::string>> connections;  // per worker
  for (int i = 0; i < kTasks; ++i) {
    const TaskRow& r = (*rows)[i];
    SCOPED_TRACE(::testing::PrintToString(r));
    const int w = i % 2;
    EXPECT_EQ(r.task, i + 1);
    EXPECT_EQ(r.host, Host());
    EXPECT_EQ(r.port, Port(w));
    EXPECT_FALSE(r.ran_locally);
    if (i == kFailing) {
      EXPECT_FALSE(r.success);
      EXPECT_EQ(r.sqlstate, Cell("22012"));
      EXPECT_EQ(r.result, std::nullopt);
      ASSERT_TRUE(r.error.has_value());
      EXPECT_THAT(*r.error, HasSubstr(Node(w)));
      EXPECT_THAT(*r.error, HasSubstr("division by zero"));
    } else {
      EXPECT_TRUE(r.success);
      EXPECT_EQ(r.result, Cell(expected[i]));
      EXPECT_EQ(r.sqlstate, std::nullopt);
      EXPECT_EQ(r.error, std::nullopt);
    }
    if (r.connection.has_value()) connections[w].insert(*r.connection);
  }
  Report("run_tasks: 40 tasks over 2 workers",
         absl::StrCat(Ms(took), " ms; connections used: worker1 ", connections[0].size(),
                      ", worker2 ", connections[1].size()));
  EXPECT_GE(connections[0].size(), 1u);
  EXPECT_GE(connections[1].size(), 1u);

  // One row per catalog node, in catalog order, each run on that node.
  absl::StatusOr<QueryResult> all = s->Query(
      "SELECT host, port, success, result FROM connthrottle.run_on_all_nodes("
      "'SELECT current_setting(''port'')') ORDER BY task");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows.size(), 2u);
  for (int w = 0; w < 2; ++w) {
    EXPECT_EQ(all->rows[w][0], Cell(Host()));
    EXPECT_EQ(all->rows[w][1], Cell(std::to_string(Port(w))));
    EXPECT_EQ(all->rows[w][2], Cell("t"));
    EXPECT_EQ(all->rows[w][3], Cell(std::to_string(Port(w))));
  }
  EXPECT_EQ(Value(*s,
                  "SELECT count(*) FROM connthrottle.run_on_all_nodes('SELECT 1') "
                  "WHERE success AND result = '1'"),
            "2");

  // What the session keeps: idle cached connections (one per worker by
  // default), each matching a worker backend and holding one slot. The
  // pool keeps as many as it opened (slow start: how many depends on the
  // machine's speed), until they idle out.
  for (int w = 0; w < 2; ++w) {
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(w, /*at_most=*/kTasks);
      continue;
    }
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(w) == 1; }))
        << "worker " << w + 1 << ": " << CoordinatorConnectionsOn(w);
    EXPECT_EQ(WorkerCounters(w), (NodeCounters{1, 1, 0, 0, 0}));
  }
}

TEST_P(PgExecutorTest, SharedLimitHoldsAcrossConcurrentCoordinatorSessions) {
  constexpr int kLimit = 2;
  constexpr int kSessions = 6;
  constexpr int kTasks = 20;
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", std::to_string(kLimit)));
  std::vector<std::unique_ptr<PgClient>> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.push_back(Connect());
    ASSERT_NE(clients.back(), nullptr);
  }
  std::vector<std::unique_ptr<PgClient>> samplers;
  for (int w = 0; w < 2; ++w) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[w]->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    samplers.push_back(*std::move(c));
  }
  std::unique_ptr<PgClient> counter_sampler = Connect();
  ASSERT_NE(counter_sampler, nullptr);

  std::vector<TaskSpec> tasks;
  for (int i = 0; i < kTasks; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(0.01)"});

  std::atomic<bool> stop{false};
  std::atomic<int> peak[2] = {0, 0};
  std::atomic<int> samples[2] = {0, 0};
  std::atomic<int> counted_peak{0};
  std::atomic<int> counter_samples{0};
  std::atomic<int> queued_peak{0};  // the communicator's queue (shared pool)
  std::atomic<bool> sample_failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      while (!stop.load()) {
        absl::StatusOr<std::string> v = samplers[w]->QueryValue(kCoordinatorConnections);
        if (!v.ok()) {
          sample_failed = true;
          return;
        }
        const int n = std::stoi(*v);
        if (n > peak[w].load()) peak[w] = n;
        ++samples[w];
      }
    });
  }
  // The coordinator's own count of slots held for each worker.
  threads.emplace_back([&] {
    while (!stop.load()) {
      absl::StatusOr<std::string> v = counter_sampler->QueryValue(absl::StrCat(
          "SELECT coalesce(max(connections), 0) FROM connthrottle.nodes WHERE port IN (", Port(0),
          ", ", Port(1), ")"));
      if (!v.ok()) {
        sample_failed = true;
        return;
      }
      const int n = std::stoi(*v);
      if (n > counted_peak.load()) counted_peak = n;
      ++counter_samples;
      if (OnSharedPool()) {
        absl::StatusOr<std::string> q =
            counter_sampler->QueryValue("SELECT tasks_queued FROM connthrottle.pool_stats()");
        if (!q.ok()) {
          sample_failed = true;
          return;
        }
        queued_peak = std::max(queued_peak.load(), std::stoi(*q));
      }
    }
  });

  const std::string waited_before = Value(*obs_, "SELECT waited FROM connthrottle.table_stats()");
  // A first connection never needs to wait long here (an execution takes
  // tens of milliseconds); 10 s bounds the run if one starves.
  for (auto& c : clients) {
    ASSERT_TRUE(c->Exec("SET connthrottle.connection_wait_timeout = '10s'").ok());
  }
  std::latch go(kSessions);
  std::vector<std::string> failures(kSessions);
  std::vector<int> executions(kSessions, 0);
  std::vector<std::thread> sessions;
  const Clock::time_point began = Clock::now();
  for (int i = 0; i < kSessions; ++i) {
    sessions.emplace_back([&, i] {
      go.arrive_and_wait();
      // Until this session has 3 executions and the samplers 100 samples
      // each, however fast the machine; the deadline only stops a hang.
      const Clock::time_point give_up = Clock::now() + 120s;
      while ((executions[i] < 3 || samples[0].load() < 100 || samples[1].load() < 100) &&
             Clock::now() < give_up && failures[i].empty()) {
        absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*clients[i], tasks);
        if (!rows.ok()) {
          failures[i] = rows.status().ToString();
          break;
        }
        if (rows->size() != static_cast<size_t>(kTasks)) {
          failures[i] = absl::StrCat(rows->size(), " rows");
        }
        for (const TaskRow& r : *rows) {
          if (!r.success) failures[i] = ::testing::PrintToString(r);
        }
        ++executions[i];
      }
    });
  }
  for (std::thread& t : sessions) t.join();
  const Clock::duration took = Clock::now() - began;
  stop = true;
  for (std::thread& t : threads) t.join();

  int total = 0;
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_EQ(failures[i], "") << "session " << i;
    EXPECT_GE(executions[i], 3) << "session " << i << " did not complete 3 executions";
    total += executions[i];
  }
  EXPECT_FALSE(sample_failed.load());
  Report("6 sessions x run_tasks(20 x pg_sleep(0.01)) over 2 workers, limit 2",
         absl::StrCat(Ms(took), " ms, ", total, " executions (per session ",
                      absl::StrJoin(executions, "/"), ")"));
  Report("peak coordinator backends on worker1 / worker2 (pg_stat_activity)",
         absl::StrCat(peak[0].load(), " / ", peak[1].load(), " in ", samples[0].load(), " / ",
                      samples[1].load(), " samples (",
                      absl::StrFormat("%.2f", Ms(took) / std::max(1, samples[0].load())),
                      " ms apart)"));
  Report("peak slots counted per worker on the coordinator",
         absl::StrCat(counted_peak.load(), " in ", counter_samples.load(), " samples"));
  for (int w = 0; w < 2; ++w) {
    EXPECT_LE(peak[w].load(), kLimit) << "worker " << w + 1 << " saw more coordinator backends";
    EXPECT_GE(peak[w].load(), 1) << "the sampler never saw a coordinator backend";
    EXPECT_GE(samples[w].load(), 100);
  }
  EXPECT_LE(counted_peak.load(), kLimit);
  const int64_t waited = std::stoll(Value(*obs_, "SELECT waited FROM connthrottle.table_stats()")) -
                         std::stoll(waited_before);
  Report("waiting acquires during the run (first connections that waited)", std::to_string(waited));
  if (OnSharedPool()) {
    // Sessions wait for their tasks' turn, not for a slot: the pool never
    // waits (it only tries for more connections), its queue does.
    Report("peak tasks queued in the communicator (sampled every 100 ms)",
           std::to_string(queued_peak.load()));
    EXPECT_EQ(waited, 0) << "the shared pool waited for a slot";
    EXPECT_GT(queued_peak.load(), 0) << "the limit was never contended";
  } else {
    EXPECT_GT(waited, 0) << "the limit was never contended";
  }

  // Only idle cached connections remain, each a real worker backend.
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE(absl::StrCat("worker ", w + 1));
    const NodeCounters c = WorkerCounters(w);
    EXPECT_LE(c.connections, std::min(kLimit, kSessions));
    EXPECT_EQ(c.forced, 0);
    EXPECT_EQ(c.reserved, 0);
    EXPECT_EQ(c.waiters, 0);
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(w) == WorkerCounters(w).connections;
    })) << CoordinatorConnectionsOn(w)
        << " backends vs " << WorkerCounters(w);
    EXPECT_EQ(CoordinatorConnectionsOn(w, " AND state <> 'idle'"), 0);
  }
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
  // Ending the sessions gives everything back (TearDown checks the workers).
  clients.clear();
  counter_sampler.reset();
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; })) << Rows(*obs_, kNodes);
}

// A session that ran a query and went idle keeps a cached connection, and its
// slot; a session that then needs a first connection to that node must not
// wait for it in vain (executor.h: "no session sits on slots others wait
// for"; max_cached_conns_per_worker: "closed instead when the node has
// waiters").
// A session that goes idle cannot give back its cached connections until it
// runs again, so it keeps one only while the node still has a free slot with
// it counted: idle sessions never hold a node's last slot, and a session
// arriving later is never starved by them. On the shared pool no session
// holds anything: the communicator's connections serve every session, and
// the same sessions run without waiting.
TEST_P(PgExecutorTest, IdleSessionsNeverHoldANodesLastSlot) {
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  std::unique_ptr<PgClient> idle1 = Connect();
  std::unique_ptr<PgClient> idle2 = Connect();
  std::unique_ptr<PgClient> later = Connect();
  ASSERT_NE(idle1, nullptr);
  ASSERT_NE(idle2, nullptr);
  ASSERT_NE(later, nullptr);
  auto run = [&](PgClient& c, const std::string& sql) {
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(c, {{Host(), Port(0), sql}});
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && rows->size() == 1 && (*rows)[0].success;
  };
  const std::string cached_query = absl::StrCat(
      "SELECT coalesce(sum(cached), 0) FROM connthrottle.nodes WHERE port = ", Port(0));
  // On the pool: no session parks a connection; the pool's one is idle.
  auto expect_nothing_parked = [&] {
    EXPECT_EQ(Value(*obs_, cached_query), "0") << "a session parked a connection";
    ExpectIdleConnectionsOn(0, /*at_most=*/1);
  };
  ASSERT_TRUE(run(*idle1, "SELECT 1"));
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(expect_nothing_parked());
  } else {
    EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, 1, 0, 0, 0})) << "cached: a slot is still free";
    EXPECT_EQ(Value(*obs_, cached_query), "1") << "the idle session's connection is parked";
  }
  ASSERT_TRUE(run(*idle2, "SELECT 1"));
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(expect_nothing_parked());
  } else {
    // Another cached connection would have been the node's last slot.
    EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, 1, 0, 0, 0})) << "idle2 must not cache";
  }

  // Both idle: a third session gets the free slot at once, without waiting.
  // (A node's figures are cumulative while it keeps its entry: compare.)
  const std::string waited_query = absl::StrCat(
      "SELECT coalesce(sum(waited), 0) FROM connthrottle.nodes WHERE port = ", Port(0));
  const std::string waited_before = Value(*obs_, waited_query);
  ASSERT_TRUE(later->Exec("SET connthrottle.connection_wait_timeout = '2s'").ok());
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(run(*later, "SELECT 2"));
  Report("run_tasks while idle sessions have cached connections",
         absl::StrCat(Ms(Clock::now() - start), " ms"));
  EXPECT_EQ(Value(*obs_, waited_query), waited_before) << "nobody had to wait";

  // With limit 1 nothing is cached at all.
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  ASSERT_EQ(Value(*idle1, "SELECT connthrottle.release_all()"), "0");
  idle1.reset();  // its cached connection goes with it
  ASSERT_TRUE(PollUntil([&] { return WorkerCounters(0).rows == 0; }));
  ASSERT_TRUE(run(*idle2, "SELECT 3"));
  if (OnSharedPool()) {
    // The pool may keep the only slot: it serves `later` too.
    ASSERT_NO_FATAL_FAILURE(ExpectIdleConnectionsOn(0, /*at_most=*/1));
  } else {
    EXPECT_EQ(WorkerCounters(0).rows, 0) << "a cached connection would hold the only slot";
  }
  ASSERT_TRUE(run(*later, "SELECT 4"));
}

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

TEST_P(PgExecutorTest, DistributeLandsEveryRowOnTheRightNode) {
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(wobs_[w]
                    ->Exec("CREATE TABLE items(id int, name text); "
                           "CREATE TABLE items_again(id int, name text); "
                           "CREATE TABLE items_special(id int, name text)")
                    .ok());
  }
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS items, items_again, items_special");
    }
  });

  auto distribute = [&](PgClient& c, const std::string& query,
                        const std::string& table) -> absl::StatusOr<std::map<int, int64_t>> {
    absl::StatusOr<QueryResult> r = c.Query(
        "SELECT host, port, rows, success, error FROM connthrottle.distribute($1::text, $2::text)",
        {query, table});
    if (!r.ok()) return r.status();
    std::map<int, int64_t> per_port;
    for (const auto& row : r->rows) {
      EXPECT_EQ(row[0], Cell(Host()));
      EXPECT_EQ(row[3], Cell("t")) << row[4].value_or("");
      per_port[ToInt(row[1])] += std::stoll(row[2].value_or("0"));
    }
    return per_port;
  };
  auto ids_on = [&](int w, const std::string& table) {
    std::vector<int> ids;
    absl::StatusOr<QueryResult> r = wobs_[w]->Query(absl::StrCat("SELECT id FROM ", table));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      for (const auto& row : r->rows) ids.push_back(ToInt(row[0]));
    }
    std::sort(ids.begin(), ids.end());
    return ids;
  };

  {
    std::unique_ptr<PgClient> d = Connect();
    ASSERT_NE(d, nullptr);
    const std::string query = "SELECT g, 'n' || g FROM generate_series(1,1000) g";
    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::map<int, int64_t>> sent = distribute(*d, query, "items");
    const Clock::duration took = Clock::now() - start;
    ASSERT_TRUE(sent.ok()) << sent.status();
    ASSERT_EQ(sent->size(), 2u);
    std::vector<int> all;
    int64_t sum = 0;
    for (int w = 0; w < 2; ++w) {
      const std::vector<int> ids = ids_on(w, "items");
      EXPECT_EQ((*sent)[Port(w)], static_cast<int64_t>(ids.size())) << "worker " << w + 1;
      EXPECT_GT(ids.size(), 200u) << "worker " << w + 1 << " got too few rows to be hashed";
      sum += (*sent)[Port(w)];
      all.insert(all.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(sum, 1000);
    std::sort(all.begin(), all.end());
    std::vector<int> want(1000);
    for (int i = 0; i < 1000; ++i) want[i] = i + 1;
    EXPECT_EQ(all, want) << "some id is missing or duplicated";
    Report("distribute 1000 rows", absl::StrCat(Ms(took), " ms; worker1 ", (*sent)[Port(0)],
                                                ", worker2 ", (*sent)[Port(1)]));
    // Every row's node is a function of its first column: a second
    // distribution of the same rows lands each id on the same node.
    ASSERT_TRUE(distribute(*d, query, "items_again").ok());
    for (int w = 0; w < 2; ++w) EXPECT_EQ(ids_on(w, "items_again"), ids_on(w, "items"));
    EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM items WHERE name <> 'n' || id"), "0");
    EXPECT_EQ(Value(*wobs_[1], "SELECT count(*) FROM items WHERE name <> 'n' || id"), "0");

    // Values that COPY's text format must escape.
    const std::string special =
        "SELECT * FROM (VALUES (1, E'tab\\there'), (2, E'new\\nline'), (3, E'back\\\\slash'), "
        "(4, NULL), (5, E'cr\\rreturn'), (6, '\\N'), (7, ''), (8, 'caf\u00e9 \u00fc'), "
        "(NULL::int, 'null id'), (9, '\\t literal'), (10, E'mixed\\t\\\\\\n\\\\N.')) v(id, name)";
    absl::StatusOr<std::map<int, int64_t>> sent_special = distribute(*d, special, "items_special");
    ASSERT_TRUE(sent_special.ok()) << sent_special.status();
    std::vector<std::pair<Cell, Cell>> got;
    for (int w = 0; w < 2; ++w) {
      absl::StatusOr<QueryResult> r = wobs_[w]->Query("SELECT id, name FROM items_special");
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(static_cast<int64_t>(r->rows.size()), (*sent_special)[Port(w)]);
      for (const auto& row : r->rows) got.emplace_back(row[0], row[1]);
    }
    std::sort(got.begin(), got.end(), [](const auto& a, const auto& b) {
      return (a.first.has_value() ? std::stoi(*a.first) : -1) <
             (b.first.has_value() ? std::stoi(*b.first) : -1);
    });
    const std::vector<std::pair<Cell, Cell>> want_special = {{std::nullopt, "null id"},
                                                             {"1", "tab\there"},
                                                             {"2", "new\nline"},
                                                             {"3", "back\\slash"},
                                                             {"4", std::nullopt},
                                                             {"5", "cr\rreturn"},
                                                             {"6", "\\N"},
                                                             {"7", ""},
                                                             {"8", "caf\u00e9 \u00fc"},
                                                             {"9", "\\t literal"},
                                                             {"10", "mixed\t\\\n\\N."}};
    EXPECT_EQ(got, want_special);
  }
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; })) << Rows(*obs_, kNodes);

  // Reservations are taken up front, all or nothing, in node order: with the
  // last node's only slot held elsewhere, distribute fails after
  // connection_wait_timeout, naming that node, and gives back the first node's
  // reservation.
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  std::unique_ptr<PgClient> holder = Connect();
  std::unique_ptr<PgClient> d = Connect();
  ASSERT_NE(holder, nullptr);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(
      Value(*holder, "SELECT connthrottle.try_acquire('127.0.0.1', $1)", {std::to_string(Port(1))}),
      "t");
  ASSERT_TRUE(d->Exec("SET connthrottle.connection_wait_timeout = '200ms'").ok());
  const std::string before_rows = Value(*wobs_[0], "SELECT count(*) FROM items");
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::map<int, int64_t>> refused =
      distribute(*d, "SELECT g, 'x' FROM generate_series(1, 10) g", "items");
  const Clock::duration took = Clock::now() - start;
  Report("distribute with the last node's slot held, connection_wait_timeout 200ms: error after",
         absl::StrCat(Ms(took), " ms"));
  ASSERT_FALSE(refused.ok()) << "distribute succeeded past a held slot";
  EXPECT_EQ(SqlState(refused.status()), "53300") << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(Node(1)));
  EXPECT_GE(took, 200ms);  // it waited its timeout (53300 says why it ended)
  EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM items"), before_rows);
  EXPECT_EQ(Rows(*obs_, kNodes), absl::StrCat("(127.0.0.1,", Port(1), ",1,0,0,0)"))
      << "only the held slot should remain";
  EXPECT_EQ(Value(*d, "SELECT count(*) FROM connthrottle.reservations()"), "0");
  absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
  EXPECT_TRUE(audit.ok()) << audit;
  EXPECT_EQ(CoordinatorConnectionsOn(0), 0);
  EXPECT_EQ(CoordinatorConnectionsOn(1), 0);
  EXPECT_EQ(Value(*holder, "SELECT connthrottle.release_all()"), "1");
}

TEST_P(PgExecutorTest, CancelRunTasksCancelsRemoteQueries) {
  std::unique_ptr<PgClient> c = Connect();
  ASSERT_NE(c, nullptr);
  const std::string active_sleeps = " AND state = 'active' AND query LIKE 'SELECT pg_sleep(600)%'";
  auto cancels_logged = [](int w) {
    std::ifstream in(workers_[w]->log_file());
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      if (line.find("canceling statement due to user request") != std::string::npos) ++n;
    }
    return n;
  };
  const int logged_before[2] = {cancels_logged(0), cancels_logged(1)};
  std::vector<TaskSpec> tasks;
  // Only the cancel can end these within the test.
  for (int i = 0; i < 4; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(600)"});
  {
    AsyncQuery run(*c, "SELECT * FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
                   RunTasksParams(tasks));
    ASSERT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(0, active_sleeps) == 2 &&
             CoordinatorConnectionsOn(1, active_sleeps) == 2;
    })) << "the workers never ran the sleeps: "
        << CoordinatorConnectionsOn(0, active_sleeps) << ", "
        << CoordinatorConnectionsOn(1, active_sleeps);
    ASSERT_FALSE(run.done());
    const Clock::time_point start = Clock::now();
    ASSERT_TRUE(c->Cancel().ok());
    ASSERT_TRUE(run.WaitDone(120s)) << "the cancelled run_tasks did not return";
    Report("cancel -> run_tasks error", absl::StrCat(Ms(run.ended() - start), " ms"));
    ASSERT_FALSE(run.result().ok()) << "run_tasks was not cancelled";
    EXPECT_EQ(SqlState(run.result().status()), "57014") << run.result().status();
    EXPECT_THAT(std::string(run.result().status().message()),
                HasSubstr("canceling statement due to user request"));
    EXPECT_TRUE(PollUntil(
        [&] {
          return CoordinatorConnectionsOn(0, active_sleeps) == 0 &&
                 CoordinatorConnectionsOn(1, active_sleeps) == 0;
        },
        120s))
        << "the remote sleeps were not cancelled";
    Report("cancel -> no pg_sleep left on the workers",
           absl::StrCat(Ms(Clock::now() - start), " ms"));
  }
  // PQcancel reached the workers: each logged its statements' cancel (a
  // closed socket alone would not stop pg_sleep).
  EXPECT_GE(cancels_logged(0) - logged_before[0], 2);
  EXPECT_GE(cancels_logged(1) - logged_before[1], 2);
  // No busy slot is left: what remains are idle connections, each a worker backend.
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE(absl::StrCat("worker ", w + 1));
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(w) == WorkerCounters(w).connections;
    })) << CoordinatorConnectionsOn(w)
        << " backends vs " << WorkerCounters(w);
    EXPECT_EQ(CoordinatorConnectionsOn(w, " AND state <> 'idle'"), 0);
    const NodeCounters n = WorkerCounters(w);
    // The session caches one; the pool keeps (cancelled, not closed) the
    // two its sleeps ran on, until they idle out.
    EXPECT_LE(n.connections, OnSharedPool() ? 2 : 1);
    EXPECT_EQ(n.waiters, 0);
    EXPECT_EQ(n.reserved, 0);
  }
  absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
  EXPECT_TRUE(audit.ok()) << audit;
  // The session carries on.
  absl::StatusOr<std::vector<TaskRow>> again =
      RunTasks(*c, {{Host(), Port(0), "SELECT 1"}, {Host(), Port(1), "SELECT 2"}});
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), 2u);
  EXPECT_TRUE((*again)[0].success && (*again)[1].success);
}

TEST_P(PgExecutorTest, TerminatingTheCoordinatorSessionGivesBackItsConnections) {
  std::unique_ptr<PgClient> t = Connect();
  ASSERT_NE(t, nullptr);
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < 8; ++i) tasks.push_back({Host(), Port(i % 2), absl::StrCat("SELECT ", i)});
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*t, tasks);
  ASSERT_TRUE(rows.ok()) << rows.status();
  for (const TaskRow& r : *rows) EXPECT_TRUE(r.success) << r;
  for (int w = 0; w < 2; ++w) {
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(w, /*at_most=*/4);
      continue;
    }
    EXPECT_EQ(WorkerCounters(w), (NodeCounters{1, 1, 0, 0, 0})) << "one cached connection";
    EXPECT_EQ(CoordinatorConnectionsOn(w), 1);
  }
  const std::string pid = std::to_string(t->BackendPid());
  const Clock::time_point start = Clock::now();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", pid, ")")), "t");
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; }, 5s))
      << Rows(*obs_, kNodes);
  const Clock::duration slots_back = Clock::now() - start;
  for (int w = 0; w < 2; ++w) {
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(w) == 0; }, 5s))
        << "worker " << w + 1;
  }
  Report("pg_terminate_backend -> slots given back / worker backends gone",
         absl::StrCat(Ms(slots_back), " ms / ", Ms(Clock::now() - start), " ms"));
  EXPECT_FALSE(t->Exec("SELECT 1").ok()) << "the terminated session still answers";
}

TEST_P(PgExecutorTest, ExecutorSettingsShowMeaningfulDefaults) {
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"connthrottle.node_connection_timeout", "30s"},
      {"connthrottle.max_cached_connection_lifetime", "10min"},
      {"connthrottle.executor_slow_start_interval", "10ms"},
      {"connthrottle.max_adaptive_executor_pool_size", "16"},
      {"connthrottle.max_cached_conns_per_worker", "1"},
      {"connthrottle.connection_wait_timeout", "1min"},
      {"connthrottle.max_shared_pool_size", "0"},
      {"connthrottle.local_shared_pool_size", "0"},
  };
  for (const auto& [name, value] : defaults) {
    EXPECT_EQ(Value(*obs_, absl::StrCat("SHOW ", name)), value) << name;
    EXPECT_EQ(Value(*obs_, "SELECT boot_val = reset_val FROM pg_settings WHERE name = $1", {name}),
              "t")
        << name << " is not at its default";
  }
  // The shared pool's settings (this suite sets the first two): their
  // built-in defaults.
  for (const auto& [name, boot] : std::vector<std::pair<std::string, std::string>>{
           {"connthrottle.executor_transport", "shared_pool"},
           {"connthrottle.pool_idle_timeout", "60000"},
           {"connthrottle.pool_message_bytes", "65536"},
           {"connthrottle.pool_response_memory", "262144"}}) {
    EXPECT_EQ(Value(*obs_, "SELECT boot_val FROM pg_settings WHERE name = $1", {name}), boot)
        << name;
  }
  for (const char* name :
       {"connthrottle.node_connection_timeout", "connthrottle.max_cached_connection_lifetime",
        "connthrottle.executor_slow_start_interval"}) {
    EXPECT_EQ(Value(*obs_, "SELECT unit FROM pg_settings WHERE name = $1", {std::string(name)}),
              "ms")
        << name;
  }
  // Values with units are read as such, and out-of-range ones refused.
  ASSERT_TRUE(obs_->Exec("SET connthrottle.node_connection_timeout = '2s'").ok());
  EXPECT_EQ(Value(*obs_, "SHOW connthrottle.node_connection_timeout"), "2s");
  EXPECT_EQ(Value(*obs_,
                  "SELECT setting FROM pg_settings WHERE name = "
                  "'connthrottle.node_connection_timeout'"),
            "2000");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.node_connection_timeout = 5")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.max_adaptive_executor_pool_size = 0")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.executor_slow_start_interval = 0")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.max_cached_conns_per_worker = -1")), "22023");
  ASSERT_TRUE(obs_->Exec("RESET connthrottle.node_connection_timeout").ok());
}

TEST_P(PgExecutorTest, WorkerDownGivesAClearErrorAndNoLeak) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < 6; ++i) tasks.push_back({Host(), Port(i % 2), absl::StrCat("SELECT ", i)});
  // A first execution leaves a cached connection to each worker.
  absl::StatusOr<std::vector<TaskRow>> warm = RunTasks(*s, tasks);
  ASSERT_TRUE(warm.ok()) << warm.status();
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(ExpectIdleConnectionsOn(1, /*at_most=*/3));
  } else {
    ASSERT_EQ(WorkerCounters(1), (NodeCounters{1, 1, 0, 0, 0}));
  }

  // Restart worker 2 whatever happens, for the cases that follow.
  const Defer restart([this] {
    if (!workers_[1]->running()) {
      absl::Status st = workers_[1]->StartAgain();
      EXPECT_TRUE(st.ok()) << st;
    }
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[1]->Connect();
    EXPECT_TRUE(c.ok()) << c.status();
    wobs_[1] = c.ok() ? *std::move(c) : nullptr;
  });
  wobs_[1].reset();
  ASSERT_TRUE(workers_[1]->Stop().ok());

  // `cached` is worker 1's cached connections across the live sessions afterwards.
  auto check_down = [&](PgClient& c, const std::string& label, int cached) {
    SCOPED_TRACE(label);
    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(c, tasks);
    const Clock::duration took = Clock::now() - start;
    Report(absl::StrCat("run_tasks with worker 2 down (", label, ")"),
           absl::StrCat(Ms(took), " ms"));
    EXPECT_LT(took, 30s) << "waited for node_connection_timeout (30s) instead of failing at once";
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), tasks.size());
    for (const TaskRow& r : *rows) {
      SCOPED_TRACE(::testing::PrintToString(r));
      if (r.port == Port(0)) {
        EXPECT_TRUE(r.success);
        EXPECT_EQ(r.result, Cell(std::to_string(r.task - 1)));
      } else {
        EXPECT_FALSE(r.success);
        EXPECT_EQ(r.result, std::nullopt);
        ASSERT_TRUE(r.error.has_value());
        EXPECT_THAT(*r.error, HasSubstr(Node(1)));
        EXPECT_THAT(*r.error, HasSubstr("refused"));
        EXPECT_EQ(r.sqlstate, Cell("08001"));
      }
    }
    // Exact counters: worker 1's cached connections (the pool's: as many
    // as it keeps), nothing for worker 2.
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(0, /*at_most=*/static_cast<int>(tasks.size()));
    } else {
      EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, cached, 0, 0, 0}));
      EXPECT_EQ(CoordinatorConnectionsOn(0), cached);
    }
    EXPECT_EQ(WorkerCounters(1), NodeCounters{});
    absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
    EXPECT_TRUE(audit.ok()) << audit;
  };
  // The session whose cached connection to worker 2 died with it, and a fresh one.
  check_down(*s, "session with a dead cached connection", 1);
  {
    std::unique_ptr<PgClient> fresh = Connect();
    ASSERT_NE(fresh, nullptr);
    check_down(*fresh, "fresh session", 2);
  }
  if (OnSharedPool()) {
    ExpectIdleConnectionsOn(0, /*at_most=*/static_cast<int>(tasks.size()));
  } else {
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == 1; }));
    EXPECT_TRUE(PollUntil([&] {
      return WorkerCounters(0) == NodeCounters{1, 1, 0, 0, 0};
    })) << WorkerCounters(0);
  }

  // Back up: the same session reaches it again.
  ASSERT_TRUE(workers_[1]->StartAgain().ok());
  absl::StatusOr<std::vector<TaskRow>> back = RunTasks(*s, tasks);
  ASSERT_TRUE(back.ok()) << back.status();
  for (const TaskRow& r : *back) EXPECT_TRUE(r.success) << r;
  if (OnSharedPool()) {
    absl::StatusOr<std::unique_ptr<PgClient>> observer = workers_[1]->Connect();
    ASSERT_TRUE(observer.ok()) << observer.status();
    wobs_[1] = *std::move(observer);
    ExpectIdleConnectionsOn(1, /*at_most=*/static_cast<int>(tasks.size()));
  } else {
    EXPECT_EQ(WorkerCounters(1), (NodeCounters{1, 1, 0, 0, 0}));
  }
}

// A task that enters COPY (out, in) fails with 0A000 and its connection is
// closed; the call returns and the other tasks are unaffected. (It used to
// spin at 100% CPU, deaf to cancel and termination.)
TEST_P(PgExecutorTest, TaskEnteringCopyFailsAndItsConnectionIsClosed) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  std::vector<std::string> hosts, sqls;
  std::vector<int> ports;
  const std::vector<TaskSpec> tasks = {
      {Host(), Port(0), "COPY (SELECT 1) TO STDOUT"},
      {Host(), Port(0), "SELECT 41 + 1"},
      {Host(), Port(1), "CREATE TEMP TABLE copy_in (a int); COPY copy_in FROM STDIN"},
      {Host(), Port(1), "COPY (SELECT g FROM generate_series(1, 10000000) g) TO STDOUT"},
  };
  for (const TaskSpec& t : tasks) {
    hosts.push_back(t.host);
    ports.push_back(t.port);
    sqls.push_back(t.sql);
  }
  AsyncQuery q(*s,
               "SELECT task, success, result, sqlstate, error FROM "
               "connthrottle.run_tasks($1::text[], $2::int[], $3::text[]) ORDER BY task",
               {TextArray(hosts), IntArray(ports), TextArray(sqls)});
  ASSERT_TRUE(q.WaitDone(std::chrono::seconds(60))) << "run_tasks did not return";
  ASSERT_TRUE(q.result().ok()) << q.result().status();
  const auto& rows = q.result()->rows;
  ASSERT_EQ(rows.size(), 4u);
  for (int i : {0, 2, 3}) {
    SCOPED_TRACE(i);
    EXPECT_EQ(rows[i][1], Cell("f"));
    EXPECT_EQ(rows[i][3], Cell("0A000"));
    EXPECT_THAT(rows[i][4].value_or(""), HasSubstr("is not supported in tasks"));
  }
  EXPECT_THAT(rows[0][4].value_or(""), HasSubstr("COPY TO STDOUT"));
  EXPECT_THAT(rows[2][4].value_or(""), HasSubstr("COPY FROM STDIN"));
  EXPECT_EQ(rows[1][1], Cell("t"));
  EXPECT_EQ(rows[1][2], Cell("42"));
  // The session is usable, and no worker backend is left in COPY.
  EXPECT_EQ(Value(*s, "SELECT 1"), "1");
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(i, " AND query LIKE '%COPY%' AND state <> 'idle'") == 0;
    })) << "worker "
        << i + 1 << " still runs a task's COPY";
  }
}

// Resident memory of process `pid` from /proc/<pid>/status: `field` is
// VmRSS or VmHWM (the peak). -1 when it cannot be read.
int64_t ProcStatusKb(const std::string& pid, const char* field) {
  std::ifstream status("/proc/" + pid + "/status");
  const std::string prefix = absl::StrCat(field, ":");
  for (std::string line; std::getline(status, line);) {
    if (!absl::StartsWith(line, prefix)) continue;
    int64_t kb = -1;
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(
                                absl::string_view(line).substr(prefix.size()), "kB")),
                            &kb)
               ? kb
               : -1;
  }
  return -1;
}

// A task returning ten million rows: run_tasks counts them and keeps one,
// so the coordinator backend's peak memory grows by far less than the
// result (about 80 MB on the wire; buffered whole, several times that).
TEST_P(PgExecutorTest, TaskReturningTenMillionRowsKeepsTheBackendSmall) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  // Reset the backend's peak to its current size (needs the server's user
  // or root, as the tests run in CI).
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  absl::StatusOr<QueryResult> r = s->Query(
      "SELECT success, result, rows, error FROM connthrottle.run_tasks($1::text[], $2::int[], "
      "$3::text[])",
      {TextArray({Host()}), IntArray({Port(0)}),
       TextArray({"SELECT g, repeat('x', 20) FROM generate_series(1, 10000000) g"})});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0][0], Cell("t")) << r->rows[0][3].value_or("");
  EXPECT_EQ(r->rows[0][1], Cell("SELECT 10000000"));
  EXPECT_EQ(r->rows[0][2], Cell("10000000"));
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  EXPECT_LT(peak - before, 64 * 1024)
      << "10 million rows grew the backend's peak RSS by " << (peak - before) / 1024 << " MB";
  std::printf("[ FIGURE   ] 10M-row task: backend peak RSS %+.1f MB\n", (peak - before) / 1024.0);
}

// A task that fails over to local execution streams its rows too: they are
// counted as the executor produces them, not kept (SPI_execute would keep
// all ten million in SPI_tuptable).
TEST_P(PgExecutorTest, LocalTaskReturningTenMillionRowsKeepsTheBackendSmall) {
  const int cport = coordinator_->port();
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", cport, ")")).ok());
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  // What the query itself costs this backend, run as plain SQL: the local
  // task may need that much, but not the rows' weight on top.
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t plain_before = ProcStatusKb(pid, "VmRSS");
  EXPECT_EQ(Value(*s,
                  "SELECT count(*) FROM (SELECT g, repeat('x', 20) FROM "
                  "generate_series(1, 10000000) g) q"),
            "10000000");
  const int64_t plain = ProcStatusKb(pid, "VmHWM") - plain_before;
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(
      *s, {{Host(), cport, "SELECT g, repeat('x', 20) FROM generate_series(1, 10000000) g"},
           {Host(), cport, "SELECT 'one row'"},
           {Host(), cport, "SELECT NULL::text"}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (const TaskRow& t : *rows) {
    EXPECT_TRUE(t.ran_locally && t.success) << ::testing::PrintToString(t);
  }
  EXPECT_EQ(rows->at(0).result, Cell("SELECT 10000000"));
  EXPECT_EQ(rows->at(1).result, Cell("one row"));
  EXPECT_EQ(rows->at(2).result, std::nullopt);
  absl::StatusOr<QueryResult> counted =
      s->Query("SELECT rows FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
               {TextArray({Host()}), IntArray({cport}),
                TextArray({"SELECT g FROM generate_series(1, 12345) g"})});
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_EQ(counted->rows.at(0)[0], Cell("12345"));
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  // Kept rows would weigh ~500 MB (SPI_tuptable); the query itself needs
  // what it needs as plain SQL (once warm: the plain run came first).
  EXPECT_LT(peak - before, 64 * 1024)
      << "10 million local rows grew the backend's peak RSS by " << (peak - before) / 1024
      << " MB; the query alone, as plain SQL, by " << plain / 1024 << " MB";
  std::printf(
      "[ FIGURE   ] 10M-row local task: backend peak RSS %+.1f MB (the query as plain SQL, run "
      "first: %+.1f MB)\n",
      (peak - before) / 1024.0, plain / 1024.0);
}

// distribute reads its query through a cursor, 1000 rows at a time, with the
// text of each batch freed after it: three million rows grow the backend's
// peak memory by far less than they weigh.
TEST_P(PgExecutorTest, DistributeOfThreeMillionRowsKeepsTheBackendSmall) {
  for (auto& w : wobs_) ASSERT_TRUE(w->Exec("CREATE TABLE many_items(id int, name text)").ok());
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS many_items");
    }
  });
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  absl::StatusOr<QueryResult> r = s->Query(
      "SELECT sum(rows), bool_and(success), string_agg(error, '; ') FROM connthrottle.distribute("
      "'SELECT g, repeat(''x'', 20) FROM generate_series(1, 3000000) g', 'many_items', "
      "$1::text[], $2::int[])",
      {TextArray({Host(), Host()}), IntArray({Port(0), Port(1)})});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0][0], Cell("3000000"));
  EXPECT_EQ(r->rows[0][1], Cell("t")) << r->rows[0][2].value_or("");
  int64_t landed = 0;
  for (auto& w : wobs_) landed += std::stoll(Value(*w, "SELECT count(*) FROM many_items"));
  EXPECT_EQ(landed, 3000000);
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  EXPECT_LT(peak - before, 64 * 1024)
      << "3 million rows grew the backend's peak RSS by " << (peak - before) / 1024 << " MB";
  std::printf("[ FIGURE   ] 3M-row distribute: backend peak RSS %+.1f MB\n",
              (peak - before) / 1024.0);
}

// Text comes back in the coordinator's encoding whatever the worker
// database's (client_encoding is set on every connection), and bytes that
// are not valid in it never become a datum.
TEST_P(PgExecutorTest, TaskTextComesBackInTheCoordinatorsEncoding) {
  // Databases of the same name on both sides: the executor connects to the
  // worker database named as the coordinator's current one.
  ASSERT_TRUE(wobs_[0]
                  ->Exec("CREATE DATABASE enc_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
                  .ok());
  ASSERT_TRUE(wobs_[0]
                  ->Exec("CREATE DATABASE enc_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
                  .ok());
  const Defer drop([this] {
    for (const char* db : {"enc_latin1", "enc_ascii"}) {
      (void)obs_->Exec(absl::StrCat("DROP DATABASE IF EXISTS ", db, " WITH (FORCE)"));
      if (wobs_[0] != nullptr) {
        (void)wobs_[0]->Exec(absl::StrCat("DROP DATABASE IF EXISTS ", db, " WITH (FORCE)"));
      }
    }
  });
  for (const char* db : {"enc_latin1", "enc_ascii"}) {
    ASSERT_TRUE(obs_->Exec(absl::StrCat("CREATE DATABASE ", db, " TEMPLATE template0")).ok());
  }
  const std::string task = absl::StrCat(
      "SELECT result, sqlstate, error FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
      Port(0), "], ARRAY[$1])");
  {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect("enc_latin1");
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->Exec("CREATE EXTENSION connthrottle").ok());
    // chr(233) is one byte, 0xE9, in the LATIN1 worker database: é.
    absl::StatusOr<QueryResult> r = (*c)->Query(task, {std::string("SELECT chr(233)")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows.at(0)[0], Cell("\xc3\xa9")) << "not converted to UTF8";
  }
  {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect("enc_ascii");
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->Exec("CREATE EXTENSION connthrottle").ok());
    // A SQL_ASCII database stores any bytes; asked for UTF8, the worker
    // itself refuses to send 0xFF, so the task fails and no invalid text
    // reaches the coordinator. (Without client_encoding the byte would come
    // back raw; the coordinator checks text with pg_verifymbstr as well.)
    absl::StatusOr<QueryResult> bad =
        (*c)->Query(task, {std::string("SELECT convert_from('\\xff'::bytea, 'SQL_ASCII')")});
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_EQ(bad->rows.at(0)[0], std::nullopt);
    EXPECT_EQ(bad->rows.at(0)[1], Cell("22021"));
    EXPECT_THAT(bad->rows.at(0)[2].value_or(""), HasSubstr("invalid byte sequence"));
    // The session goes on.
    absl::StatusOr<QueryResult> r = (*c)->Query(task, {std::string("SELECT 'ok'")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows.at(0)[0], Cell("ok"));
  }
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

// raise_on_error: the first failed task raises its error with its SQLSTATE.
// distribute's target may be schema-qualified.
TEST_P(PgExecutorTest, StrictRunTasksAndQualifiedDistributeTarget) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  absl::Status strict = s->Exec(absl::StrCat(
      "SELECT sum(result::bigint) FROM connthrottle.run_tasks(ARRAY['127.0.0.1', '127.0.0.1'], "
      "ARRAY[",
      Port(0), ", ", Port(1), "], ARRAY['SELECT 1', 'SELECT 1/0'], raise_on_error => true)"));
  EXPECT_EQ(SqlState(strict), "22012") << strict;
  EXPECT_THAT(std::string(strict.message()), HasSubstr(Node(1)));
  EXPECT_EQ(Value(*s, absl::StrCat("SELECT sum(result::bigint) FROM connthrottle.run_tasks("
                                   "ARRAY['127.0.0.1', '127.0.0.1'], ARRAY[",
                                   Port(0), ", ", Port(1),
                                   "], ARRAY['SELECT 1', 'SELECT 2'], raise_on_error => true)")),
            "3");
  EXPECT_EQ(SqlState(s->Exec("SELECT * FROM connthrottle.run_on_all_nodes('SELECT 1/0', true)")),
            "22012");

  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(wobs_[w]->Exec("CREATE SCHEMA dist; CREATE TABLE dist.\"Qualified\"(id int)").ok());
  }
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP SCHEMA IF EXISTS dist CASCADE");
    }
  });
  EXPECT_EQ(Value(*s,
                  "SELECT sum(rows) FROM connthrottle.distribute("
                  "'SELECT g FROM generate_series(1, 100) g', 'dist.\"Qualified\"')"),
            "100");
  int landed = 0;
  for (int w = 0; w < 2; ++w) {
    landed += std::stoi(Value(*wobs_[w], "SELECT count(*) FROM dist.\"Qualified\""));
  }
  EXPECT_EQ(landed, 100);
  EXPECT_EQ(SqlState(s->Exec("SELECT * FROM connthrottle.distribute('SELECT 1', 'a.b.c.d')")),
            "42601");
}

// distribute waits on the workers without blocking: with the target table
// locked on a worker its COPY waits, and a query cancel still ends the call
// (the workers' COPY is cancelled, every slot given back). It used to ignore
// cancel and statement_timeout until the lock went away.
TEST_P(PgExecutorTest, CancelEndsADistributeWaitingForALockedTable) {
  for (int w = 0; w < 2; ++w) ASSERT_TRUE(wobs_[w]->Exec("CREATE TABLE locked_t(a int)").ok());
  absl::StatusOr<std::unique_ptr<PgClient>> locker = workers_[0]->Connect();
  ASSERT_TRUE(locker.ok()) << locker.status();
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS locked_t");
    }
  });
  ASSERT_TRUE((*locker)->Exec("BEGIN; LOCK TABLE locked_t").ok());
  std::unique_ptr<PgClient> d = Connect();
  ASSERT_NE(d, nullptr);
  const std::string pid = Value(*d, "SELECT pg_backend_pid()");
  AsyncQuery q(*d,
               "SELECT sum(rows) FROM connthrottle.distribute("
               "'SELECT g FROM generate_series(1, 1000) g', 'locked_t')");
  // The coordinator's COPY waits for the lock on worker 1.
  ASSERT_TRUE(PollUntil([&] {
    return CoordinatorConnectionsOn(0, " AND wait_event_type = 'Lock'") == 1;
  })) << "the COPY did not wait for the lock";
  const Clock::time_point cancelled = Clock::now();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_cancel_backend(", pid, ")")), "t");
  ASSERT_TRUE(q.WaitDone(std::chrono::seconds(20))) << "distribute ignored the cancel";
  Report("cancel -> distribute (COPY waiting for a lock) returned",
         absl::StrCat(Ms(q.ended() - cancelled), " ms"));
  EXPECT_EQ(SqlState(q.result().status()), "57014") << q.result().status();
  // Nothing is left waiting on the worker, and the lock holder can finish.
  EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == 0; }));
  ASSERT_TRUE((*locker)->Exec("COMMIT").ok());
  EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM locked_t"), "0");
  EXPECT_EQ(Value(*d, "SELECT 1"), "1");
}

// connthrottle.node_conninfo adds allowed libpq keywords to every worker
// connection, and a change applies to the next execution (idle connections
// made with the old keywords are not reused).
TEST_P(PgExecutorTest, NodeConninfoKeywordsApplyToWorkerConnections) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::vector<TaskSpec> name = {
      {Host(), Port(0), "SELECT current_setting('application_name')"}};
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("connthrottle")) << rows->at(0);

  ASSERT_TRUE(s->Exec("SET connthrottle.node_conninfo = 'application_name=ct-probe'").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("ct-probe")) << rows->at(0);

  // The workers do not speak TLS: sslmode=require fails every connection.
  ASSERT_TRUE(s->Exec("SET connthrottle.node_conninfo = 'sslmode=require'").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_FALSE(rows->at(0).success) << rows->at(0);
  EXPECT_EQ(rows->at(0).sqlstate, Cell("08001")) << rows->at(0);
  EXPECT_THAT(rows->at(0).error.value_or(""), HasSubstr("SSL")) << rows->at(0);

  // Keywords that choose where to connect or as whom are refused.
  for (const char* bad : {"host=10.0.0.1", "port=1", "user=postgres", "passfile=/tmp/x",
                          "options='-c x=y'", "service=s", "dbname=postgres"}) {
    EXPECT_EQ(SqlState(s->Exec(absl::StrCat("SET connthrottle.node_conninfo = $$", bad, "$$"))),
              "22023")
        << bad;
  }
  ASSERT_TRUE(s->Exec("RESET connthrottle.node_conninfo").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("connthrottle")) << rows->at(0);
}

INSTANTIATE_TEST_SUITE_P(Transports, PgExecutorTest, ::testing::Values("direct", "shared_pool"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace connthrottle::cluster
