// One budget across coordinators (issue 28, Part B; docs/budget.md): two
// coordinators, each with connthrottle preloaded and a limit for the worker
// (4) that alone would fill its budget, send to one worker whose
// connthrottle.worker_budget is 4 and which admits no coordinator
// connection without a lease (unleased_connections = 0). Each coordinator's
// communicator leases from the worker; every acquire applies the lease.
// Every case samples the worker's own pg_stat_activity and holds it to the
// budget; both transports.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/fault_proxy.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

constexpr int kBudget = 4;
constexpr char kCoordinatorConnections[] =
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle' "
    "AND backend_type = 'client backend'";

class PgBudgetTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-budget");
    ASSERT_TRUE(root.ok()) << root.status();
    *root_ = *root;
  }
  static void TearDownTestSuite() {
    if (!root_->empty()) RemoveTree(*root_);
  }

  void SetUp() override {
    const int n = ++servers_started_;
    absl::StatusOr<std::unique_ptr<LocalServer>> w = LocalServer::Start(
        *root_, ServerConfig{.name = absl::StrCat("bworker", n),
                             .max_connections = 40,
                             .preload_connthrottle = true,
                             .settings = {{"connthrottle.worker_budget", "4"},
                                          {"connthrottle.unleased_connections", "0"},
                                          {"connthrottle.lease_duration", "'2s'"}}});
    ASSERT_TRUE(w.ok()) << w.status();
    worker_ = *std::move(w);
    absl::StatusOr<std::unique_ptr<PgClient>> obs = worker_->Connect();
    ASSERT_TRUE(obs.ok()) << obs.status();
    wobs_ = *std::move(obs);
    ASSERT_TRUE(wobs_->Exec("CREATE EXTENSION connthrottle").ok());
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<LocalServer>> c = LocalServer::Start(
          *root_,
          ServerConfig{
              .name = absl::StrCat("bcoord", n, "_", i + 1),
              .max_connections = 30,
              .preload_connthrottle = true,
              .settings = {{"connthrottle.max_shared_pool_size", "4"},
                           {"connthrottle.coordinator_id", absl::StrCat("'c", i + 1, "'")},
                           // The workers' superuser (the servers run as
                           // another operating-system user).
                           {"connthrottle.lease_user", "'postgres'"},
                           {"connthrottle.executor_transport", absl::StrCat("'", GetParam(), "'")},
                           // Direct sessions keep no idle connection: one
                           // cached by an idle session would hold a part of
                           // the lease the others wait for.
                           {"connthrottle.max_cached_conns_per_worker", "0"}}});
      ASSERT_TRUE(c.ok()) << c.status();
      coordinators_[i] = *std::move(c);
      ASSERT_TRUE(AddExtensionAndWorkers(*coordinators_[i], {worker_->port()}).ok());
    }
  }

  void TearDown() override {
    StopSampling();
    // Every case: the worker never saw more than its budget.
    EXPECT_LE(peak_.load(), kBudget) << "the worker saw more coordinator backends than its budget";
    if (HasFailure()) {
      for (LocalServer* s : {worker_.get(), coordinators_[0].get(), coordinators_[1].get()}) {
        if (s == nullptr) continue;
        std::ifstream log(s->log_file());
        std::vector<std::string> lines;
        for (std::string line; std::getline(log, line);) lines.push_back(line);
        const size_t from = lines.size() > 40 ? lines.size() - 40 : 0;
        std::string tail;
        for (size_t i = from; i < lines.size(); ++i) absl::StrAppend(&tail, lines[i], "\n");
        ADD_FAILURE() << "log of " << s->name() << " (last lines):\n" << tail;
      }
    }
    for (auto& c : coordinators_) c.reset();
    wobs_.reset();
    worker_.reset();
  }

  // Samples the worker's coordinator backends, and every tenth time the
  // coordinators' leases (lease_[i], the largest seen), until Stop(). Its
  // own connection: a session's `more` callback runs on several threads
  // and reads only these atomics.
  void StartSampling() {
    absl::StatusOr<std::unique_ptr<PgClient>> s = worker_->Connect();
    ASSERT_TRUE(s.ok()) << s.status();
    sampler_client_ = *std::move(s);
    sampling_ = std::thread([this] {
      for (int n = 0; !stop_.load(); ++n) {
        absl::StatusOr<std::string> v = sampler_client_->QueryValue(kCoordinatorConnections);
        if (!v.ok()) continue;
        peak_ = std::max(peak_.load(), std::stoi(*v));
        ++samples_;
        if (n % 10 != 0) continue;
        for (int i = 0; i < 2; ++i) {
          absl::StatusOr<QueryResult> l = sampler_client_->Query(absl::StrCat(
              "SELECT coalesce(max(greatest(held, pending)), -1), coalesce(sum(live), 0) "
              "FROM connthrottle.leases() WHERE coordinator_id = 'c",
              i + 1, "'"));
          if (!l.ok() || l->rows.size() != 1) continue;
          now_lease_[i] = std::stoi(l->rows[0][0].value_or("-1"));
          lease_[i] = std::max(lease_[i].load(), now_lease_[i].load());
          live_[i] = std::stoi(l->rows[0][1].value_or("0"));
        }
      }
    });
  }
  void StopSampling() {
    stop_ = true;
    if (sampling_.joinable()) sampling_.join();
  }

  std::vector<std::unique_ptr<PgClient>> Sessions(int coordinator, int n) {
    std::vector<std::unique_ptr<PgClient>> out;
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<std::unique_ptr<PgClient>> c = coordinators_[coordinator]->Connect();
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) out.push_back(*std::move(c));
    }
    return out;
  }
  std::vector<TaskSpec> Tasks(int n) {
    return std::vector<TaskSpec>(n,
                                 TaskSpec{"127.0.0.1", worker_->port(), "SELECT pg_sleep(0.02)"});
  }
  // A coordinator's lease at the worker (held or pending, the larger).
  int Lease(const std::string& id) {
    absl::StatusOr<std::string> v = wobs_->QueryValue(
        absl::StrCat("SELECT coalesce(max(greatest(held, pending)), -1) FROM connthrottle.leases() "
                     "WHERE coordinator_id = '",
                     id, "'"));
    return v.ok() ? std::stoi(*v) : -2;
  }
  // Whether the worker counts nothing for coordinator `id`: no grant held
  // or pending, no connection.
  bool HoldsNothing(const std::string& id) {
    absl::StatusOr<std::string> v = wobs_->QueryValue(
        absl::StrCat("SELECT count(*) FROM connthrottle.leases() WHERE coordinator_id = '", id,
                     "' AND (held > 0 OR pending > 0 OR live > 0)"));
    return v.ok() && *v == "0";
  }
  std::string Leases() {
    absl::StatusOr<QueryResult> r = wobs_->Query(
        "SELECT coordinator_id, held, pending, live, demand, cap FROM connthrottle.leases() "
        "ORDER BY 1");
    if (!r.ok()) return r.status().ToString();
    std::string out;
    for (const auto& row : r->rows) {
      for (const auto& cell : row) absl::StrAppend(&out, cell.value_or("NULL"), " ");
      absl::StrAppend(&out, "; ");
    }
    return out;
  }

  static inline std::string* root_ = new std::string;
  static inline int servers_started_ = 0;
  std::unique_ptr<LocalServer> worker_;
  std::unique_ptr<PgClient> wobs_;
  std::unique_ptr<LocalServer> coordinators_[2];
  std::unique_ptr<PgClient> sampler_client_;
  std::thread sampling_;
  std::atomic<bool> stop_{false};
  std::atomic<int> peak_{0}, samples_{0};
  std::atomic<int> lease_[2] = {-1, -1};      // the largest seen
  std::atomic<int> live_[2] = {0, 0};         // the latest seen
  std::atomic<int> now_lease_[2] = {-1, -1};  // the latest seen
};

