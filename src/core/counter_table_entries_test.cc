// CounterTable's entries come and go: a key at zero is unlisted and revived,
// its place reused by other keys; a full table; an entry kept for its waiters.

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

TEST(CounterTableTest, EntryAtZeroIsUnlistedAndRevivedByItsKey) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  auto other = *t->RegisterOwner();
  {
    Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(2));
    EXPECT_EQ(t->Snapshot().size(), 1u);
  }
  // A zombie: not busy, not listed, its place free for any new key.
  EXPECT_TRUE(t->Snapshot().empty());
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.entries_created, 1u);
  EXPECT_EQ(stats.entries_in_use, 0u);
  EXPECT_EQ(stats.acquired, 1u);
  // The key's next acquires revive the same entry: through the cached hint,
  // and through the index for an owner that never saw the key.
  {
    Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(2));
    Slot b = *other->TryAcquire(Key("a"), Limit::AtMost(2));
    EXPECT_EQ(t->ConnectionCount(Key("a")), 2u);
  }
  stats = t->Stats();
  EXPECT_EQ(stats.entries_created, 1u);
  EXPECT_EQ(stats.entries_dropped, 0u);
  EXPECT_EQ(stats.acquired, 3u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableTest, ZombieGivenToAnotherKeyIsNotRevivedByAStaleHint) {
  HeapTable t(TableOptions{1, 3});  // one entry; a third owner record for Audit
  auto owner = *t->RegisterOwner();
  auto other = *t->RegisterOwner();
  owner->TryAcquire(Key("a"), Limit::AtMost(1))->Release();  // owner caches a's entry
  // The only entry is a's zombie: b takes its place.
  Slot b = *other->TryAcquire(Key("b"), Limit::AtMost(1));
  b.Release();  // b's zombie now, in the entry owner's hint names
  Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(1));
  EXPECT_EQ(a.kind(), SlotKind::kConnection);
  EXPECT_EQ(t->ConnectionCount(Key("a")), 1u);
  EXPECT_EQ(t->ConnectionCount(Key("b")), 0u);
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.entries_created, 3u);
  EXPECT_EQ(stats.entries_dropped, 2u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableTest, SmallTableServesEndlesslyManyDistinctKeys) {
  HeapTable t(TableOptions{4, 2});
  auto owner = *t->RegisterOwner();
  Slot pinned = *owner->TryAcquire(Key("pinned"), Limit::AtMost(1));
  for (int i = 0; i < 2000; ++i) {
    std::vector<Slot> slots;
    for (int j = 0; j < 3; ++j) {
      absl::StatusOr<Slot> s =
          owner->TryAcquire(Key(absl::StrCat("k", i, "-", j)), Limit::AtMost(1));
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(s->kind(), SlotKind::kConnection) << "key " << i << " went uncounted";
      slots.push_back(std::move(*s));
    }
  }
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.full_table_events, 0u);
  EXPECT_EQ(stats.entries_created, 6001u);
  // Zombies are dropped when their place is needed: the last three stay.
  EXPECT_EQ(stats.entries_dropped, 5997u);
  EXPECT_EQ(stats.entries_in_use, 1u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableTest, FullTableAdmitsUncountedByDefaultAndCountsTheEvent) {
  HeapTable t(TableOptions{2, 2});
  auto owner = *t->RegisterOwner();
  Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(1));
  Slot b = *owner->TryAcquire(Key("b"), Limit::AtMost(1));
  absl::StatusOr<Slot> c = owner->TryAcquire(Key("c"), Limit::AtMost(1));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->kind(), SlotKind::kUncounted);
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.full_table_events, 1u);
  EXPECT_EQ(stats.uncounted_in_use, 1u);
  c->Release();
  EXPECT_EQ(t->Stats().uncounted_in_use, 0u);
  EXPECT_EQ(t->Stats().full_table_events, 1u);
}

TEST(CounterTableTest, FullTableRefusesUnderRefusePolicy) {
  HeapTable t(TableOptions{1, 2});
  auto owner = *t->RegisterOwner();
  Slot a = *owner->TryAcquire(Key("a"), Limit::AtMost(1));
  AcquireOptions refuse;
  refuse.when_full = FullTablePolicy::kRefuse;
  std::vector<absl::Status> results;
  results.push_back(owner->TryAcquire(Key("b"), Limit::AtMost(1), refuse).status());
  results.push_back(owner->AcquireForced(Key("b"), refuse).status());
  results.push_back(owner->AcquireWaiting(Key("b"), Limit::AtMost(1), Deadline(), refuse).status());
  for (const absl::Status& s : results) {
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(Message(s), HasSubstr("full"));
    EXPECT_TRUE(IsTableFullError(s));
  }
  EXPECT_FALSE(IsTableFullError(owner->TryAcquire(Key("a"), Limit::AtMost(1)).status()));
  EXPECT_EQ(t->Stats().full_table_events, 3u);
}

TEST(CounterTableTest, EntryIsKeptWhileSomeoneWaitsOnIt) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("kept");
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    auto w = *t->RegisterOwner();
    absl::StatusOr<Slot> s = w->AcquireWaiting(
        key, [] { return Limit::AtMost(0); }, Deadline(), [&] { return stop.load(); });
    EXPECT_EQ(s.status().code(), absl::StatusCode::kCancelled);
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  // Busy although it holds no slot; taking and giving back a slot must not
  // drop it from under the waiter.
  EXPECT_EQ(StatsOf(t.table(), key)->connections, 0u);
  owner->AcquireForced(key)->Release();
  EXPECT_EQ(WaitersOf(t.table(), key), 1u);
  stop = true;
  waiter.join();
  EXPECT_FALSE(StatsOf(t.table(), key).has_value());
  EXPECT_EQ(t->Stats().entries_in_use, 0u);
}

}  // namespace
}  // namespace connthrottle::testing
