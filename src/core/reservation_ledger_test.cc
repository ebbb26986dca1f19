#include "connthrottle/reservation_ledger.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::HeapTable;
using ::connthrottle::testing::Key;
using ::testing::HasSubstr;

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

ReservationKey RK(std::string_view host, int port = 5432, uint32_t database = 1,
                  uint32_t user = 10) {
  return ReservationKey{Key(host, port, database), user};
}

Limit Generous(const NodeKey&) { return Limit::AtMost(10); }
bool NeverInterrupted() { return false; }
bool NotConnected(const ReservationKey&) { return false; }

// ReserveAll with a generous limit, no deadline to speak of, no interrupts
// and no existing connections.
absl::Status ReserveAll(ReservationLedger& ledger, std::vector<ReservationKey> targets) {
  return ledger.ReserveAll(std::move(targets), Generous, Soon(), NeverInterrupted, NotConnected);
}

std::optional<KeyStats> Find(const std::vector<KeyStats>& stats, const NodeKey& key) {
  for (const KeyStats& s : stats) {
    if (s.host == key.host() && s.port == key.port()) return s;
  }
  return std::nullopt;
}

// Polls `condition` until it holds or 30 seconds pass.
template <typename Condition>
bool Eventually(Condition condition) {
  absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

class ReservationLedgerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Owner> NewOwner() {
    absl::StatusOr<std::unique_ptr<Owner>> owner = table_->RegisterOwner();
    EXPECT_TRUE(owner.ok()) << owner.status();
    return std::move(*owner);
  }
  uint32_t Count(std::string_view host, int port = 5432, uint32_t database = 1) {
    return table_->ConnectionCount(Key(host, port, database));
  }

  HeapTable table_;
  std::unique_ptr<Owner> owner_ = NewOwner();
  std::unique_ptr<Owner> other_ = NewOwner();
};

// ---- ReserveAll: what it takes ----------------------------------------------

TEST_F(ReservationLedgerTest, ReserveAllTakesOneSlotPerTarget) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b"), RK("c")}).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 1u);
  EXPECT_EQ(Count("c"), 1u);
  EXPECT_TRUE(ledger.HasUnused(RK("a")));
  EXPECT_TRUE(ledger.HasUnused(RK("b")));
  EXPECT_TRUE(ledger.HasUnused(RK("c")));
  EXPECT_EQ(owner_->SlotsHeld(), 3u);
}

TEST_F(ReservationLedgerTest, ReserveAllCollapsesDuplicateTargets) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b"), RK("a"), RK("a"), RK("b")}).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 1u);
  EXPECT_EQ(ledger.List().size(), 2u);
}

// A node's databases and users share its counter: a call naming a node twice
// would wait for its second slot holding the first, so it is refused before
// anything is taken.
TEST_F(ReservationLedgerTest, ReserveAllRefusesANodeNamedTwiceTakingNothing) {
  ReservationLedger ledger(*owner_);
  for (const std::vector<ReservationKey>& twice :
       {std::vector<ReservationKey>{RK("b"), RK("a", 5432, 1, 10), RK("a", 5432, 1, 11)},
        std::vector<ReservationKey>{RK("b"), RK("a", 5432, 2), RK("a", 5432, 1)}}) {
    absl::Status status = ReserveAll(ledger, twice);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("node a:5432 is named twice"));
    EXPECT_EQ(Count("a"), 0u);
    EXPECT_EQ(Count("b"), 0u);
    EXPECT_TRUE(ledger.List().empty());
  }
}

// Holding node a's slot (database 1), a later call for database 2 of it does
// not wait for the slot the ledger holds: refused at once, nothing kept.
TEST_F(ReservationLedgerTest, AReservedNodeIsNotWaitedForAgain) {
  ReservationLedger ledger(*owner_);
  auto one = [](const NodeKey&) { return Limit::AtMost(1); };
  ASSERT_TRUE(
      ledger.ReserveAll({RK("a", 5432, 1)}, one, Soon(), NeverInterrupted, NotConnected).ok());
  // (Were it waited for, this would end in DeadlineExceeded and count a wait.)
  absl::Status s =
      ledger.ReserveAll({RK("b"), RK("a", 5432, 2)}, one, absl::Now() + absl::Seconds(2),
                        NeverInterrupted, NotConnected);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 0u);
  EXPECT_EQ(table_->Stats().waited, 0u);
}

TEST_F(ReservationLedgerTest, ReserveAllReservesSeparatelyPerPort) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a", 5432, 1), RK("a", 5433, 1)}).ok());
  EXPECT_EQ(Count("a", 5432, 1), 1u);
  EXPECT_EQ(Count("a", 5433, 1), 1u);
}