// Both coordinators busy: every task succeeds, the worker never holds more
// than its budget, and both coordinators lease a part of it.
TEST_P(PgBudgetTest, TwoCoordinatorsNeverExceedTheBudget) {
  ASSERT_NO_FATAL_FAILURE(StartSampling());
  std::vector<std::unique_ptr<PgClient>> s1 = Sessions(0, 3), s2 = Sessions(1, 3);
  SessionRuns r1, r2;
  std::thread t1(
      [&] { r1 = RunSessionsUntil(s1, Tasks(4), 3, [&] { return samples_.load() < 200; }); });
  std::thread t2(
      [&] { r2 = RunSessionsUntil(s2, Tasks(4), 3, [&] { return samples_.load() < 200; }); });
  t1.join();
  t2.join();
  StopSampling();
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(r1.failures[i], "") << "c1 session " << i;
  for (size_t i = 0; i < s2.size(); ++i) EXPECT_EQ(r2.failures[i], "") << "c2 session " << i;
  // Both worked within leases: each has a record that was renewed.
  absl::StatusOr<std::string> leased = wobs_->QueryValue(
      "SELECT count(*) FROM connthrottle.leases() WHERE coordinator_id IN ('c1', 'c2') AND "
      "renewals > 0");
  ASSERT_TRUE(leased.ok()) << leased.status();
  EXPECT_EQ(*leased, "2") << Leases();
  // Each coordinator shows its lease of the worker (lease_status()): leased,
  // within the budget, for a while yet, no error. (Awaited: a renewal late
  // on a loaded machine passes through another state for a moment.)
  for (int c = 0; c < 2; ++c) {
    absl::StatusOr<std::unique_ptr<PgClient>> admin = coordinators_[c]->Connect();
    ASSERT_TRUE(admin.ok()) << admin.status();
    std::string seen;
    EXPECT_TRUE(PollUntil([&] {
      absl::StatusOr<QueryResult> r = (*admin)->Query(
          "SELECT state || ' ' || (lease_limit BETWEEN 1 AND 4) || ' ' || "
          "(ends_in > interval '0') || ' ' || coalesce(error, '-') "
          "FROM connthrottle.lease_status() WHERE port = $1",
          {std::to_string(worker_->port())});
      seen = r.ok() ? (r->rows.size() == 1 ? r->rows[0][0].value_or("NULL") : "no row")
                    : r.status().ToString();
      return seen == "leased true true -";
    })) << "coordinator c"
        << c + 1 << ": " << seen;
  }
  Report(absl::StrCat(GetParam(),
                      ": 2 coordinators x 3 sessions x run_tasks(4 x pg_sleep(0.02)), "
                      "limit 4 each, worker budget 4"),
         absl::StrCat(absl::StrJoin(r1.executions, "/"), " and ", absl::StrJoin(r2.executions, "/"),
                      " executions; peak ", peak_.load(), " coordinator backends on the worker in ",
                      samples_.load(), " samples; leases at the end ", Leases()));
  EXPECT_GT(samples_.load(), 0);
}

