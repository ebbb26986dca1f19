// CounterTable's parking of idle cached connections: at most limit - 1 slots
// park, none while the key has waiters, and the parked state follows the slot.

#include <atomic>
#include <optional>
#include <thread>
#include <utility>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

uint32_t ParkedOf(CounterTable& table, const NodeKey& key) {
  std::optional<KeyStats> k = StatsOf(table, key);
  return k.has_value() ? k->parked : 0;
}

// Idle caches never hold all of a key's slots: with limit n, at most n - 1
// slots park, so the n-th is always there for a session that needs one.
TEST(CounterTableParkTest, AtMostLimitMinusOneSlotsPark) {
  HeapTable t;
  auto a = *t->RegisterOwner();
  auto b = *t->RegisterOwner();
  NodeKey key = Key("park");
  const Limit limit = Limit::AtMost(3);
  Slot a1 = *a->TryAcquire(key, limit);
  Slot b1 = *b->TryAcquire(key, limit);
  Slot b2 = *b->TryAcquire(key, limit);
  EXPECT_TRUE(a->Park(a1, limit));
  EXPECT_TRUE(a->Park(a1, limit)) << "parking twice is a no-op";
  EXPECT_TRUE(b->Park(b1, limit));
  EXPECT_FALSE(b->Park(b2, limit)) << "the third of three slots must stay unparked";
  EXPECT_TRUE(a1.parked());
  EXPECT_FALSE(b2.parked());
  EXPECT_EQ(ParkedOf(t.table(), key), 2u);
  // Unparking (taking the connection out of the cache) makes room again.
  a->Unpark(a1);
  EXPECT_FALSE(a1.parked());
  EXPECT_TRUE(b->Park(b2, limit));
  EXPECT_EQ(ParkedOf(t.table(), key), 2u);
  // Releasing a parked slot unparks it.
  b1.Release();
  EXPECT_EQ(ParkedOf(t.table(), key), 1u);
  b2.Release();
  a1.Release();
  EXPECT_FALSE(StatsOf(t.table(), key).has_value());
}

TEST(CounterTableParkTest, NoParkingWhileTheKeyHasWaiters) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("wanted");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  std::atomic<bool> stop{false};
  std::thread wait([&] {
    (void)waiter->AcquireWaiting(
        key, [] { return Limit::AtMost(1); }, Deadline(), [&] { return stop.load(); });
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  EXPECT_FALSE(holder->Park(held, Limit::Unlimited())) << "someone waits for this slot";
  stop = true;
  wait.join();
  EXPECT_TRUE(holder->Park(held, Limit::Unlimited()));
  EXPECT_EQ(ParkedOf(t.table(), key), 1u);
}

TEST(CounterTableParkTest, LimitOneNeverParks) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot s = *owner->TryAcquire(Key("one"), Limit::AtMost(1));
  EXPECT_FALSE(owner->Park(s, Limit::AtMost(1)));
  EXPECT_EQ(ParkedOf(t.table(), Key("one")), 0u);
}

TEST(CounterTableParkTest, ReleaseAllUncountsParkedSlots) {
  HeapTable t;
  auto a = *t->RegisterOwner();
  auto keeper = *t->RegisterOwner();
  NodeKey key = Key("gone");
  const Limit limit = Limit::AtMost(10);
  Slot keep = *keeper->TryAcquire(key, limit);  // keeps the entry alive
  Slot s1 = *a->TryAcquire(key, limit);
  Slot s2 = *a->TryAcquire(key, limit);
  ASSERT_TRUE(a->Park(s1, limit));
  ASSERT_TRUE(a->Park(s2, limit));
  EXPECT_EQ(ParkedOf(t.table(), key), 2u);
  EXPECT_EQ(a->ReleaseAll(), 2u);
  EXPECT_EQ(ParkedOf(t.table(), key), 0u);
  s1.Release();  // void after ReleaseAll: touches nothing
  s2 = Slot();
  EXPECT_EQ(ParkedOf(t.table(), key), 0u);
}

TEST(CounterTableParkTest, ParkedStateMovesWithTheSlot) {
  HeapTable t;
  auto a = *t->RegisterOwner();
  NodeKey key = Key("moved");
  const Limit limit = Limit::AtMost(10);
  Slot s = *a->TryAcquire(key, limit);
  ASSERT_TRUE(a->Park(s, limit));
  Slot moved = std::move(s);
  EXPECT_FALSE(s.parked());
  EXPECT_TRUE(moved.parked());
  s.Release();  // the moved-from Slot gives back nothing and unparks nothing
  EXPECT_EQ(ParkedOf(t.table(), key), 1u);
  Slot other = *a->TryAcquire(key, limit);
  other = std::move(moved);  // releases `other` (unparked), takes over the parked one
  EXPECT_EQ(ParkedOf(t.table(), key), 1u);
  EXPECT_EQ(t->ConnectionCount(key), 1u);
  other = Slot();  // gives back the parked one
  EXPECT_FALSE(StatsOf(t.table(), key).has_value());
}

// An uncounted slot (full table) parks without counting anything.
TEST(CounterTableParkTest, UncountedSlotsParkWithoutCounting) {
  HeapTable t(TableOptions{.capacity = 1, .max_owners = 4});
  auto a = *t->RegisterOwner();
  Slot busy = *a->TryAcquire(Key("x"), Limit::AtMost(5));
  Slot uncounted = *a->TryAcquire(Key("y"), Limit::AtMost(5));
  ASSERT_EQ(uncounted.kind(), SlotKind::kUncounted);
  EXPECT_TRUE(a->Park(uncounted, Limit::AtMost(1)));
  EXPECT_EQ(ParkedOf(t.table(), Key("x")), 0u);
  uncounted.Release();
  EXPECT_EQ(t->Stats().uncounted_in_use, 0u);
}

}  // namespace
}  // namespace connthrottle::testing
