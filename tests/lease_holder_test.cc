// The coordinator's lease holder (src/executor/lease_holder.h, issue 28,
// step 7 of docs/budget.md) against a real worker that preloads
// connthrottle: leasing and renewing, two holders converging to equal
// shares and an idle one's share flowing to the busy one (T_share
// printed), a worker cut off through the fault proxy (the lease lapses to
// limit 0 and comes back), a worker restart (a new instance), workers
// without a budget or without connthrottle, and a clean release.
//
// The holders are driven by this test's thread as a coordinator's loop
// would drive them: Step, then poll their sockets until the next time they
// asked for. Every wait is for a condition, with a deadline.

#include "executor/lease_holder.h"

#include <poll.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/fault_proxy.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::cluster {
namespace {

using ::connthrottle::testing::FaultProxy;

constexpr int kBudget = 4;
constexpr int64_t kMs = 1'000'000;

class LeaseHolderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-holder");
    ASSERT_TRUE(root.ok()) << root.status();
    *root_ = *root;
  }
  static void TearDownTestSuite() {
    if (!root_->empty()) RemoveTree(*root_);
  }

  void SetUp() override {
    worker_ = StartWorker(true, {{"connthrottle.worker_budget", "4"},
                                 {"connthrottle.unleased_connections", "0"},
                                 {"connthrottle.lease_duration", "'3s'"}});
    ASSERT_NE(worker_, nullptr);
  }

  std::unique_ptr<LocalServer> StartWorker(
      bool preload, std::vector<std::pair<std::string, std::string>> settings) {
    absl::StatusOr<std::unique_ptr<LocalServer>> started =
        LocalServer::Start(*root_, ServerConfig{.name = absl::StrCat("holder", ++servers_started_),
                                                .max_connections = 30,
                                                .preload_connthrottle = preload,
                                                .settings = std::move(settings)});
    EXPECT_TRUE(started.ok()) << started.status();
    if (!started.ok()) return nullptr;
    if (preload) {
      absl::StatusOr<std::unique_ptr<PgClient>> c = (*started)->Connect();
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) {
        EXPECT_TRUE((*c)->Exec("CREATE EXTENSION connthrottle").ok());
      }
    }
    return *std::move(started);
  }

  LeaseHolderOptions Options(const std::string& id, int port, int cap = 10) {
    LeaseHolderOptions o;
    o.coordinator_id = id;
    o.incarnation = 42;
    o.worker.Set("host", "127.0.0.1")
        .Set("port", std::to_string(port))
        .Set("dbname", "postgres")
        .Set("user", "postgres");
    o.cap = cap;
    return o;
  }

  // Drives `holders` until `done` or `timeout_ms`; after every step
  // `check` (the coordinators' side of the bound). False on timeout.
  bool Drive(const std::vector<LeaseHolder*>& holders, const std::function<bool()>& done,
             int64_t timeout_ms = 30'000, const std::function<void()>& check = nullptr) {
    const int64_t end = LeaseHolder::Now() + timeout_ms * kMs;
    for (;;) {
      int64_t next = INT64_MAX;
      for (LeaseHolder* h : holders) next = std::min(next, h->Step(LeaseHolder::Now()));
      if (check) check();
      if (done()) return true;
      const int64_t now = LeaseHolder::Now();
      if (now >= end) return false;
      std::vector<pollfd> fds;
      for (LeaseHolder* h : holders) {
        if (h->socket() >= 0) {
          fds.push_back({h->socket(), static_cast<short>(h->wants_write() ? POLLOUT : POLLIN), 0});
        }
      }
      const int64_t wait_ms = std::clamp<int64_t>((std::min(next, end) - now) / kMs + 1, 1, 100);
      poll(fds.data(), fds.size(), static_cast<int>(wait_ms));
    }
  }

  static inline std::string* root_ = new std::string;
  static inline int servers_started_ = 0;
  std::unique_ptr<LocalServer> worker_;
};

