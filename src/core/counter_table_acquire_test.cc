// CounterTable's acquires of every kind (optional, forced, unlimited,
// reservation, local): what each counts and where each stops; the databases
// of a node sharing its counter.

#include <thread>
#include <utility>
#include <vector>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

TEST(CounterTableTest, OptionalAcquireStopsAtTheLimit) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("worker-1");
  std::vector<Slot> slots;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Slot> slot = owner->TryAcquire(key, Limit::AtMost(3));
    ASSERT_TRUE(slot.ok()) << slot.status();
    EXPECT_EQ(slot->kind(), SlotKind::kConnection);
    slots.push_back(std::move(*slot));
  }
  absl::StatusOr<Slot> refused = owner->TryAcquire(key, Limit::AtMost(3));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(refused.status()), HasSubstr("node worker-1:5432: "));
  EXPECT_THAT(Message(refused.status()), HasSubstr("3 in use"));
  EXPECT_EQ(t->ConnectionCount(key), 3u);
  slots.pop_back();
  EXPECT_EQ(t->ConnectionCount(key), 2u);
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(3)).ok());
  EXPECT_EQ(StatsOf(t.table(), key)->refused, 1u);
}

TEST(CounterTableTest, NodesAreCountedSeparately) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot a = *owner->TryAcquire(Key("h", 5432, 1), Limit::AtMost(1));
  Slot b = *owner->TryAcquire(Key("h", 5433, 1), Limit::AtMost(1));
  Slot c = *owner->TryAcquire(Key("h2", 5432, 1), Limit::AtMost(1));
  EXPECT_FALSE(owner->TryAcquire(Key("h", 5432, 1), Limit::AtMost(1)).ok());
  EXPECT_EQ(t->Snapshot().size(), 3u);
}

// A worker has one max_connections: the databases of a node share its
// counter and its limit, through the hot path (cached entries) and the
// slow one, and its entry is dropped when the last of them gives back.
TEST(CounterTableTest, DatabasesOfANodeShareItsCounter) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  auto other = *t->RegisterOwner();
  const NodeKey db1 = Key("h", 5432, 1), db2 = Key("h", 5432, 2), db3 = Key("h", 5432, 3);
  absl::StatusOr<Slot> a = owner->TryAcquire(db1, Limit::AtMost(3));
  absl::StatusOr<Slot> b = other->TryAcquire(db2, Limit::AtMost(3));
  absl::StatusOr<Slot> c = owner->TryAcquire(db2, Limit::AtMost(3));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(t->ConnectionCount(db3), 3u);
  absl::StatusOr<Slot> refused = other->TryAcquire(db3, Limit::AtMost(3));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("node h:5432: 3 in use"));
  // A waiting acquire of another database is woken by the release of one.
  absl::StatusOr<Slot> waited;
  std::thread waiter([&] {
    waited = other->AcquireWaiting(db3, Limit::AtMost(3), WaiterDeadline(), NoPolling());
  });
  AwaitCondition([&] { return t->LookupCounts(db1)->waiters == 1; });
  a->Release();
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  ASSERT_EQ(t->Snapshot().size(), 1u);
  EXPECT_EQ(t->Snapshot()[0].connections, 3u);
  std::vector<Holding> holders = t->Holders();
  ASSERT_EQ(holders.size(), 2u);
  EXPECT_EQ(holders[0].connections + holders[1].connections, 3u);
  EXPECT_TRUE(t->Audit().ok());
  b->Release();
  c->Release();
  waited->Release();
  EXPECT_FALSE(t->Lookup(db1).has_value());
  EXPECT_EQ(t->Stats().entries_created, 1u);
  EXPECT_TRUE(t->Audit().ok());
}

TEST(CounterTableTest, ZeroLimitRefusesWithoutCreatingAnEntry) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  EXPECT_EQ(owner->TryAcquire(Key("z"), Limit::AtMost(0)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t->Stats().entries_created, 0u);
  EXPECT_EQ(t->Stats().refused, 1u);
}

