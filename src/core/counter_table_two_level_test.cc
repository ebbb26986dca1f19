// The optional per-database bound (limit.h, owner.h "Two levels"): every
// acquire under it holds a slot of the key's database counter and one of its
// node counter, and each level keeps its limit, its waiters' wake-ups, its
// entries dropped at zero and its bookkeeping (Audit).

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

constexpr CounterLevel kDb = CounterLevel::kDatabase;

// Node limit 3, at most 2 per database.
Limit NodeThreeDbTwo() { return Limit::AtMost(3).WithPerDatabase(2); }

uint32_t DbCount(CounterTable& t, const NodeKey& key) { return t.ConnectionCount(key, kDb); }

TEST(CounterTableTwoLevelTest, EachLevelKeepsItsLimit) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  NodeKey b = Key("w", 5432, 2);
  Slot a1 = *owner->TryAcquire(a, NodeThreeDbTwo());
  Slot a2 = *owner->TryAcquire(a, NodeThreeDbTwo());
  EXPECT_TRUE(a1.two_level());
  // Database 1 is at its bound although the node has room.
  absl::StatusOr<Slot> a3 = owner->TryAcquire(a, NodeThreeDbTwo());
  ASSERT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(a3.status()), HasSubstr("database 1 on node w:5432"));
  EXPECT_THAT(Message(a3.status()), HasSubstr("per database"));
  Slot b1 = *owner->TryAcquire(b, NodeThreeDbTwo());
  // Database 2 has room, the node has none: refused at the node, and the
  // database slot taken on the way is given back.
  absl::StatusOr<Slot> b2 = owner->TryAcquire(b, NodeThreeDbTwo());
  ASSERT_EQ(b2.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(b2.status()), HasSubstr("for node w:5432"));
  EXPECT_EQ(t->ConnectionCount(a), 3u);
  EXPECT_EQ(DbCount(t.table(), a), 2u);
  EXPECT_EQ(DbCount(t.table(), b), 1u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, ReleaseGivesBackBothLevelsAndDropsTheirEntries) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  {
    Slot s = *owner->TryAcquire(a, NodeThreeDbTwo());
    AcquireOptions reservation;
    reservation.reservation = true;
    Slot r = *owner->AcquireWaiting(a, NodeThreeDbTwo(), Deadline(), reservation);
    Slot f = *owner->AcquireForced(a, NodeThreeDbTwo());
    ASSERT_TRUE(f.two_level());
    // Forced goes above the database's bound, as it does above the node's.
    EXPECT_EQ(DbCount(t.table(), a), 3u);
    KeyStats db = *t->Lookup(a, kDb);
    EXPECT_EQ(db.forced, 1u);
    EXPECT_EQ(db.reserved, 1u);
    ASSERT_TRUE(db.database.has_value());
    EXPECT_EQ(*db.database, 1u);
    EXPECT_FALSE(t->Lookup(a)->database.has_value());
    EXPECT_EQ(t->Snapshot().size(), 2u);
    EXPECT_TRUE(t->Audit().ok());
  }
  EXPECT_EQ(t->ConnectionCount(a), 0u);
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_EQ(t->Stats().entries_in_use, 0u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, WithoutTheBoundNoDatabaseCounterExists) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  Slot s = *owner->TryAcquire(a, Limit::AtMost(3));
  Slot w = *owner->AcquireWaiting(a, Limit::AtMost(3), Deadline());
  EXPECT_FALSE(s.two_level());
  EXPECT_EQ(t->Snapshot().size(), 1u);
  EXPECT_FALSE(t->Lookup(a, kDb).has_value());
}

