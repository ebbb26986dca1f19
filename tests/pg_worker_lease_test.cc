// A worker's leases of its budget (issue 28, step 6 of docs/budget.md),
// against a real server that preloads connthrottle: libpq clients play the
// coordinators' lease holders (lease_renew) and their data connections
// (`options=-c connthrottle.coordinator=<id>/<incarnation>`). The worker
// admits a coordinator's connections up to its lease and within the
// budget, shares the budget max-min fairly among coordinators, and ends the
// connections of a coordinator whose lease ran out (a dead or cut-off
// one). Every case also checks the worker's own pg_stat_activity against
// the budget.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;

constexpr int kBudget = 4;

class PgWorkerLeaseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-lease");
    ASSERT_TRUE(root.ok()) << root.status();
    *root_ = *root;
  }
  static void TearDownTestSuite() {
    if (!root_->empty()) RemoveTree(*root_);
  }
  static int ToInt(const std::optional<std::string>& v) { return v ? std::stoi(*v) : 0; }

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<LocalServer>> started = LocalServer::Start(
        *root_, ServerConfig{.name = absl::StrCat("leasing", ++servers_started_),
                             .max_connections = 40,
                             .preload_connthrottle = true,
                             .settings = {{"connthrottle.worker_budget", "4"},
                                          {"connthrottle.unleased_connections", "0"},
                                          {"connthrottle.lease_duration", "10min"}}});
    ASSERT_TRUE(started.ok()) << started.status();
    worker_ = *std::move(started);
    absl::StatusOr<std::unique_ptr<PgClient>> c = worker_->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    obs_ = *std::move(c);
    ASSERT_TRUE(obs_->Exec("CREATE EXTENSION IF NOT EXISTS connthrottle").ok());
  }

  void TearDown() override {
    // The bound, from the worker's own view, in every case.
    if (obs_ != nullptr) {
      EXPECT_LE(CoordinatorBackends(), kBudget);
    }
    obs_.reset();
    worker_.reset();
  }

  // A coordinator's lease holder: its lease connection and its sequence.
  struct Holder {
    std::string id;
    uint64_t incarnation = 1;
    uint64_t seq = 0;
    uint64_t acked = 0;
    std::unique_ptr<PgClient> conn;
  };
  Holder NewHolder(const std::string& id) {
    Holder h;
    h.id = id;
    ConnParams p = worker_->Params();
    p.Set("application_name", "connthrottle lease");
    absl::StatusOr<std::unique_ptr<PgClient>> c = PgClient::Connect(p);
    EXPECT_TRUE(c.ok()) << c.status();
    if (c.ok()) h.conn = *std::move(c);
    return h;
  }
  // lease_renew with `demand`, acknowledging the last reply read; returns
  // the grant (-1 on error).
  int Renew(Holder& h, int demand, int cap = 10) {
    absl::StatusOr<QueryResult> r =
        h.conn->Query("SELECT granted FROM connthrottle.lease_renew($1, $2, 0, $3, $4, 0, $5, $6)",
                      {h.id, absl::StrCat(h.incarnation), absl::StrCat(++h.seq),
                       absl::StrCat(h.acked), absl::StrCat(demand), absl::StrCat(cap)});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return -1;
    h.acked = h.seq;
    return ToInt(r->rows[0][0]);
  }
  absl::StatusOr<std::unique_ptr<PgClient>> ConnectAs(const std::string& coordinator) {
    ConnParams p = worker_->Params();
    p.Set("options", absl::StrCat("-c connthrottle.coordinator=", coordinator));
    p.Set("application_name", "connthrottle data");
    return PgClient::Connect(p);
  }
  // Sets connthrottle.lease_duration; a backend started after it returns
  // (as the next lease connection) has the new value.
  void SetLeaseDuration(const std::string& value) {
    ASSERT_TRUE(worker_->SetAndReload("connthrottle.lease_duration", "'" + value + "'").ok());
    ASSERT_TRUE(PollUntil([&] {
      absl::StatusOr<std::unique_ptr<PgClient>> c = worker_->Connect();
      if (!c.ok()) return false;
      absl::StatusOr<std::string> v = (*c)->QueryValue("SHOW connthrottle.lease_duration");
      return v.ok() && *v == value;
    }));
  }
  int CoordinatorBackends() {
    absl::StatusOr<std::string> v = obs_->QueryValue(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'connthrottle data'");
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? std::stoi(*v) : -1;
  }
  int LeaseColumn(const std::string& id, const std::string& column) {
    absl::StatusOr<std::string> v = obs_->QueryValue(
        absl::StrCat("SELECT coalesce(max(", column,
                     "), -1) FROM connthrottle.leases() WHERE coordinator_id = '", id, "'"));
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? std::stoi(*v) : -2;
  }

  static inline std::string* root_ = new std::string;
  static inline int servers_started_ = 0;
  std::unique_ptr<LocalServer> worker_;
  std::unique_ptr<PgClient> obs_;
};