// c2 idle, c1 busy: c1's lease grows to the budget less c2's foothold.
TEST_P(PgBudgetTest, AnIdleCoordinatorsShareFlowsToTheBusyOne) {
  ASSERT_NO_FATAL_FAILURE(StartSampling());
  // c2 does a little work, so that it holds a lease, then goes idle.
  std::vector<std::unique_ptr<PgClient>> s2 = Sessions(1, 1);
  ASSERT_TRUE(RunTasks(*s2[0], Tasks(1)).ok());
  std::vector<std::unique_ptr<PgClient>> s1 = Sessions(0, 4);
  const SessionRuns r1 =
      RunSessionsUntil(s1, Tasks(4), 3, [&] { return lease_[0].load() < kBudget - 1; });
  StopSampling();
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(r1.failures[i], "") << "c1 session " << i;
  EXPECT_GE(lease_[0].load(), kBudget - 1) << Leases();
}

// c2's pool keeps its connections open when it goes idle (a long
// pool_idle_timeout): they are no demand, so its lease shrinks, its pool
// closes what is over it, and busy c1 gets the budget less c2's foothold.
TEST_P(PgBudgetTest, AnIdlePoolsOpenConnectionsGoToTheBusyCoordinator) {
  if (std::string(GetParam()) != "shared_pool") {
    GTEST_SKIP() << "direct sessions keep no idle connection here";
  }
  ASSERT_TRUE(coordinators_[1]->SetAndReload("connthrottle.pool_idle_timeout", "'10min'").ok());
  ASSERT_NO_FATAL_FAILURE(StartSampling());
  // c2 alone, busy until it holds at least 3 connections to the worker.
  std::vector<std::unique_ptr<PgClient>> s2 = Sessions(1, 4);
  const SessionRuns r2 = RunSessionsUntil(s2, Tasks(4), 1, [&] { return live_[1].load() < 3; });
  for (size_t i = 0; i < s2.size(); ++i) ASSERT_EQ(r2.failures[i], "") << "c2 session " << i;
  ASSERT_GE(live_[1].load(), 3) << Leases();
  // c2 idle now (its sessions stay open), c1 busy.
  std::vector<std::unique_ptr<PgClient>> s1 = Sessions(0, 4);
  const SessionRuns r1 =
      RunSessionsUntil(s1, Tasks(4), 3, [&] { return lease_[0].load() < kBudget - 1; });
  StopSampling();
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(r1.failures[i], "") << "c1 session " << i;
  EXPECT_GE(lease_[0].load(), kBudget - 1) << Leases();
  EXPECT_LE(live_[1].load(), 1) << "c2's idle pool kept its connections: " << Leases();
}

