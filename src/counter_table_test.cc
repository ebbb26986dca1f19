#include "connthrottle/counter_table.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::HeapTable;
using ::connthrottle::testing::Key;

absl::Time Soon() { return absl::Now() + absl::Seconds(30); }

TEST(CounterTableTest, OptionalAcquireStopsAtTheLimit) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("worker-1");
  std::vector<Slot> slots;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Slot> slot = owner->TryAcquire(key, Limit::AtMost(3));
    ASSERT_TRUE(slot.ok()) << slot.status();
    slots.push_back(std::move(*slot));
  }
  absl::StatusOr<Slot> refused = owner->TryAcquire(key, Limit::AtMost(3));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("worker-1:5432/1"));
  EXPECT_EQ(t->ConnectionCount(key), 3u);
  slots.pop_back();
  EXPECT_EQ(t->ConnectionCount(key), 2u);
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(3)).ok());
}

TEST(CounterTableTest, EntryIsDroppedWhenCountReachesZero) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  {
    Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(2));
    EXPECT_EQ(t->Snapshot().size(), 1u);
  }
  EXPECT_TRUE(t->Snapshot().empty());
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.entries_created, 1u);
  EXPECT_EQ(stats.entries_dropped, 1u);
  EXPECT_EQ(stats.entries_in_use, 0u);
  EXPECT_EQ(stats.acquired, 1u);
}

TEST(CounterTableTest, WaiterGetsReleasedSlot) {
  HeapTable t;
  auto a = *t->RegisterOwner();
  auto b = *t->RegisterOwner();
  NodeKey key = Key("w");
  Slot held = *a->TryAcquire(key, Limit::AtMost(1));
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    absl::StatusOr<Slot> s = b->AcquireWaiting(key, Limit::AtMost(1), Soon());
    EXPECT_TRUE(s.ok()) << s.status();
    got = true;
  });
  while (t->Snapshot().empty() || t->Snapshot()[0].waiters == 0) std::this_thread::yield();
  EXPECT_FALSE(got.load());
  held.Release();
  waiter.join();
  EXPECT_TRUE(got.load());
  EXPECT_TRUE(t->Snapshot().empty());
}

}  // namespace
}  // namespace connthrottle