// Another database of a reserved node, in a later call: the node's counter
// holds both.
TEST_F(ReservationLedgerTest, ReservationsOfTwoDatabasesOfANodeCountOnTheNode) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a", 5432, 1)}).ok());
  ASSERT_TRUE(ReserveAll(ledger, {RK("a", 5432, 2)}).ok());
  EXPECT_EQ(Count("a", 5432, 1), 2u);
  EXPECT_EQ(Count("a", 5432, 2), 2u);
  EXPECT_EQ(ledger.List().size(), 2u);
}

TEST_F(ReservationLedgerTest, ReserveAllOfNothingSucceeds) {
  ReservationLedger ledger(*owner_);
  EXPECT_TRUE(ReserveAll(ledger, {}).ok());
  EXPECT_TRUE(ledger.List().empty());
}

TEST_F(ReservationLedgerTest, ReserveAllAsksForNodesInGlobalOrder) {
  std::vector<ReservationKey> expected = {
      RK("alpha", 1, 9),  RK("alpha", 5432, 2), RK("alpha", 6432, 1), RK("beta", 5432, 1),
      RK("gamma", 80, 1), RK("gamma1", 1, 1),   RK("zeta", 5432, 1),
  };
  std::vector<ReservationKey> shuffled = expected;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(12345));
  ASSERT_NE(shuffled, expected);

  std::vector<NodeKey> asked;
  auto limit = [&](const NodeKey& node) {
    // The limit may be consulted more than once per node; record each node once.
    if (asked.empty() || asked.back() != node) asked.push_back(node);
    return Limit::AtMost(10);
  };
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ledger.ReserveAll(shuffled, limit, Soon(), NeverInterrupted, NotConnected).ok());
  std::vector<NodeKey> expected_nodes;
  for (const ReservationKey& k : expected) expected_nodes.push_back(k.node);
  EXPECT_EQ(asked, expected_nodes);
}

TEST_F(ReservationLedgerTest, ReserveAllSkipsTargetsTheSessionIsConnectedTo) {
  ReservationLedger ledger(*owner_);
  auto connected_to_b = [](const ReservationKey& k) { return k.node.host() == "b"; };
  ASSERT_TRUE(ledger
                  .ReserveAll({RK("a"), RK("b"), RK("c")}, Generous, Soon(), NeverInterrupted,
                              connected_to_b)
                  .ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 0u);
  EXPECT_EQ(Count("c"), 1u);
  EXPECT_FALSE(ledger.HasUnused(RK("b")));
  EXPECT_EQ(ledger.List().size(), 2u);
}

TEST_F(ReservationLedgerTest, SecondReserveAllForAReservedTargetTakesNothingMore) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b")}).ok());
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b"), RK("c")}).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 1u);
  EXPECT_EQ(Count("c"), 1u);
  EXPECT_EQ(owner_->SlotsHeld(), 3u);
}

TEST_F(ReservationLedgerTest, ReserveAllDoesNotReReserveAConsumedTarget) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  ASSERT_TRUE(slot.has_value());
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_FALSE(ledger.HasUnused(RK("a")));
}

TEST_F(ReservationLedgerTest, ReserveAllAfterEndTransactionReservesAgain) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  ledger.EndTransaction();
  ASSERT_EQ(Count("a"), 0u);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_TRUE(ledger.HasUnused(RK("a")));
}

TEST_F(ReservationLedgerTest, ReserveAllWaitsForASlotToFreeHoldingEarlierNodesOnly) {
  Slot held = *other_->TryAcquire(Key("b"), Limit::AtMost(1));
  auto limit = [](const NodeKey& node) {
    return node.host() == "b" ? Limit::AtMost(1) : Limit::AtMost(10);
  };
  ReservationLedger ledger(*owner_);
  absl::Status result = absl::UnknownError("not run");
  std::thread session([&] {
    result = ledger.ReserveAll({RK("c"), RK("b"), RK("a")}, limit, Soon(), NeverInterrupted,
                               NotConnected);
  });
  ASSERT_TRUE(Eventually([&] {
    std::optional<KeyStats> b = Find(table_->Snapshot(), Key("b"));
    return b.has_value() && b->waiters == 1;
  }));
  // Waiting for b, the session holds a (before b in the global order), not c.
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("c"), 0u);
  held.Release();
  session.join();
  ASSERT_TRUE(result.ok()) << result;
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 1u);
  EXPECT_EQ(Count("c"), 1u);
}