TEST_F(LeaseHolderTest, LeasesAndRenewsWithTheDeadlineCountedFromTheSend) {
  LeaseHolder a(Options("a", worker_->port()));
  a.SetDemand(2, 0);
  const int64_t before = LeaseHolder::Now();
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).state == LeaseState::kLeased; }))
      << a.view(LeaseHolder::Now()).error;
  const int64_t after = LeaseHolder::Now();
  LeaseView v = a.view(after);
  // Alone: its demand and the rest of the budget as headroom.
  EXPECT_EQ(v.limit, kBudget);
  EXPECT_EQ(v.duration, 3000 * kMs);
  // The deadline is D less the margin after the send, which came before
  // the reply was read.
  EXPECT_GE(v.deadline, before + v.duration - v.duration / 10);
  EXPECT_LE(v.deadline, after + v.duration - v.duration / 10);
  // It renews every D/3: the deadline moves on, and each is again counted
  // from a send before the reply.
  int64_t last_deadline = v.deadline;
  int moves = 0;
  ASSERT_TRUE(Drive(
      {&a}, [&] { return moves >= 3; }, 60'000,
      [&] {
        const LeaseView w = a.view(LeaseHolder::Now());
        if (w.state == LeaseState::kLeased && w.deadline > last_deadline) {
          EXPECT_LE(w.deadline, LeaseHolder::Now() + w.duration - w.duration / 10);
          ++moves;
          last_deadline = w.deadline;
        }
      }));
  EXPECT_EQ(a.view(LeaseHolder::Now()).limit, kBudget);
}

TEST_F(LeaseHolderTest, TwoHoldersShareTheBudgetAndAnIdleOnesShareFlowsToTheBusyOne) {
  // Leases required (worker_leases = on): no connection before the first
  // grant, so the limits are the leases' from the start.
  LeaseHolderOptions oa = Options("a", worker_->port()), ob = Options("b", worker_->port());
  oa.required = ob.required = true;
  LeaseHolder a(oa);
  LeaseHolder b(ob);
  auto limit = [](LeaseHolder& h) { return h.view(LeaseHolder::Now()).limit; };
  // Coordinator side of the bound: the limits together never exceed B.
  int peak = 0;
  auto bound = [&] {
    peak = std::max(peak, limit(a) + limit(b));
    ASSERT_LE(limit(a) + limit(b), kBudget);
  };
  a.SetDemand(10, 0);
  b.SetDemand(10, 0);
  ASSERT_TRUE(Drive(
      {&a, &b}, [&] { return limit(a) == kBudget / 2 && limit(b) == kBudget / 2; }, 30'000, bound));
  // b goes idle: its share, less a foothold, goes to a.
  b.SetDemand(0, 0);
  const int64_t idle_at = LeaseHolder::Now();
  ASSERT_TRUE(Drive(
      {&a, &b}, [&] { return limit(a) == kBudget - 1; }, 30'000, bound));
  const double t_share_ms = static_cast<double>(LeaseHolder::Now() - idle_at) / kMs;
  std::printf("T_share (idle coordinator's share to the busy one): %.0f ms\n", t_share_ms);
  RecordProperty("t_share_ms", static_cast<int>(t_share_ms));
  // b is busy again: back to equal shares.
  b.SetDemand(10, 0);
  ASSERT_TRUE(Drive(
      {&a, &b}, [&] { return limit(a) == kBudget / 2 && limit(b) == kBudget / 2; }, 30'000, bound));
  EXPECT_EQ(peak, kBudget);
  EXPECT_GE(a.view(LeaseHolder::Now()).notifications, 1u);
}

// The worker cut off from lease renewal (the proxy stalls the lease
// connection): the lease lapses at its deadline (limit 0), no step blocks,
// and it comes back once the worker can be reached.
TEST_F(LeaseHolderTest, CutOffTheLeaseLapsesAndComesBack) {
  absl::StatusOr<std::unique_ptr<FaultProxy>> proxy =
      FaultProxy::Start(worker_->host(), worker_->port());
  ASSERT_TRUE(proxy.ok()) << proxy.status();
  LeaseHolder a(Options("a", (*proxy)->port()));
  a.SetDemand(3, 0);
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).limit == kBudget; }))
      << a.view(LeaseHolder::Now()).error;
  (*proxy)->Stall(FaultProxy::Target::kLease);
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).state == LeaseState::kLapsed; }));
  const LeaseView lapsed = a.view(LeaseHolder::Now());
  EXPECT_EQ(lapsed.limit, 0);
  EXPECT_FALSE(lapsed.error.empty());
  // The worker's grant ends too, no earlier than the holder stopped.
  absl::StatusOr<std::unique_ptr<PgClient>> obs = worker_->Connect();
  ASSERT_TRUE(obs.ok()) << obs.status();
  ASSERT_TRUE(Drive({&a}, [&] {
    absl::StatusOr<std::string> v = (*obs)->QueryValue(
        "SELECT count(*) FROM connthrottle.leases() WHERE coordinator_id = 'a' AND "
        "(held > 0 OR pending > 0)");
    return v.ok() && *v == "0";
  }));
  (*proxy)->Heal();
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).state == LeaseState::kLeased; }))
      << a.view(LeaseHolder::Now()).error;
  EXPECT_EQ(a.view(LeaseHolder::Now()).limit, kBudget);
  EXPECT_GE(a.view(LeaseHolder::Now()).reconnects, 1u);
}