// A coordinator whose communicator is killed (SIGKILL: the server's
// crash-restart, a new incarnation): its old grants end at the worker
// within the lease, and the other coordinator gets the budget.
TEST_P(PgBudgetTest, AKilledCoordinatorsShareGoesBack) {
  ASSERT_NO_FATAL_FAILURE(StartSampling());
  std::vector<std::unique_ptr<PgClient>> s2 = Sessions(1, 1);
  ASSERT_TRUE(RunTasks(*s2[0], Tasks(2)).ok());
  ASSERT_TRUE(PollUntil([&] { return Lease("c2") >= 1; })) << Leases();
  // The communicator runs the lease service on both transports.
  absl::StatusOr<std::string> pid = s2[0]->QueryValue(
      "SELECT pid FROM pg_stat_activity WHERE backend_type = 'connthrottle communicator'");
  ASSERT_TRUE(pid.ok() && !pid->empty()) << pid.status();
  ASSERT_EQ(kill(std::stoi(*pid), SIGKILL), 0);
  s2.clear();
  // The worker ends the old incarnation's grants (2 s) and the record goes.
  ASSERT_TRUE(PollUntil([&] { return HoldsNothing("c2"); })) << Leases();
  std::vector<std::unique_ptr<PgClient>> s1 = Sessions(0, 4);
  const SessionRuns r1 =
      RunSessionsUntil(s1, Tasks(4), 2, [&] { return lease_[0].load() < kBudget; });
  StopSampling();
  for (size_t i = 0; i < s1.size(); ++i) EXPECT_EQ(r1.failures[i], "") << "c1 session " << i;
  EXPECT_EQ(lease_[0].load(), kBudget) << Leases();
}

// c1 reaches the worker through a proxy that then cuts its lease
// connection off (data connections still flow): c1's lease ends (limit 0,
// lease_status() says why), the worker ends c1's grant and its
// connections, c2 gets the whole budget, and once the proxy heals c1 leases
// and runs again. The worker never holds more than its budget (TearDown).
TEST_P(PgBudgetTest, AWorkerCutOffFromLeasesIsNeverOverrun) {
  absl::StatusOr<std::unique_ptr<connthrottle::testing::FaultProxy>> proxy =
      connthrottle::testing::FaultProxy::Start(worker_->host(), worker_->port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  const std::vector<TaskSpec> via_proxy(
      4, TaskSpec{"127.0.0.1", (*proxy)->port(), "SELECT pg_sleep(0.02)"});
  ASSERT_NO_FATAL_FAILURE(StartSampling());
  std::vector<std::unique_ptr<PgClient>> s1 = Sessions(0, 2);
  const SessionRuns before = RunSessionsUntil(s1, via_proxy, 1, [&] { return lease_[0] < 1; });
  for (size_t i = 0; i < s1.size(); ++i) ASSERT_EQ(before.failures[i], "") << "c1 session " << i;

  (*proxy)->Stall(connthrottle::testing::FaultProxy::Target::kLease);
  absl::StatusOr<std::unique_ptr<PgClient>> c1 = coordinators_[0]->Connect();
  ASSERT_TRUE(c1.ok()) << c1.status();
  std::string seen;
  EXPECT_TRUE(PollUntil([&] {
    absl::StatusOr<QueryResult> r = (*c1)->Query(
        "SELECT state || ' ' || lease_limit || ' ' || (error IS NOT NULL) "
        "FROM connthrottle.lease_status() WHERE port = $1",
        {std::to_string((*proxy)->port())});
    seen = r.ok() && r->rows.size() == 1 ? r->rows[0][0].value_or("NULL") : "no row";
    return seen == "verify 0 true" || seen == "lapsed 0 true";
  })) << seen;
  EXPECT_TRUE(PollUntil([&] { return HoldsNothing("c1"); })) << Leases();
  std::vector<std::unique_ptr<PgClient>> s2 = Sessions(1, 4);
  const SessionRuns r2 = RunSessionsUntil(s2, Tasks(4), 1, [&] { return now_lease_[1] < kBudget; });
  for (size_t i = 0; i < s2.size(); ++i) EXPECT_EQ(r2.failures[i], "") << "c2 session " << i;
  EXPECT_EQ(now_lease_[1].load(), kBudget) << Leases();

  (*proxy)->Heal();
  s2.clear();  // c2 idle: its share goes back as c1 asks
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*s1[0], via_proxy);
  ASSERT_TRUE(after.ok()) << after.status();
  for (const TaskRow& t : *after) EXPECT_TRUE(t.success) << t.error.value_or("");
  EXPECT_TRUE(PollUntil([&] {
    absl::StatusOr<std::string> v = (*c1)->QueryValue(absl::StrCat(
        "SELECT state FROM connthrottle.lease_status() WHERE port = ", (*proxy)->port()));
    seen = v.ok() ? *v : v.status().ToString();
    return seen == "leased";
  })) << seen;
  StopSampling();
}

INSTANTIATE_TEST_SUITE_P(Transports, PgBudgetTest, ::testing::Values("direct", "shared_pool"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace connthrottle::cluster