TEST(CounterTableTest, ForcedAcquireExceedsTheLimitAndIsCountedSeparately) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("f");
  Slot normal = *owner->TryAcquire(key, Limit::AtMost(1));
  Slot forced1 = *owner->AcquireForced(key);
  Slot forced2 = *owner->AcquireForced(key);
  EXPECT_EQ(forced1.kind(), SlotKind::kForced);
  KeyStats k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.connections, 3u);
  EXPECT_EQ(k.forced, 2u);
  EXPECT_EQ(k.forced_total, 2u);
  // Forced connections are real connections: they use up the limit.
  EXPECT_FALSE(owner->TryAcquire(key, Limit::AtMost(2)).ok());
  forced1.Release();
  EXPECT_EQ(StatsOf(t.table(), key)->forced, 1u);
  EXPECT_EQ(t->Stats().forced_total, 2u);
}

TEST(CounterTableTest, UnlimitedStillCountsSoThatEveryReleaseMatches) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("u");
  std::vector<Slot> slots;
  for (int i = 0; i < 5; ++i) slots.push_back(*owner->TryAcquire(key, Limit::Unlimited()));
  EXPECT_EQ(t->ConnectionCount(key), 5u);
  // Throttling turned on while they are open: the count is still exact.
  EXPECT_FALSE(owner->TryAcquire(key, Limit::AtMost(5)).ok());
  slots.resize(2);
  EXPECT_EQ(t->ConnectionCount(key), 2u);
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(3)).ok());
  slots.clear();
  EXPECT_EQ(t->ConnectionCount(key), 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableTest, LimitIsReadAtDecisionTime) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("d");
  std::vector<Slot> slots;
  for (int i = 0; i < 3; ++i) slots.push_back(*owner->TryAcquire(key, Limit::AtMost(5)));
  EXPECT_FALSE(owner->TryAcquire(key, Limit::AtMost(3)).ok());  // lowered
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(4)).ok());   // raised again
}

TEST(CounterTableTest, ReservationSlotsAreCountedAsReserved) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("r");
  AcquireOptions reservation;
  reservation.reservation = true;
  Slot r = *owner->TryAcquire(key, Limit::AtMost(2), reservation);
  EXPECT_EQ(r.kind(), SlotKind::kReservation);
  KeyStats k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.connections, 1u);
  EXPECT_EQ(k.reserved, 1u);
  r.Release();
  EXPECT_FALSE(StatsOf(t.table(), key).has_value());
}

TEST(CounterTableTest, LocalLimitNeverWaitsAndHonoursNeverConnectToSelf) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey self = Key("localhost", 5432);
  PoolLimits never;
  never.local_shared_pool_size = kNeverConnectToSelf;
  // A waiting acquire under a local limit returns at once, even without a
  // deadline.
  absl::StatusOr<Slot> s =
      owner->AcquireWaiting(self, Limit::ForLocal(never, 0), absl::InfiniteFuture());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  PoolLimits two;
  two.local_shared_pool_size = 2;
  Slot a = *owner->AcquireWaiting(self, Limit::ForLocal(two, 0), absl::InfiniteFuture());
  Slot b = *owner->TryAcquire(self, Limit::ForLocal(two, 0));
  EXPECT_EQ(
      owner->AcquireWaiting(self, Limit::ForLocal(two, 0), absl::InfiniteFuture()).status().code(),
      absl::StatusCode::kResourceExhausted);
  b.Release();
  // Too many active client backends refuse a local connection too.
  EXPECT_FALSE(owner->TryAcquire(self, Limit::ForLocal(two, 2)).ok());
  EXPECT_TRUE(owner->TryAcquire(self, Limit::ForLocal(two, 1)).ok());
}

}  // namespace
}  // namespace connthrottle::testing