TEST_F(PgWorkerLeaseTest, ACoordinatorIsAdmittedUpToItsLease) {
  Holder a = NewHolder("a");
  EXPECT_EQ(Renew(a, /*demand=*/2, /*cap=*/3), 3);  // demand, then headroom up to its cap
  std::vector<std::unique_ptr<PgClient>> open;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = ConnectAs("a/1");
    ASSERT_TRUE(c.ok()) << c.status();
    open.push_back(*std::move(c));
  }
  absl::StatusOr<std::unique_ptr<PgClient>> beyond = ConnectAs("a/1");
  ASSERT_FALSE(beyond.ok());
  EXPECT_THAT(std::string(beyond.status().message()),
              HasSubstr("coordinator a has no free slot in its lease from this worker (3 of 3)"));
  // Another incarnation of a has no lease; unleased connections: 0.
  absl::StatusOr<std::unique_ptr<PgClient>> other = ConnectAs("a/2");
  ASSERT_FALSE(other.ok());
  EXPECT_THAT(std::string(other.status().message()), HasSubstr("without a lease"));
  EXPECT_EQ(LeaseColumn("a", "live"), 3);
  absl::StatusOr<QueryResult> adm = obs_->Query(
      "SELECT coordinator_connections, refused_lease, refused_unleased, lease_coordinators "
      "FROM connthrottle.worker_admission()");
  ASSERT_TRUE(adm.ok()) << adm.status();
  EXPECT_EQ(ToInt(adm->rows[0][0]), 3);
  EXPECT_EQ(ToInt(adm->rows[0][1]), 1);
  EXPECT_EQ(ToInt(adm->rows[0][2]), 1);
  EXPECT_EQ(ToInt(adm->rows[0][3]), 1);
  // A connection that closes makes room within the lease.
  open.pop_back();
  ASSERT_TRUE(PollUntil([&] { return LeaseColumn("a", "live") == 2; }));
  EXPECT_TRUE(ConnectAs("a/1").ok());
}

TEST_F(PgWorkerLeaseTest, TwoCoordinatorsConvergeToEqualSharesOfTheBudget) {
  Holder a = NewHolder("a");
  Holder b = NewHolder("b");
  ASSERT_TRUE(a.conn->Exec("LISTEN connthrottle_lease").ok());
  EXPECT_EQ(Renew(a, 10), kBudget);
  // b finds it all leased to a: nothing yet, and a is asked to renew early.
  EXPECT_EQ(Renew(b, 10), 0);
  ASSERT_TRUE(PollUntil([&] {
    for (const std::string& id : a.conn->TakeNotifications()) {
      if (id == "a") return true;
    }
    return false;
  }));
  // a renews (its share), then acknowledges it; b then gets the rest.
  EXPECT_EQ(Renew(a, 10), kBudget / 2);
  EXPECT_EQ(Renew(a, 10), kBudget / 2);
  EXPECT_EQ(Renew(b, 10), kBudget / 2);
  std::vector<std::unique_ptr<PgClient>> open;
  for (const char* who : {"a/1", "a/1", "b/1", "b/1"}) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = ConnectAs(who);
    ASSERT_TRUE(c.ok()) << who << ": " << c.status();
    open.push_back(*std::move(c));
  }
  EXPECT_FALSE(ConnectAs("a/1").ok());
  EXPECT_FALSE(ConnectAs("b/1").ok());
  EXPECT_EQ(CoordinatorBackends(), kBudget);
}

// A coordinator that stops renewing (dead, cut off): when its last grant
// ends the lease manager ends its connections, and its share goes to the
// other coordinator.
TEST_F(PgWorkerLeaseTest, ALapsedLeasesConnectionsAreEndedAndItsShareFreed) {
  // Leases long enough for nothing to end by itself in the other cases;
  // 1 s for a here.
  ASSERT_NO_FATAL_FAILURE(SetLeaseDuration("1s"));
  Holder a = NewHolder("a");
  EXPECT_EQ(Renew(a, 10), kBudget);
  std::vector<std::unique_ptr<PgClient>> ghosts;
  int opened = 0;
  for (int i = 0; i < kBudget; ++i) {
    // On a slow machine a's lease may end before all are open.
    absl::StatusOr<std::unique_ptr<PgClient>> c = ConnectAs("a/1");
    if (!c.ok()) break;
    ghosts.push_back(*std::move(c));
    ++opened;
  }
  ASSERT_GE(opened, 1);
  // a never renews again: once its lease (1 s) has ended, the manager
  // terminates its backends (57P01 on their next query).
  ASSERT_TRUE(PollUntil([&] { return CoordinatorBackends() == 0; }));
  for (auto& g : ghosts) {
    absl::Status s = g->Exec("SELECT 1");
    EXPECT_FALSE(s.ok());
  }
  // Once they are gone, so is a's record.
  ASSERT_TRUE(PollUntil([&] { return LeaseColumn("a", "live") == -1; }));
  // Its share is free: another coordinator leases all of the budget.
  ASSERT_NO_FATAL_FAILURE(SetLeaseDuration("10min"));
  Holder b = NewHolder("b");
  EXPECT_EQ(Renew(b, 10), kBudget);
  for (int i = 0; i < kBudget; ++i) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = ConnectAs("b/1");
    ASSERT_TRUE(c.ok()) << c.status();
    ghosts.push_back(*std::move(c));
  }
}