TEST_F(LeaseHolderTest, AWorkerRestartIsANewInstance) {
  LeaseHolder a(Options("a", worker_->port()));
  a.SetDemand(1, 0);
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).state == LeaseState::kLeased; }));
  const uint64_t first = a.view(LeaseHolder::Now()).instance;
  ASSERT_TRUE(worker_->Stop().ok());
  // Its lease connection is gone: it opens nothing new until it knows
  // what the worker (perhaps a new instance) grants.
  ASSERT_TRUE(Drive({&a}, [&] {
    const LeaseState st = a.view(LeaseHolder::Now()).state;
    return st == LeaseState::kVerify || st == LeaseState::kLapsed;
  }));
  EXPECT_EQ(a.view(LeaseHolder::Now()).limit, 0);
  ASSERT_TRUE(worker_->StartAgain().ok());
  ASSERT_TRUE(Drive({&a}, [&] {
    const LeaseView v = a.view(LeaseHolder::Now());
    return v.instance_changes == 1 && v.state == LeaseState::kLeased;
  })) << a.view(LeaseHolder::Now()).error;
  EXPECT_NE(a.view(LeaseHolder::Now()).instance, first);
}

TEST_F(LeaseHolderTest, WorkersWithoutABudgetOrWithoutConnthrottleAreUnmanaged) {
  std::unique_ptr<LocalServer> plain = StartWorker(false, {});
  ASSERT_NE(plain, nullptr);
  LeaseHolder p(Options("a", plain->port(), /*cap=*/7));
  ASSERT_TRUE(
      Drive({&p}, [&] { return p.view(LeaseHolder::Now()).state == LeaseState::kUnmanaged; }));
  EXPECT_EQ(p.view(LeaseHolder::Now()).limit, 7);

  std::unique_ptr<LocalServer> unbudgeted = StartWorker(true, {});
  ASSERT_NE(unbudgeted, nullptr);
  LeaseHolder u(Options("a", unbudgeted->port(), /*cap=*/7));
  ASSERT_TRUE(
      Drive({&u}, [&] { return u.view(LeaseHolder::Now()).state == LeaseState::kUnmanaged; }));
  EXPECT_EQ(u.view(LeaseHolder::Now()).limit, 7);
  EXPECT_TRUE(u.view(LeaseHolder::Now()).error.empty());
}

TEST_F(LeaseHolderTest, AnUnreachableWorkerIsUnknownAndZeroWhenLeasesAreRequired) {
  std::unique_ptr<LocalServer> gone = StartWorker(false, {});
  ASSERT_NE(gone, nullptr);
  const int port = gone->port();
  ASSERT_TRUE(gone->Stop().ok());
  LeaseHolder a(Options("a", port, 5));
  LeaseHolderOptions required = Options("b", port, 5);
  required.required = true;
  LeaseHolder b(required);
  ASSERT_TRUE(Drive({&a, &b}, [&] {
    return a.view(LeaseHolder::Now()).state == LeaseState::kUnknown &&
           b.view(LeaseHolder::Now()).state == LeaseState::kUnknown;
  }));
  EXPECT_EQ(a.view(LeaseHolder::Now()).limit, 5);
  EXPECT_EQ(b.view(LeaseHolder::Now()).limit, 0);
  EXPECT_FALSE(a.view(LeaseHolder::Now()).error.empty());
}

TEST_F(LeaseHolderTest, ReleaseGivesTheShareBackAtOnce) {
  LeaseHolder a(Options("a", worker_->port()));
  LeaseHolder b(Options("b", worker_->port()));
  a.SetDemand(10, 0);
  ASSERT_TRUE(Drive({&a}, [&] { return a.view(LeaseHolder::Now()).limit == kBudget; }));
  a.Release(5'000 * kMs);
  // b gets all of it at its first request: nothing of a counts any more.
  b.SetDemand(10, 0);
  ASSERT_TRUE(Drive({&b}, [&] { return b.view(LeaseHolder::Now()).state == LeaseState::kLeased; }));
  EXPECT_EQ(b.view(LeaseHolder::Now()).limit, kBudget);
  EXPECT_EQ(b.view(LeaseHolder::Now()).renewals, 1u);
}

}  // namespace
}  // namespace connthrottle::cluster