// A waiter held up by its database's bound is woken by a release of that
// database; one held up by the node (holding its database slot) by a release
// on the node from another database.
TEST(CounterTableTwoLevelTest, AWaitIsWokenByAReleaseAtItsLevel) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto db_waiter = *t->RegisterOwner();
  auto node_waiter = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  NodeKey b = Key("w", 5432, 2);
  Slot a1 = *holder->TryAcquire(a, NodeThreeDbTwo());
  Slot a2 = *holder->TryAcquire(a, NodeThreeDbTwo());
  Slot b1 = *holder->TryAcquire(b, NodeThreeDbTwo());
  std::atomic<bool> a_done{false}, b_done{false};
  absl::StatusOr<Slot> a_got, b_got;
  std::thread ta([&] {
    a_got = db_waiter->AcquireWaiting(a, NodeThreeDbTwo(), WaiterDeadline(), NoPolling());
    a_done = true;
  });
  std::thread tb([&] {
    b_got = node_waiter->AcquireWaiting(b, NodeThreeDbTwo(), WaiterDeadline(), NoPolling());
    b_done = true;
  });
  // a waits at its database's counter; b holds database 2's second slot and
  // waits at the node's.
  AwaitCondition([&] {
    std::optional<KeyStats> da = t->Lookup(a, kDb);
    std::optional<KeyStats> n = t->Lookup(a);
    return da && da->waiters == 1 && n && n->waiters == 1;
  });
  EXPECT_EQ(DbCount(t.table(), b), 2u);
  EXPECT_FALSE(a_done.load());
  // Database 2's release frees a node slot: only b can use it (a is still at
  // database 1's bound).
  b1.Release();
  AwaitCondition([&] { return b_done.load(); });
  ASSERT_TRUE(b_got.ok()) << b_got.status();
  EXPECT_FALSE(a_done.load());
  // Database 1's release frees a database and a node slot: a takes both.
  a1.Release();
  AwaitCondition([&] { return a_done.load(); });
  ASSERT_TRUE(a_got.ok()) << a_got.status();
  ta.join();
  tb.join();
  EXPECT_EQ(t->ConnectionCount(a), 3u);
  EXPECT_EQ(DbCount(t.table(), a), 2u);
  EXPECT_EQ(DbCount(t.table(), b), 1u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, AWaitThatGivesUpAtTheNodeGivesBackItsDatabaseSlot) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  NodeKey b = Key("w", 5432, 2);
  const Limit limit = Limit::AtMost(1).WithPerDatabase(1);
  Slot held = *holder->TryAcquire(b, limit);
  absl::StatusOr<Slot> s = waiter->AcquireWaiting(a, limit, absl::Now() + absl::Milliseconds(30));
  ASSERT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Message(s.status()), HasSubstr("node w:5432 became free"));
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_EQ(waiter->SlotsHeld(), 0u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, ParkingChecksBothLevels) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  const Limit limit = Limit::AtMost(10).WithPerDatabase(2);
  Slot s1 = *owner->TryAcquire(a, limit);
  Slot s2 = *owner->TryAcquire(a, limit);
  // Parking leaves at least one of the database's two slots unparked.
  EXPECT_TRUE(owner->Park(s1, limit));
  EXPECT_FALSE(owner->Park(s2, limit));
  EXPECT_EQ(t->Lookup(a, kDb)->parked, 1u);
  EXPECT_EQ(t->Lookup(a)->parked, 1u);
  s1.Release();
  EXPECT_EQ(t->Lookup(a, kDb)->parked, 0u);
  EXPECT_EQ(t->Lookup(a)->parked, 0u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, HoldersListTheNodeRowThenItsDatabases) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot s = *owner->TryAcquire(Key("w", 5432, 7), NodeThreeDbTwo());
  std::vector<Holding> rows = t->Holders();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_FALSE(rows[0].database.has_value());
  ASSERT_TRUE(rows[1].database.has_value());
  EXPECT_EQ(*rows[1].database, 7u);
  EXPECT_EQ(rows[0].connections, 1u);
  EXPECT_EQ(rows[1].connections, 1u);
}

// A slot taken while the bound was off is counted for its database once the
// bound admits it, and given back at both levels; refused, it stays as it was.
TEST(CounterTableTwoLevelTest, ASlotTakenWithoutTheBoundCanBeCountedForItsDatabase) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  const Limit limit = Limit::AtMost(3).WithPerDatabase(1);
  Slot old1 = *owner->TryAcquire(a, Limit::AtMost(3));
  Slot old2 = *owner->TryAcquire(a, Limit::AtMost(3));
  EXPECT_FALSE(owner->CountForDatabase(old1, a, Limit::AtMost(3)));  // no bound
  EXPECT_TRUE(owner->CountForDatabase(old1, a, limit));
  EXPECT_TRUE(old1.two_level());
  EXPECT_EQ(DbCount(t.table(), a), 1u);
  EXPECT_FALSE(owner->CountForDatabase(old2, a, limit));  // the database is at its bound
  EXPECT_FALSE(old2.two_level());
  EXPECT_TRUE(old2.held());
  old1.Release();
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_EQ(t->ConnectionCount(a), 1u);
  EXPECT_TRUE(t->Audit().ok());
}

