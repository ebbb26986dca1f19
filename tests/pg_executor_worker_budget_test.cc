// A worker's budget of coordinator connections (connthrottle.worker_budget,
// issue 28, step 5 of docs/budget.md): a worker running connthrottle refuses
// at authentication, with 53300, any coordinator connection beyond it,
// whoever opens it; the coordinator takes the refusal as "no slot" and waits.

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

constexpr int kBudget = 2;

class PgWorkerBudgetTest : public PgExecutorTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgExecutorTest::SetUp());
    absl::StatusOr<std::unique_ptr<LocalServer>> started = LocalServer::Start(
        *root_, ServerConfig{.name = absl::StrCat("budgeted", ++servers_started_),
                             .max_connections = 30,
                             .preload_connthrottle = true,
                             .settings = {{"connthrottle.worker_budget", "2"}}});
    ASSERT_TRUE(started.ok()) << started.status();
    worker_ = *std::move(started);
    absl::StatusOr<std::unique_ptr<PgClient>> c = worker_->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    wobs_budget_ = *std::move(c);
    ASSERT_TRUE(wobs_budget_->Exec("CREATE EXTENSION IF NOT EXISTS connthrottle").ok());
  }

  void TearDown() override {
    PgExecutorTest::TearDown();
    wobs_budget_.reset();
    worker_.reset();
  }

  // A connection that says it is a coordinator's, as connthrottle's own do.
  absl::StatusOr<std::unique_ptr<PgClient>> ConnectAsCoordinator() {
    ConnParams p = worker_->Params();
    p.Set("options", "-c connthrottle.coordinator=test");
    return PgClient::Connect(p);
  }

  // (budget, coordinator_connections, admitted, refused) on the worker.
  std::vector<int> Admission() {
    absl::StatusOr<QueryResult> r = wobs_budget_->Query(
        "SELECT coalesce(budget, -1), coordinator_connections, admitted, refused "
        "FROM connthrottle.worker_admission()");
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->rows.size() != 1) return {};
    std::vector<int> out;
    for (const Cell& c : r->rows[0]) out.push_back(ToInt(c));
    return out;
  }

  static inline int servers_started_ = 0;  // one data directory each
  std::unique_ptr<LocalServer> worker_;
  std::unique_ptr<PgClient> wobs_budget_;
};

// The budget binds every connection that says it is a coordinator's and
// nothing else; a closed one makes room; a reload changes the budget.
TEST_P(PgWorkerBudgetTest, WorkerRefusesCoordinatorConnectionsBeyondItsBudget) {
  std::vector<std::unique_ptr<PgClient>> admitted;
  for (int i = 0; i < kBudget; ++i) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = ConnectAsCoordinator();
    ASSERT_TRUE(c.ok()) << c.status();
    admitted.push_back(*std::move(c));
  }
  absl::StatusOr<std::unique_ptr<PgClient>> refused = ConnectAsCoordinator();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "connthrottle: this worker's budget of 2 coordinator connections is in use"),
            std::string::npos)
      << refused.status();
  // Other clients are not the budget's.
  absl::StatusOr<std::unique_ptr<PgClient>> plain = worker_->Connect();
  EXPECT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(Admission(), (std::vector<int>{kBudget, kBudget, kBudget, 1}));

  // A coordinator connection that ends makes room for the next.
  admitted.pop_back();
  ASSERT_TRUE(PollUntil([&] { return Admission().at(1) == kBudget - 1; }));
  absl::StatusOr<std::unique_ptr<PgClient>> next = ConnectAsCoordinator();
  ASSERT_TRUE(next.ok()) << next.status();
  admitted.push_back(*std::move(next));

  // Off (-1): every coordinator connection is admitted, and still counted.
  ASSERT_TRUE(worker_->SetAndReload("connthrottle.worker_budget", "-1").ok());
  ASSERT_TRUE(PollUntil([&] { return Admission().at(0) == -1; }));
  absl::StatusOr<std::unique_ptr<PgClient>> beyond = ConnectAsCoordinator();
  ASSERT_TRUE(beyond.ok()) << beyond.status();
  EXPECT_EQ(Admission().at(1), kBudget + 1);
}

// A coordinator without leases (worker_leases = off) whose limit for the
// node (6) is above the worker's budget (2): its sessions' tasks all
// succeed, waiting for the budget, and the
// worker's own pg_stat_activity never shows more than the budget of
// coordinator connections. On the direct transport sessions keep no idle
// connection here: one cached by an idle session would hold the worker's
// budget while the others wait in vain (README, worker_budget).
TEST_P(PgWorkerBudgetTest, CoordinatorWaitsForTheWorkersBudget) {
  constexpr int kSessions = 4;
  constexpr int kTasks = 6;
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "6"));
  // The worker's admission alone: with leases the coordinator would wait on
  // its own side and the worker would refuse nothing to show.
  ASSERT_TRUE(SetSetting("connthrottle.worker_leases", "off"));
  if (!OnSharedPool()) {
    ASSERT_TRUE(SetSetting("connthrottle.max_cached_conns_per_worker", "0"));
  }
  std::vector<std::unique_ptr<PgClient>> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.push_back(Connect());
    ASSERT_NE(clients.back(), nullptr);
  }
  absl::StatusOr<std::unique_ptr<PgClient>> sampler = worker_->Connect();
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < kTasks; ++i)
    tasks.push_back({Host(), worker_->port(), "SELECT pg_sleep(0.02)"});

  std::atomic<bool> stop{false};
  std::atomic<int> peak{0}, samples{0};
  std::atomic<bool> sample_failed{false};
  std::thread sampling([&] {
    while (!stop.load()) {
      absl::StatusOr<std::string> v = (*sampler)->QueryValue(kCoordinatorConnections);
      if (!v.ok()) {
        sample_failed = true;
        return;
      }
      peak = std::max(peak.load(), std::stoi(*v));
      ++samples;
    }
  });
  // Until every session has 3 executions and the sampler 100 samples.
  const SessionRuns runs =
      RunSessionsUntil(clients, tasks, 3, [&] { return samples.load() < 100; });
  const std::vector<std::string>& failures = runs.failures;
  const std::vector<int>& executions = runs.executions;
  stop = true;
  sampling.join();
  for (int i = 0; i < kSessions; ++i) {
    EXPECT_EQ(failures[i], "") << "session " << i;
    EXPECT_GE(executions[i], 3) << "session " << i;
  }
  EXPECT_FALSE(sample_failed.load());
  const std::vector<int> admission = Admission();
  ASSERT_EQ(admission.size(), 4u);
  Report("4 sessions x run_tasks(6 x pg_sleep(0.02)), coordinator limit 6, worker budget 2",
         absl::StrCat(absl::StrJoin(executions, "/"), " executions; peak ", peak.load(),
                      " coordinator backends on the worker in ", samples.load(), " samples; ",
                      admission[2], " admitted, ", admission[3], " refused"));
  EXPECT_LE(peak.load(), kBudget) << "the worker saw more coordinator backends than its budget";
  EXPECT_GT(admission[3], 0) << "the budget never bound: the test shows nothing";
  clients.clear();
  // The coordinator's connections to the worker are gone or go idle.
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, PgWorkerBudgetTest, ::testing::Values("direct", "shared_pool"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace connthrottle::cluster