TEST_F(PgWorkerLeaseTest, UnleasedConnectionsAreHeldFromTheLeases) {
  ASSERT_TRUE(worker_->SetAndReload("connthrottle.unleased_connections", "1").ok());
  ASSERT_TRUE(PollUntil([&] {
    absl::StatusOr<std::string> v = obs_->QueryValue("SHOW connthrottle.unleased_connections");
    return v.ok() && *v == "1";
  }));
  absl::StatusOr<std::unique_ptr<PgClient>> old = ConnectAs("on");  // a coordinator without leases
  ASSERT_TRUE(old.ok()) << old.status();
  absl::StatusOr<std::unique_ptr<PgClient>> second = ConnectAs("on");
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("without a lease"));
  Holder a = NewHolder("a");
  EXPECT_EQ(Renew(a, 10), kBudget - 1);
}

TEST_F(PgWorkerLeaseTest, BadRequestsAreRefusedClearly) {
  Holder h = NewHolder("a");
  struct Case {
    const char* args;
    const char* sqlstate;
  };
  for (const Case& c : {
           Case{"NULL, 1, 0, 1, 0, 0, 1, 1", "22004"},
           Case{"'a', NULL, 0, 1, 0, 0, 1, 1", "22004"},
           Case{"'', 1, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"'a/b', 1, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"'a b', 1, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"E'a\\\\b', 1, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"repeat('x', 64), 1, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"'a', 0, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"'a', -5, 0, 1, 0, 0, 1, 1", "22023"},
           Case{"'a', 1, 0, 0, 0, 0, 1, 1", "22023"},
           Case{"'a', 1, 0, 1, 0, 0, 1, 0", "22023"},
           Case{"'a', 1, 0, 1, 0, 0, -1, 1", "22023"},
       }) {
    absl::Status s = h.conn->Exec(absl::StrCat("SELECT connthrottle.lease_renew(", c.args, ")"));
    EXPECT_EQ(SqlState(s), c.sqlstate) << c.args << ": " << s;
  }
  EXPECT_EQ(LeaseColumn("a", "live"), -1);  // nothing recorded
  ASSERT_TRUE(h.conn->Exec("SELECT connthrottle.lease_renew('a', 1, 0, 5, 0, 0, 1, 1)").ok());
  // A request not newer than the last (a delayed duplicate).
  absl::Status stale = h.conn->Exec("SELECT connthrottle.lease_renew('a', 1, 0, 5, 0, 0, 1, 1)");
  EXPECT_EQ(SqlState(stale), "22023") << stale;
  // Not executable by PUBLIC.
  ASSERT_TRUE(obs_->Exec("CREATE ROLE lease_nobody LOGIN").ok());
  ConnParams p = worker_->Params();
  p.Set("user", "lease_nobody");
  absl::StatusOr<std::unique_ptr<PgClient>> nobody = PgClient::Connect(p);
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  absl::Status denied =
      (*nobody)->Exec("SELECT connthrottle.lease_renew('z', 1, 0, 1, 0, 0, 1, 1)");
  EXPECT_EQ(SqlState(denied), "42501") << denied;
}

TEST_F(PgWorkerLeaseTest, WithoutABudgetNothingIsLeased) {
  ASSERT_TRUE(worker_->SetAndReload("connthrottle.worker_budget", "-1").ok());
  ASSERT_TRUE(PollUntil([&] {
    absl::StatusOr<std::string> v = obs_->QueryValue("SHOW connthrottle.worker_budget");
    return v.ok() && *v == "-1";
  }));
  Holder a = NewHolder("a");
  absl::StatusOr<QueryResult> r = a.conn->Query(
      "SELECT granted, budget_off FROM connthrottle.lease_renew('a', 1, 0, 1, 0, 0, 2, 7)");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ToInt(r->rows[0][0]), 7);
  EXPECT_EQ(r->rows[0][1], "t");
  EXPECT_EQ(LeaseColumn("a", "live"), -1);
}

}  // namespace
}  // namespace connthrottle::cluster