// ---- ReserveAll: all or nothing ------------------------------------------

TEST_F(ReservationLedgerTest, DeadlineOnOneNodeGivesBackEverySlotOfTheCall) {
  Slot held = *other_->TryAcquire(Key("b"), Limit::AtMost(1));
  auto limit = [](const NodeKey& node) {
    return node.host() == "b" ? Limit::AtMost(1) : Limit::AtMost(10);
  };
  ReservationLedger ledger(*owner_);
  absl::Status s =
      ledger.ReserveAll({RK("c"), RK("b"), RK("a")}, limit, absl::Now() + absl::Milliseconds(50),
                        NeverInterrupted, NotConnected);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("b:5432/1"));
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_EQ(Count("b"), 1u);  // the other owner's
  EXPECT_EQ(Count("c"), 0u);
  EXPECT_TRUE(ledger.List().empty());
  EXPECT_EQ(owner_->SlotsHeld(), 0u);
}

TEST_F(ReservationLedgerTest, InterruptOnOneNodeGivesBackEverySlotOfTheCall) {
  Slot held = *other_->TryAcquire(Key("b"), Limit::AtMost(1));
  auto limit = [](const NodeKey& node) {
    return node.host() == "b" ? Limit::AtMost(1) : Limit::AtMost(10);
  };
  ReservationLedger ledger(*owner_);
  absl::Status s = ledger.ReserveAll(
      {RK("c"), RK("b"), RK("a")}, limit, absl::InfiniteFuture(), [] { return true; },
      NotConnected);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("b:5432/1"));
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_EQ(Count("b"), 1u);
  EXPECT_EQ(Count("c"), 0u);
  EXPECT_TRUE(ledger.List().empty());
  EXPECT_EQ(owner_->SlotsHeld(), 0u);
}

TEST_F(ReservationLedgerTest, RefusalByANeverWaitingLimitGivesBackEverySlotOfTheCall) {
  PoolLimits never_connect_to_self;
  never_connect_to_self.local_shared_pool_size = kNeverConnectToSelf;
  auto limit = [&](const NodeKey& node) {
    return node.host() == "local" ? Limit::ForLocal(never_connect_to_self, 0) : Limit::AtMost(10);
  };
  ReservationLedger ledger(*owner_);
  absl::Status s = ledger.ReserveAll({RK("zulu"), RK("local"), RK("alpha")}, limit, Soon(),
                                     NeverInterrupted, NotConnected);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("local:5432/1"));
  EXPECT_EQ(Count("alpha"), 0u);
  EXPECT_EQ(Count("local"), 0u);
  EXPECT_EQ(Count("zulu"), 0u);
  EXPECT_TRUE(ledger.List().empty());
}

TEST_F(ReservationLedgerTest, FailedReserveAllKeepsReservationsOfEarlierCalls) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("c")}).ok());
  Slot held = *other_->TryAcquire(Key("d"), Limit::AtMost(1));
  auto limit = [](const NodeKey& node) {
    return node.host() == "d" ? Limit::AtMost(1) : Limit::AtMost(10);
  };
  absl::Status s =
      ledger.ReserveAll({RK("a"), RK("b"), RK("c"), RK("d")}, limit,
                        absl::Now() + absl::Milliseconds(20), NeverInterrupted, NotConnected);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 0u);  // taken by the failed call, given back
  EXPECT_EQ(Count("c"), 1u);
  EXPECT_TRUE(ledger.HasUnused(RK("a")));
  EXPECT_FALSE(ledger.HasUnused(RK("b")));
  EXPECT_TRUE(ledger.HasUnused(RK("c")));
}

TEST_F(ReservationLedgerTest, FailedReserveAllLeavesNoWaiterBehind) {
  Slot held = *other_->TryAcquire(Key("b"), Limit::AtMost(1));
  ReservationLedger ledger(*owner_);
  absl::Status s = ledger.ReserveAll(
      {RK("b")}, [](const NodeKey&) { return Limit::AtMost(1); },
      absl::Now() + absl::Milliseconds(20), NeverInterrupted, NotConnected);
  ASSERT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  std::optional<KeyStats> b = Find(table_->Snapshot(), Key("b"));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->waiters, 0u);
  EXPECT_EQ(b->connections, 1u);
}

// ---- Consume ---------------------------------------------------------------

TEST_F(ReservationLedgerTest, ConsumeReturnsTheReservedSlotOnce) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  ASSERT_TRUE(slot.has_value());
  EXPECT_TRUE(slot->held());
  EXPECT_EQ(slot->kind(), SlotKind::kReservation);
  EXPECT_FALSE(ledger.Consume(RK("a")).has_value());
}

