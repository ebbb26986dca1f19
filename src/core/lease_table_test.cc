// lease_table_test.cc — the worker's lease table alone, on a fake clock:
// the grant rule, the accounting (I1, I2, the global check), expiry and
// ghosts, and a random walk of requests, lost replies, admissions and exits
// audited at every step.

#include "core/lease_table.h"

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace connthrottle {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr int64_t kSecond = 1'000'000'000;

class LeaseTableTest : public ::testing::Test {
 protected:
  void Make(int max_coordinators = 4, int max_backends = 64) {
    const LeaseTable::Options options{max_coordinators, max_backends, 7};
    memory_ = std::make_unique<uint64_t[]>(LeaseTable::BytesFor(options) / 8 + 1);
    table_ = LeaseTable::Create(memory_.get(), options);
  }
  void SetUp() override {
    settings_.budget = 6;
    settings_.unleased_connections = 0;
    settings_.duration_ns = 3 * kSecond;
    Make();
  }

  // Coordinator `id`'s next request, acknowledging its last reply.
  LeaseReply Renew(const std::string& id, int demand, int cap = 10, bool ack = true) {
    uint64_t& seq = seq_[id];
    LeaseRequest request;
    request.coordinator = {id, 1};
    request.seq = ++seq;
    request.acked = acked_[id];  // the last reply read
    request.demand = demand;
    request.cap = cap;
    absl::StatusOr<LeaseReply> reply = table_->Renew(request, settings_, now_);
    EXPECT_TRUE(reply.ok()) << reply.status();
    if (ack) acked_[id] = seq;
    if (audit_) {
      EXPECT_TRUE(table_->Audit(settings_).ok()) << table_->Audit(settings_);
    }
    return reply.ok() ? *reply : LeaseReply{};
  }
  absl::StatusOr<AdmissionTicket> Admit(const std::string& id) {
    return table_->Admit({id, id.empty() ? 0u : 1u}, next_pid_++, settings_, now_);
  }

  std::unique_ptr<uint64_t[]> memory_;
  LeaseTable* table_ = nullptr;
  LeaseSettings settings_;
  int64_t now_ = 100 * kSecond;
  int32_t next_pid_ = 1000;
  bool audit_ = true;  // off while a lowered budget leaves more held than it
  std::map<std::string, uint64_t> seq_;
  std::map<std::string, uint64_t> acked_;
};

TEST(ParseCoordinatorRefTest, IdAndIncarnationOrUnleased) {
  CoordinatorRef ref = ParseCoordinatorRef("coord-a:5432/123456789");
  EXPECT_EQ(ref.id, "coord-a:5432");
  EXPECT_EQ(ref.incarnation, 123456789u);
  for (const char* unleased : {"on", "", "/5", "a/0", "a/x", "a/b/5", "a/-1", "a b/5", "a\\b/5"}) {
    EXPECT_TRUE(ParseCoordinatorRef(unleased).id.empty()) << unleased;
  }
  EXPECT_TRUE(ParseCoordinatorRef(std::string(kMaxCoordinatorId + 1, 'x') + "/1").id.empty());
  EXPECT_FALSE(ParseCoordinatorRef(std::string(kMaxCoordinatorId, 'x') + "/1").id.empty());
}

TEST_F(LeaseTableTest, AGrantBoundsTheCoordinatorsConnections) {
  const LeaseReply reply = Renew("a", /*demand=*/4);
  EXPECT_EQ(reply.instance, 7u);
  EXPECT_EQ(reply.duration_ns, 3 * kSecond);
  // Alone, it gets its demand and the rest as headroom, up to its cap.
  EXPECT_EQ(reply.grant, 6);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Admit("a").ok());
  absl::StatusOr<AdmissionTicket> seventh = Admit("a");
  EXPECT_EQ(seventh.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(seventh.status().message(), HasSubstr("no free slot in its lease"));
  EXPECT_EQ(table_->Figures().refused_lease, 1u);
  EXPECT_TRUE(table_->Audit(settings_).ok());
}

TEST_F(LeaseTableTest, CapLimitsTheGrant) { EXPECT_EQ(Renew("a", 10, /*cap=*/2).grant, 2); }

TEST_F(LeaseTableTest, UnleasedConnectionsAreBoundedByTheirSetting) {
  settings_.unleased_connections = 2;
  ASSERT_TRUE(Admit("").ok());
  ASSERT_TRUE(Admit("").ok());
  absl::StatusOr<AdmissionTicket> third = Admit("");
  EXPECT_THAT(third.status().message(), HasSubstr("without a lease"));
  // Their part is held from the leases: a coordinator gets the rest.
  EXPECT_EQ(Renew("a", 10).grant, 4);
}

TEST_F(LeaseTableTest, GlobalCheckAloneWhenUnleasedIsOff) {
  settings_.unleased_connections = -1;
  std::vector<AdmissionTicket> tickets;
  for (int i = 0; i < 6; ++i) tickets.push_back(*Admit(""));
  absl::StatusOr<AdmissionTicket> seventh = Admit("");
  EXPECT_THAT(seventh.status().message(), HasSubstr("budget of 6"));
  table_->Gone(tickets[0]);
  table_->Gone(tickets[0]);  // idempotent
  EXPECT_TRUE(Admit("").ok());
  EXPECT_EQ(table_->Figures().live, 6);
}

TEST_F(LeaseTableTest, TwoBusyCoordinatorsConvergeToEqualShares) {
  EXPECT_EQ(Renew("a", 10).grant, 6);
  // b comes: a holds all of it, so b gets nothing yet and a is asked to
  // renew early.
  LeaseReply b = Renew("b", 10);
  EXPECT_EQ(b.grant, 0);
  EXPECT_THAT(b.notify, ElementsAre("a"));
  EXPECT_TRUE(b.others_want_more);
  // a renews: its new grant is its fair share, but its old one counts until
  // it acknowledges the new one (the next request).
  EXPECT_EQ(Renew("a", 10).grant, 3);
  EXPECT_EQ(Renew("b", 10).grant, 0);
  EXPECT_EQ(Renew("a", 10).grant, 3);
  EXPECT_EQ(Renew("b", 10).grant, 3);
  EXPECT_EQ(Renew("a", 10).grant, 3);
}

TEST_F(LeaseTableTest, UnequalBudgetSplitsFloorAndCeiling) {
  settings_.budget = 7;
  Renew("a", 10);
  Renew("b", 10);
  for (int i = 0; i < 3; ++i) {
    Renew("a", 10);
    Renew("b", 10);
  }
  std::vector<int> grants;
  for (const LeaseRow& row : table_->Rows(now_)) grants.push_back(row.pending);
  EXPECT_THAT(grants, UnorderedElementsAre(3, 4));
}

TEST_F(LeaseTableTest, AnIdleCoordinatorsShareGoesToTheBusyOne) {
  Renew("a", 10);
  Renew("b", 10);
  for (int i = 0; i < 3; ++i) {
    Renew("a", 10);
    Renew("b", 10);
  }
  // b goes idle: its demand falls to 0 and it keeps a foothold of one.
  // Its second request acknowledges the smaller grant, so its old one
  // stops counting; then a gets the rest.
  EXPECT_EQ(Renew("b", 0).grant, 1);
  EXPECT_EQ(Renew("b", 0).grant, 1);
  EXPECT_EQ(Renew("a", 10).grant, 5);
  // b comes back: its share returns as a acknowledges a smaller grant.
  EXPECT_EQ(Renew("b", 10).grant, 1);
  EXPECT_EQ(Renew("a", 10).grant, 3);
  EXPECT_EQ(Renew("a", 10).grant, 3);
  EXPECT_EQ(Renew("b", 10).grant, 3);
}

TEST_F(LeaseTableTest, GrantsEndAndGhostsAreReturnedOnce) {
  EXPECT_EQ(Renew("a", 2, /*cap=*/2).grant, 2);
  ASSERT_TRUE(Admit("a").ok());
  ASSERT_TRUE(Admit("a").ok());
  EXPECT_THAT(table_->Expire(now_), IsEmpty());
  EXPECT_EQ(table_->NextExpiry(), now_ + 3 * kSecond);
  now_ += 3 * kSecond;
  EXPECT_THAT(table_->Expire(now_), ElementsAre(1000, 1001));
  EXPECT_THAT(table_->Expire(now_), IsEmpty());
  // No lease any more: a new connection of a is unleased (0 allowed here).
  EXPECT_THAT(Admit("a").status().message(), HasSubstr("without a lease"));
  // The ghosts still count until they are gone.
  EXPECT_EQ(table_->Figures().live, 2);
  EXPECT_EQ(table_->Figures().reserved, 2);
  EXPECT_TRUE(table_->Audit(settings_).ok());
}

TEST_F(LeaseTableTest, GhostsHoldTheirPlaceUntilGone) {
  Renew("a", 6);
  std::vector<AdmissionTicket> a;
  for (int i = 0; i < 6; ++i) a.push_back(*Admit("a"));
  now_ += 3 * kSecond;
  EXPECT_EQ(table_->Expire(now_).size(), 6u);
  EXPECT_EQ(Renew("b", 6).grant, 0);  // a's ghosts fill the budget
  for (const AdmissionTicket& t : a) table_->Gone(t);
  EXPECT_EQ(Renew("b", 6).grant, 6);
  EXPECT_EQ(table_->Figures().coordinators, 1);  // a's record is freed
}

TEST_F(LeaseTableTest, ALostReplyIsReplacedAndTheHeldGrantStillCounts) {
  EXPECT_EQ(Renew("a", 6).grant, 6);  // read: a holds 6
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(Admit("a").ok());
  EXPECT_EQ(Renew("b", 6).grant, 0);  // b wants its share; a holds it all
  // a's next two replies (its fair share, 3) are lost: a still uses 6, so
  // the worker still counts 6 for it, whatever it granted since.
  Renew("a", 6, 10, /*ack=*/false);
  Renew("a", 6, 10, /*ack=*/false);
  EXPECT_EQ(Renew("b", 6).grant, 0);
  // a reads one at last and acknowledges it: then b gets the rest.
  Renew("a", 6);
  Renew("a", 6);
  EXPECT_EQ(Renew("b", 6).grant, 3);
}

// A lease given back, or the budget turned off, while the coordinator
// still has connections: they count as unleased until they close, and are
// no ghosts to end.
TEST_F(LeaseTableTest, ReleasedOrUnbudgetedConnectionsAreNoGhosts) {
  for (const bool release : {true, false}) {
    Make();
    settings_.budget = 6;
    seq_.clear();
    acked_.clear();
    Renew("a", 6);
    std::vector<AdmissionTicket> open;
    for (int i = 0; i < 3; ++i) open.push_back(*Admit("a"));
    LeaseRequest request;
    request.coordinator = {"a", 1};
    request.seq = ++seq_["a"];
    request.acked = acked_["a"];
    request.cap = 10;
    request.release = release;
    if (!release) settings_.budget = -1;
    ASSERT_TRUE(table_->Renew(request, settings_, now_).ok());
    EXPECT_EQ(table_->Figures().coordinators, 0) << release;
    EXPECT_EQ(table_->Figures().unleased_live, 3) << release;
    now_ += 10 * kSecond;
    EXPECT_THAT(table_->Expire(now_), IsEmpty()) << release;
    settings_.budget = 6;
    EXPECT_TRUE(table_->Audit(settings_).ok()) << table_->Audit(settings_);
    for (const AdmissionTicket& t : open) table_->Gone(t);
    EXPECT_EQ(table_->Figures().live, 0);
  }
}

TEST_F(LeaseTableTest, ReleaseGivesEverythingBack) {
  Renew("a", 6);
  LeaseRequest request;
  request.coordinator = {"a", 1};
  request.seq = ++seq_["a"];
  request.cap = 10;
  request.release = true;
  ASSERT_TRUE(table_->Renew(request, settings_, now_).ok());
  EXPECT_EQ(table_->Figures().coordinators, 0);
  EXPECT_EQ(Renew("b", 6).grant, 6);
}

TEST_F(LeaseTableTest, BadRequestsAreRefusedWithNothingChanged) {
  LeaseRequest request;
  request.coordinator = {"a", 1};
  request.seq = 1;
  request.cap = 0;
  EXPECT_EQ(table_->Renew(request, settings_, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.cap = 5;
  request.coordinator = {"a/b", 1};
  EXPECT_EQ(table_->Renew(request, settings_, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.coordinator = {"a", 0};
  EXPECT_EQ(table_->Renew(request, settings_, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.coordinator = {"a", 1};
  ASSERT_TRUE(table_->Renew(request, settings_, now_).ok());
  // Not newer than the last: refused (a delayed duplicate).
  EXPECT_EQ(table_->Renew(request, settings_, now_).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table_->Figures().coordinators, 1);
}

TEST_F(LeaseTableTest, RecordsFullIsResourceExhausted) {
  Make(/*max_coordinators=*/2);
  Renew("a", 1);
  Renew("b", 1);
  LeaseRequest request;
  request.coordinator = {"c", 1};
  request.seq = 1;
  request.cap = 5;
  absl::StatusOr<LeaseReply> reply = table_->Renew(request, settings_, now_);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(reply.status().message(), HasSubstr("max_coordinators"));
}

TEST_F(LeaseTableTest, BudgetOffLeasesNothing) {
  settings_.budget = -1;
  const LeaseReply reply = Renew("a", 3, /*cap=*/8);
  EXPECT_TRUE(reply.budget_off);
  EXPECT_EQ(reply.grant, 8);
  EXPECT_EQ(table_->Figures().coordinators, 0);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Admit("a").ok());  // counted, not bounded
  EXPECT_EQ(table_->Figures().live, 20);
}

TEST_F(LeaseTableTest, ALoweredBudgetAdmitsNothingUntilBelowIt) {
  Renew("a", 6);
  std::vector<AdmissionTicket> a;
  for (int i = 0; i < 6; ++i) a.push_back(*Admit("a"));
  settings_.budget = 3;
  audit_ = false;
  EXPECT_FALSE(Admit("a").ok());
  EXPECT_EQ(Renew("b", 3).grant, 0);
  for (int i = 0; i < 4; ++i) table_->Gone(a[i]);
  EXPECT_TRUE(Admit("a").ok());  // 3 of a's old lease of 6, within the new budget
  EXPECT_THAT(Admit("a").status().message(), HasSubstr("budget of 3"));
}

// A random walk: two to four coordinators renew (some replies lost), open
// and close connections within what they hold, misbehave (open beyond it),
// die (their grants run out), and the clock moves. After every step the
// table's own audit holds, and Σ live never exceeds the budget.
TEST_F(LeaseTableTest, RandomWalkKeepsTheBound) {
  for (int unleased : {0, 1, -1}) {
    settings_.unleased_connections = unleased;
    Make(4, 64);
    std::mt19937 rng(20261207 + unleased);
    struct Coordinator {
      std::string id;
      uint64_t seq = 0, acked = 0, incarnation = 1;
      std::vector<AdmissionTicket> open;
    };
    std::vector<Coordinator> cs(3);
    cs[0].id = "a";
    cs[1].id = "b";
    cs[2].id = "c";
    std::vector<AdmissionTicket> unleased_open;
    int max_live = 0;
    for (int step = 0; step < 20000; ++step) {
      Coordinator& c = cs[rng() % cs.size()];
      switch (rng() % 7) {
        case 0: {  // renew, reply read or lost
          LeaseRequest request;
          request.coordinator = {c.id, c.incarnation};
          request.seq = ++c.seq;
          request.acked = c.acked;
          request.demand = static_cast<int>(rng() % 8);
          request.cap = 1 + static_cast<int>(rng() % 8);
          request.open = static_cast<int>(c.open.size());
          absl::StatusOr<LeaseReply> reply = table_->Renew(request, settings_, now_);
          if (reply.ok() && rng() % 4 != 0) c.acked = request.seq;
          break;
        }
        case 1:
        case 2: {  // a connection (also beyond what the coordinator holds)
          absl::StatusOr<AdmissionTicket> t =
              table_->Admit({c.id, c.incarnation}, next_pid_++, settings_, now_);
          if (t.ok()) c.open.push_back(*t);
          break;
        }
        case 3:
          if (!c.open.empty()) {
            table_->Gone(c.open.back());
            c.open.pop_back();
          }
          break;
        case 4:
          now_ += static_cast<int64_t>(rng() % 1500) * 1'000'000;
          table_->Expire(now_);
          break;
        case 5: {  // an unleased connection comes or goes
          if (rng() % 2 == 0) {
            absl::StatusOr<AdmissionTicket> t = table_->Admit({}, next_pid_++, settings_, now_);
            if (t.ok()) unleased_open.push_back(*t);
          } else if (!unleased_open.empty()) {
            table_->Gone(unleased_open.back());
            unleased_open.pop_back();
          }
          break;
        }
        case 6:
          if (rng() % 50 == 0) {  // crash-restart: a new incarnation, old backends linger
            ++c.incarnation;
            c.seq = c.acked = 0;
            for (const AdmissionTicket& t : c.open) table_->Gone(t);
            c.open.clear();
          }
          break;
      }
      const absl::Status audit = table_->Audit(settings_);
      ASSERT_TRUE(audit.ok()) << "step " << step << " unleased " << unleased << ": " << audit;
      ASSERT_LE(table_->Figures().live, settings_.budget);
      max_live = std::max(max_live, table_->Figures().live);
    }
    // The walk reached the budget: the bound was tested, not idle.
    EXPECT_EQ(max_live, settings_.budget) << "unleased " << unleased;
  }
}

}  // namespace
}  // namespace connthrottle