// A slot handed to another database of the node keeps its node slot and is
// counted for the new database, or refused when that one is at its bound.
TEST(CounterTableTwoLevelTest, ASlotMovesToAnotherDatabaseWithinItsBound) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  NodeKey b = Key("w", 5432, 2);
  const Limit limit = Limit::AtMost(3).WithPerDatabase(1);
  Slot s = *owner->TryAcquire(a, limit);
  EXPECT_TRUE(owner->MoveToDatabase(s, b, limit));
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_EQ(DbCount(t.table(), b), 1u);
  EXPECT_EQ(t->ConnectionCount(a), 1u);
  Slot other = *owner->TryAcquire(a, limit);
  EXPECT_FALSE(owner->MoveToDatabase(other, b, limit));  // b is at its bound
  EXPECT_EQ(DbCount(t.table(), a), 1u);
  EXPECT_TRUE(other.two_level());
  s.Release();
  other.Release();
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTwoLevelTest, ReleaseAllGivesBackBothLevels) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  Slot s = *owner->TryAcquire(a, NodeThreeDbTwo());
  EXPECT_EQ(owner->ReleaseAll(), 2u);  // one slot at each level
  EXPECT_FALSE(s.held());
  s.Release();  // a no-op now
  EXPECT_EQ(t->ConnectionCount(a), 0u);
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_TRUE(t->Audit().ok());
}

// Under a full table, each level follows the caller's policy: refused, or let
// through uncounted at that level.
TEST(CounterTableTwoLevelTest, AFullTableAppliesThePolicyAtEachLevel) {
  HeapTable t(TableOptions{.capacity = 1});
  auto owner = *t->RegisterOwner();
  NodeKey a = Key("w", 5432, 1);
  AcquireOptions refuse;
  refuse.when_full = FullTablePolicy::kRefuse;
  // The database's counter takes the only entry; the node's finds none.
  absl::StatusOr<Slot> refused = owner->TryAcquire(a, NodeThreeDbTwo(), refuse);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(IsTableFullError(refused.status()));
  EXPECT_EQ(owner->SlotsHeld(), 0u);
  Slot admitted = *owner->TryAcquire(a, NodeThreeDbTwo());
  EXPECT_EQ(admitted.kind(), SlotKind::kUncounted);
  EXPECT_EQ(t->Stats().uncounted_in_use, 1u);
  EXPECT_EQ(DbCount(t.table(), a), 1u);
  admitted.Release();
  EXPECT_EQ(t->Stats().uncounted_in_use, 0u);
  EXPECT_EQ(DbCount(t.table(), a), 0u);
  EXPECT_GE(t->Stats().full_table_events, 2u);
  EXPECT_TRUE(t->Audit().ok());
}

// Threads of two databases take optional and waiting slots at random; a
// monitor checks both levels' limits at every sample, and everything is
// given back at the end.
TEST(CounterTableTwoLevelTest, ConcurrentAcquiresNeverExceedEitherLevel) {
  HeapTable t;
  const Limit limit = Limit::AtMost(3).WithPerDatabase(2);
  NodeKey keys[2] = {Key("w", 5432, 1), Key("w", 5432, 2)};
  std::atomic<bool> stop{false};
  std::atomic<bool> violated{false};
  std::thread monitor([&] {
    while (!stop.load()) {
      if (t->ConnectionCount(keys[0]) > 3 || DbCount(t.table(), keys[0]) > 2 ||
          DbCount(t.table(), keys[1]) > 2) {
        violated = true;
      }
    }
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      auto owner = *t->RegisterOwner();
      std::mt19937 rng(i);
      for (int n = 0; n < 2000; ++n) {
        const NodeKey& key = keys[rng() % 2];
        absl::StatusOr<Slot> s = rng() % 2 ? owner->TryAcquire(key, limit)
                                           : owner->AcquireWaiting(key, limit, Deadline());
        if (s.ok() && s->kind() != SlotKind::kForced) {
          if (t->ConnectionCount(key) > 3 || DbCount(t.table(), key) > 2) violated = true;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  stop = true;
  monitor.join();
  EXPECT_FALSE(violated.load());
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_TRUE(t->Audit().ok());
}

}  // namespace
}  // namespace connthrottle::testing