TEST_F(ReservationLedgerTest, ConsumeDoesNotChangeTheConnectionCount) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  ASSERT_EQ(Count("a"), 1u);
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  ASSERT_TRUE(slot.has_value());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(table_->Stats().acquired, 1u);
}

TEST_F(ReservationLedgerTest, ConsumeWithoutAReservationReturnsNothing) {
  ReservationLedger ledger(*owner_);
  EXPECT_FALSE(ledger.Consume(RK("a")).has_value());
  ASSERT_TRUE(ReserveAll(ledger, {RK("a", 5432, 1, 10)}).ok());
  EXPECT_FALSE(ledger.Consume(RK("a", 5432, 1, 11)).has_value());  // another user
  EXPECT_FALSE(ledger.Consume(RK("a", 5432, 2, 10)).has_value());  // another database
  EXPECT_EQ(Count("a"), 1u);
}

TEST_F(ReservationLedgerTest, ConsumedReservationIsNoLongerUnused) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  EXPECT_FALSE(ledger.HasUnused(RK("a")));
}

TEST_F(ReservationLedgerTest, ReleasingAConsumedSlotGivesItBack) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  ASSERT_TRUE(slot.has_value());
  slot->Release();
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_TRUE(table_->Snapshot().empty());
}

// ---- EndTransaction and List -----------------------------------------------

TEST_F(ReservationLedgerTest, EndTransactionGivesBackUnusedReservations) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b"), RK("c")}).ok());
  EXPECT_EQ(ledger.EndTransaction(), 3);
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_EQ(Count("b"), 0u);
  EXPECT_EQ(Count("c"), 0u);
  EXPECT_TRUE(ledger.List().empty());
  EXPECT_EQ(owner_->SlotsHeld(), 0u);
}

TEST_F(ReservationLedgerTest, ConsumedSlotStaysCountedAfterEndTransactionUntilReleased) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  ASSERT_TRUE(slot.has_value());
  EXPECT_EQ(ledger.EndTransaction(), 1);  // only b's
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(Count("b"), 0u);
  EXPECT_TRUE(ledger.List().empty());
  slot.reset();
  EXPECT_EQ(Count("a"), 0u);
}

TEST_F(ReservationLedgerTest, EndTransactionWithNothingReservedGivesBackNothing) {
  ReservationLedger ledger(*owner_);
  EXPECT_EQ(ledger.EndTransaction(), 0);
}

TEST_F(ReservationLedgerTest, DestroyingTheLedgerGivesBackUnusedReservations) {
  std::optional<Slot> consumed;
  {
    ReservationLedger ledger(*owner_);
    ASSERT_TRUE(ReserveAll(ledger, {RK("a"), RK("b")}).ok());
    consumed = ledger.Consume(RK("b"));
  }
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_EQ(Count("b"), 1u);
}

TEST_F(ReservationLedgerTest, ListShowsUsedAndUnusedInGlobalOrder) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("c"), RK("a"), RK("b", 5432, 1, 2)}).ok());
  ASSERT_TRUE(ReserveAll(ledger, {RK("b", 5432, 1, 1)}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("b", 5432, 1, 2));
  std::vector<ReservationLedger::Reservation> list = ledger.List();
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list[0].key, RK("a"));
  EXPECT_FALSE(list[0].used);
  EXPECT_EQ(list[1].key, RK("b", 5432, 1, 1));
  EXPECT_FALSE(list[1].used);
  EXPECT_EQ(list[2].key, RK("b", 5432, 1, 2));
  EXPECT_TRUE(list[2].used);
  EXPECT_EQ(list[3].key, RK("c"));
  EXPECT_FALSE(list[3].used);
}

// ---- TryReserve -------------------------------------------------------------

TEST_F(ReservationLedgerTest, TryReserveReservesAFreeSlot) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(1)).ok());
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_TRUE(ledger.HasUnused(RK("a")));
}

TEST_F(ReservationLedgerTest, TryReserveRefusesAtTheLimitWithoutWaiting) {
  Slot held = *other_->TryAcquire(Key("a"), Limit::AtMost(1));
  ReservationLedger ledger(*owner_);
  // A wait here would never end: there is no deadline and nobody releases.
  absl::Status s = ledger.TryReserve(RK("a"), Limit::AtMost(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("node a:5432: "));
  EXPECT_EQ(Count("a"), 1u);
  EXPECT_EQ(table_->Stats().waited, 0u);
  EXPECT_FALSE(ledger.HasUnused(RK("a")));
  EXPECT_TRUE(ledger.List().empty());
}

TEST_F(ReservationLedgerTest, TryReserveOfAReservedTargetTakesNothingMore) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(5)).ok());
  ASSERT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(5)).ok());
  EXPECT_EQ(Count("a"), 1u);
}

TEST_F(ReservationLedgerTest, TryReserveOfAReservedTargetSucceedsEvenAtTheLimit) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(1)).ok());
  EXPECT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(1)).ok());
  EXPECT_EQ(Count("a"), 1u);
}

TEST_F(ReservationLedgerTest, TryReserveSkipsATargetTheSessionIsConnectedTo) {
  ReservationLedger ledger(*owner_);
  EXPECT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(0), /*has_connection=*/true).ok());
  EXPECT_EQ(Count("a"), 0u);
  EXPECT_FALSE(ledger.HasUnused(RK("a")));
}

// ---- Reservations in the shared statistics ------------------------------------

TEST_F(ReservationLedgerTest, ReservationsShowUpAsReservedInTheSnapshot) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  ASSERT_TRUE(ReserveAll(ledger, {RK("a", 5432, 2, 11)}).ok());
  Slot plain = *other_->TryAcquire(Key("a"), Limit::AtMost(10));
  std::vector<KeyStats> snapshot = table_->Snapshot();
  std::optional<KeyStats> a = Find(snapshot, Key("a"));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->connections, 3u);
  EXPECT_EQ(a->reserved, 2u);
  EXPECT_EQ(a->forced, 0u);
}

TEST_F(ReservationLedgerTest, ConsumedReservationStaysReservedInTheSnapshot) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  std::optional<Slot> slot = ledger.Consume(RK("a"));
  std::optional<KeyStats> a = Find(table_->Snapshot(), Key("a"));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->reserved, 1u);
  slot.reset();
  EXPECT_FALSE(Find(table_->Snapshot(), Key("a")).has_value());
}

TEST_F(ReservationLedgerTest, TryReserveShowsUpAsReservedInTheSnapshot) {
  ReservationLedger ledger(*owner_);
  ASSERT_TRUE(ledger.TryReserve(RK("a"), Limit::AtMost(1)).ok());
  std::optional<KeyStats> a = Find(table_->Snapshot(), Key("a"));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->reserved, 1u);
}

// ---- A full table -----------------------------------------------------------

TEST(ReservationLedgerFullTableTest, ReserveAllIsRefusedWhenTheTableIsFullUnderKRefuse) {
  HeapTable table(TableOptions{.capacity = 1, .max_owners = 4});
  std::unique_ptr<Owner> owner = *table->RegisterOwner();
  std::unique_ptr<Owner> other = *table->RegisterOwner();
  Slot busy = *other->TryAcquire(Key("x"), Limit::AtMost(10));
  ReservationLedger ledger(*owner);
  AcquireOptions refuse;
  refuse.when_full = FullTablePolicy::kRefuse;
  absl::Status s =
      ledger.ReserveAll({RK("a")}, Generous, Soon(), NeverInterrupted, NotConnected, refuse);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(IsTableFullError(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("a:5432/1"));
  EXPECT_TRUE(ledger.List().empty());
  EXPECT_EQ(table->Stats().full_table_events, 1u);

  s = ledger.TryReserve(RK("a"), Limit::AtMost(10), /*has_connection=*/false, refuse);
  EXPECT_TRUE(IsTableFullError(s)) << s;
  EXPECT_TRUE(ledger.List().empty());
  EXPECT_EQ(table->Stats().uncounted_in_use, 0u);
}

TEST(ReservationLedgerFullTableTest, ReserveAllAdmitsUncountedWhenTheTableIsFullByDefault) {
  HeapTable table(TableOptions{.capacity = 1, .max_owners = 4});
  std::unique_ptr<Owner> owner = *table->RegisterOwner();
  std::unique_ptr<Owner> other = *table->RegisterOwner();
  Slot busy = *other->TryAcquire(Key("x"), Limit::AtMost(10));
  ReservationLedger ledger(*owner);
  ASSERT_TRUE(ReserveAll(ledger, {RK("a")}).ok());
  EXPECT_TRUE(ledger.HasUnused(RK("a")));
  EXPECT_EQ(table->Stats().uncounted_in_use, 1u);
  EXPECT_EQ(ledger.EndTransaction(), 1);
  EXPECT_EQ(table->Stats().uncounted_in_use, 0u);
}

}  // namespace
}  // namespace connthrottle
