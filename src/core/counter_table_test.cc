#include "connthrottle/counter_table.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "connthrottle/owner.h"
#include "core/internal/layout.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::HeapTable;
using ::connthrottle::testing::Key;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;

// Long enough that a test relying on a wake-up fails loudly rather than being
// rescued by a timeout; short enough to end a broken run.
absl::Time Deadline() { return absl::Now() + absl::Seconds(30); }

// Polling so rare that only a real wake-up can end a wait before its
// deadline: a lost wake-up fails the test with DeadlineExceeded.
AcquireOptions NoPolling() {
  AcquireOptions options;
  options.poll_interval = absl::Hours(1);
  return options;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// Waiters in wake-up tests sleep until this deadline unless woken.
absl::Time WaiterDeadline() { return absl::Now() + absl::Seconds(60); }

// Waits (without sleeping blindly) until `pred` holds; fails after `bound`.
// For wake-ups the bound is 10 s, well below WaiterDeadline(): a lost wake-up
// leaves the waiter asleep and fails the test instead of being rescued when
// the waiter's deadline passes (a waiter still takes a slot it finds free
// then). This bounds liveness, not speed; speed is in the benchmarks.
template <typename Pred>
void AwaitCondition(Pred pred, absl::Duration bound = absl::Seconds(30)) {
  absl::Time give_up = absl::Now() + bound;
  while (!pred()) {
    ASSERT_LT(absl::Now(), give_up) << "condition never became true (lost wake-up?)";
    std::this_thread::yield();
  }
}

// The key's row of Snapshot(), which Lookup must agree with.
std::optional<KeyStats> SnapshotRow(CounterTable& table, const NodeKey& key) {
  for (KeyStats& k : table.Snapshot()) {
    if (k.host == key.host() && k.port == key.port() && k.database == key.database()) return k;
  }
  return std::nullopt;
}

std::optional<KeyStats> StatsOf(CounterTable& table, const NodeKey& key) {
  return table.Lookup(key);
}

uint32_t WaitersOf(CounterTable& table, const NodeKey& key) {
  std::optional<KeyStats> k = StatsOf(table, key);
  return k ? k->waiters : 0;
}

// ---- layout -----------------------------------------------------------------

TEST(CounterTableLookupTest, FindsABusyKeysEntryAndNothingOnceItIsDropped) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  const NodeKey key = Key("looked-up"), other = Key("other");
  EXPECT_FALSE(t->Lookup(key).has_value());
  absl::StatusOr<Slot> a = owner->TryAcquire(key, Limit::AtMost(4));
  absl::StatusOr<Slot> b = owner->TryAcquire(other, Limit::AtMost(4));
  absl::StatusOr<Slot> c = owner->TryAcquire(key, Limit::AtMost(4));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::optional<KeyStats> found = t->Lookup(key);
  std::optional<KeyStats> row = SnapshotRow(t.table(), key);
  ASSERT_TRUE(found.has_value());
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(found->host, "looked-up");
  EXPECT_EQ(found->connections, 2u);
  EXPECT_EQ(found->connections, row->connections);
  EXPECT_EQ(found->acquired, row->acquired);
  // The counts alone: the same counts, no cumulative figures.
  std::optional<KeyStats> counts = t->LookupCounts(key);
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->host, "looked-up");
  EXPECT_EQ(counts->connections, 2u);
  EXPECT_EQ(counts->waiters, 0u);
  EXPECT_EQ(counts->acquired, 0u);
  a->Release();
  c->Release();
  EXPECT_FALSE(t->Lookup(key).has_value()) << "a key at zero is not busy";
  EXPECT_FALSE(t->LookupCounts(key).has_value());
  EXPECT_EQ(t->Lookup(other)->connections, 1u);
}

TEST(CounterTableLayoutTest, RequiredBytesRejectsOutOfRangeOptions) {
  for (TableOptions bad : {TableOptions{0, 1}, TableOptions{(1u << 24) + 1, 1}, TableOptions{16, 0},
                           TableOptions{16, (1u << 16) + 1}}) {
    absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes(bad);
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
  }
  absl::StatusOr<size_t> absurd =
      CounterTable::RequiredBytes(TableOptions{1u << 24, (1u << 16) - 1});
  EXPECT_EQ(absurd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(absurd.status()), HasSubstr("bytes"));
}

TEST(CounterTableLayoutTest, InitializeRejectsBadRegions) {
  TableOptions options{8, 2};
  size_t bytes = *CounterTable::RequiredBytes(options);
  void* region = std::aligned_alloc(64, bytes + 64);
  EXPECT_EQ(CounterTable::Initialize(nullptr, bytes, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      Message(CounterTable::Initialize(static_cast<char*>(region) + 8, bytes, options).status()),
      HasSubstr("aligned"));
  EXPECT_THAT(Message(CounterTable::Initialize(region, bytes - 1, options).status()),
              HasSubstr("needs"));
  std::free(region);
}

TEST(CounterTableLayoutTest, AttachRefusesRegionWithoutTable) {
  alignas(64) static char zeros[8192] = {};
  absl::StatusOr<CounterTable> t = CounterTable::Attach(zeros, sizeof(zeros));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(t.status()), HasSubstr("no connthrottle counter table"));
}

TEST(CounterTableLayoutTest, AttachRefusesOtherLayoutVersion) {
  HeapTable t(TableOptions{8, 2});
  auto* header = static_cast<internal::TableHeader*>(t.region());
  header->layout_version = internal::kLayoutVersion + 1;
  absl::StatusOr<CounterTable> attached = CounterTable::Attach(t.region(), t.size());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(attached.status()), HasSubstr("layout version"));
  header->layout_version = internal::kLayoutVersion;
}

TEST(CounterTableLayoutTest, AttachRefusesRegionSmallerThanTable) {
  HeapTable t(TableOptions{8, 2});
  absl::StatusOr<CounterTable> attached = CounterTable::Attach(t.region(), t.size() - 64);
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CounterTableLayoutTest, AttachedViewSharesCounters) {
  HeapTable t(TableOptions{8, 4});
  CounterTable other = *CounterTable::Attach(t.region(), t.size());
  auto owner = *other.RegisterOwner();
  Slot slot = *owner->TryAcquire(Key("shared"), Limit::AtMost(5));
  EXPECT_EQ(t->ConnectionCount(Key("shared")), 1u);
  EXPECT_EQ(other.options().capacity, 8u);
}

// ---- optional, forced, unlimited -------------------------------------------

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
  EXPECT_THAT(Message(refused.status()), HasSubstr("worker-1:5432/1"));
  EXPECT_THAT(Message(refused.status()), HasSubstr("3 in use"));
  EXPECT_EQ(t->ConnectionCount(key), 3u);
  slots.pop_back();
  EXPECT_EQ(t->ConnectionCount(key), 2u);
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(3)).ok());
  EXPECT_EQ(StatsOf(t.table(), key)->refused, 1u);
}

TEST(CounterTableTest, KeysAreCountedSeparately) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot a = *owner->TryAcquire(Key("h", 5432, 1), Limit::AtMost(1));
  Slot b = *owner->TryAcquire(Key("h", 5433, 1), Limit::AtMost(1));
  Slot c = *owner->TryAcquire(Key("h", 5432, 2), Limit::AtMost(1));
  EXPECT_FALSE(owner->TryAcquire(Key("h", 5432, 1), Limit::AtMost(1)).ok());
  EXPECT_EQ(t->Snapshot().size(), 3u);
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

// ---- entries come and go ----------------------------------------------------

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

// ---- waiting ------------------------------------------------------------------

TEST(CounterTableWaitTest, DeadlinePassesWithDeadlineExceeded) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("slow");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  absl::StatusOr<Slot> s =
      waiter->AcquireWaiting(key, Limit::AtMost(1), absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Message(s.status()), HasSubstr("slow:5432/1"));
  KeyStats k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.waiters, 0u);
  EXPECT_EQ(k.waited, 1u);
  EXPECT_EQ(k.refused, 1u);
  EXPECT_GE(k.wait_time, absl::Milliseconds(40));
}

TEST(CounterTableWaitTest, PastDeadlineStillTakesAFreeSlot) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  EXPECT_TRUE(owner->AcquireWaiting(Key("free"), Limit::AtMost(1), absl::InfinitePast()).ok());
}

// ---- parking (idle cached connections) ------------------------------------

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

// Holders() names, per owner, what it holds of each kind and what it waits for.
TEST(CounterTableWaitTest, HoldersShowWhoHoldsAndWhoWaits) {
  HeapTable t;
  auto a = *t->RegisterOwner();
  auto b = *t->RegisterOwner();
  NodeKey key = Key("held");
  Slot one = *a->TryAcquire(key, Limit::AtMost(3));
  Slot forced = *a->AcquireForced(key);
  AcquireOptions reservation;
  reservation.reservation = true;
  Slot reserved = *a->TryAcquire(key, Limit::AtMost(3), reservation);
  Slot other = *b->TryAcquire(Key("other"), Limit::AtMost(3));
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    (void)b->AcquireWaiting(
        key, [] { return Limit::AtMost(3); }, Deadline(), [&] { return stop.load(); });
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  std::vector<Holding> rows = t->Holders();
  stop = true;
  waiter.join();
  ASSERT_EQ(rows.size(), 3u);
  // Ordered by key, then pid: "held" first, both owners are this process.
  EXPECT_EQ(rows[0].host, "held");
  EXPECT_EQ(rows[0].pid, getpid());
  const Holding& holder = rows[0].connections > 0 ? rows[0] : rows[1];
  const Holding& queued = rows[0].connections > 0 ? rows[1] : rows[0];
  EXPECT_EQ(holder.connections, 3u);
  EXPECT_EQ(holder.forced, 1u);
  EXPECT_EQ(holder.reserved, 1u);
  EXPECT_FALSE(holder.waiting);
  EXPECT_EQ(queued.connections, 0u);
  EXPECT_TRUE(queued.waiting);
  EXPECT_EQ(rows[2].host, "other");
  EXPECT_EQ(rows[2].connections, 1u);
  one.Release();
  forced.Release();
  reserved.Release();
  other.Release();
  EXPECT_TRUE(t->Holders().empty());
}

TEST(CounterTableWaitTest, InterruptEndsTheWaitWithCancelled) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("cancel");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  std::atomic<bool> interrupt{false};
  std::thread cancel([&] {
    AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
    interrupt = true;
  });
  absl::StatusOr<Slot> s = waiter->AcquireWaiting(
      key, [] { return Limit::AtMost(1); }, Deadline(), [&] { return interrupt.load(); });
  cancel.join();
  EXPECT_EQ(s.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(WaitersOf(t.table(), key), 0u);
  EXPECT_EQ(t->ConnectionCount(key), 1u);
}

AcquireOptions Resuming(absl::Time began) {
  AcquireOptions options;
  options.wait_began = began;
  return options;
}

// A caller that handles an interrupt and resumes (PostgreSQL's config reload)
// passes wait_began: one wait, one refusal, the whole wait's time.
TEST(CounterTableWaitTest, ResumedWaitIsCountedOnce) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("resumed");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  const absl::Time began = absl::Now();
  std::atomic<bool> interrupt{false};
  std::thread cancel([&] {
    AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
    interrupt = true;
  });
  absl::StatusOr<Slot> s = waiter->AcquireWaiting(
      key, [] { return Limit::AtMost(1); }, Deadline(), [&] { return interrupt.load(); });
  cancel.join();
  ASSERT_EQ(s.status().code(), absl::StatusCode::kCancelled);
  KeyStats k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.waited, 1u);
  EXPECT_EQ(k.refused, 0u);  // not yet: the caller may resume
  EXPECT_EQ(k.wait_time, absl::ZeroDuration());

  const absl::Time deadline = began + absl::Milliseconds(60);
  s = waiter->AcquireWaiting(
      key, [] { return Limit::AtMost(1); }, deadline, [] { return false; }, Resuming(began));
  ASSERT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded);
  k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.waited, 1u);
  EXPECT_EQ(k.refused, 1u);
  EXPECT_GE(k.wait_time, absl::Milliseconds(60));
  // The message covers the whole wait, not the resumed part only.
  EXPECT_THAT(Message(s.status()), ContainsRegex("within (6[0-9]|[7-9][0-9]|[0-9]{3,})"));

  // Resumed and granted: the wait time is counted, the wait is not again.
  // (A second slot keeps the entry, and so its statistics, alive.)
  Slot keep = *holder->TryAcquire(key, Limit::AtMost(2));
  held.Release();
  EXPECT_TRUE(waiter
                  ->AcquireWaiting(
                      key, [] { return Limit::AtMost(2); }, Deadline(), [] { return false; },
                      Resuming(began))
                  .ok());
  k = *StatsOf(t.table(), key);
  EXPECT_EQ(k.waited, 1u);
  EXPECT_GE(k.wait_time, absl::Milliseconds(120));
}

TEST(CounterTableWaitTest, ReleasedSlotWakesTheWaiterWithoutPolling) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("wake");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  std::atomic<bool> granted{false};
  std::thread wait([&] {
    absl::StatusOr<Slot> s =
        waiter->AcquireWaiting(key, Limit::AtMost(1), WaiterDeadline(), NoPolling());
    EXPECT_TRUE(s.ok()) << s.status();
    granted = true;
    AwaitCondition([&] { return StatsOf(t.table(), key)->wakeups == 1; });
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  held.Release();
  AwaitCondition([&] { return granted.load(); }, absl::Seconds(30));
  wait.join();
}

// A waiter that polls (every millisecond here, to look at its interrupt
// callback) re-checks the entry only when something changed: the release
// that frees its slot is its one wake-up, however many ticks it slept
// through (issue 11: "wakeups per wait <= 2").
TEST(CounterTableWaitTest, PollTicksAreNotWakeUps) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("ticks");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  Slot keep = *holder->TryAcquire(key, Limit::AtMost(2));  // keeps the entry's statistics
  constexpr int kTicks = 50;
  std::atomic<int> limit_calls{0};
  std::atomic<bool> granted{false};
  std::thread wait([&] {
    AcquireOptions fast_polling;
    fast_polling.poll_interval = absl::Milliseconds(1);
    absl::StatusOr<Slot> s = waiter->AcquireWaiting(
        key,
        [&] {
          limit_calls.fetch_add(1);
          return Limit::AtMost(2);
        },
        WaiterDeadline(), [] { return false; }, fast_polling);
    EXPECT_TRUE(s.ok()) << s.status();
    granted = true;
    AwaitCondition([&] { return !granted.load(); });  // hold it until the checks are done
  });
  // The limit is evaluated once per tick: wait for many ticks, then free a slot.
  AwaitCondition([&] { return limit_calls.load() >= kTicks; }, absl::Seconds(60));
  const TableStats before = t->Stats();
  held.Release();
  AwaitCondition([&] { return granted.load(); }, absl::Seconds(30));
  std::optional<KeyStats> k = StatsOf(t.table(), key);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->waited, 1u);
  EXPECT_EQ(k->wakeups, 1u) << "after " << limit_calls.load() << " ticks";
  EXPECT_EQ(t->Stats().wakeups, 1u);
  EXPECT_EQ(before.wakeups, 0u);
  granted = false;
  wait.join();
}

// Two waiters, two releases: two wake-ups in all, whichever waiter looks
// first. The release wakes one waiter, but the other also sees wake_seq
// change on its next poll tick; it finds the freed slot taken and goes back
// to sleep without locking the entry or counting a wake-up.
TEST(CounterTableWaitTest, AWakeUpTakenByAnotherWaiterIsNotCounted) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  NodeKey key = Key("two-waiters");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  Slot keep = *holder->TryAcquire(key, Limit::AtMost(2));  // keeps the entry's statistics
  std::atomic<int> granted{0};
  std::atomic<bool> release_mine{false};
  std::atomic<int> limit_calls{0};  // one per tick of a waiter
  // Looks at the entry (a waiter reads the limit after reading wake_seq,
  // before it looks) between the release and the first grant: the woken
  // waiter's, and any tick of the other's that saw the bump before the slot
  // was taken. Only then may the other count a wake-up too: it looked while
  // the slot was still free.
  std::atomic<bool> released{false};
  std::atomic<int> looks_before_grant{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 2; ++i) {
    waiters.emplace_back([&] {
      auto owner = *t->RegisterOwner();
      AcquireOptions fast_polling;
      fast_polling.poll_interval = absl::Milliseconds(1);
      absl::StatusOr<Slot> s = owner->AcquireWaiting(
          key,
          [&] {
            limit_calls.fetch_add(1);
            if (released.load() && granted.load() == 0) looks_before_grant.fetch_add(1);
            return Limit::AtMost(2);
          },
          WaiterDeadline(), [] { return false; }, fast_polling);
      EXPECT_TRUE(s.ok()) << s.status();
      const int order = granted.fetch_add(1);
      // The first one granted holds its slot until the test lets it go.
      if (order == 0) AwaitCondition([&] { return release_mine.load(); });
    });
  }
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 2; });
  released = true;
  held.Release();
  AwaitCondition([&] { return granted.load() == 1; }, absl::Seconds(30));
  // The other waiter wakes (FutexWake, or its tick seeing wake_seq changed)
  // and ticks on: wait for many of its ticks.
  const int calls = limit_calls.load();
  AwaitCondition([&] { return limit_calls.load() >= calls + 20; }, absl::Seconds(60));
  release_mine = true;
  AwaitCondition([&] { return granted.load() == 2; }, absl::Seconds(30));
  for (auto& w : waiters) w.join();
  std::optional<KeyStats> k = StatsOf(t.table(), key);
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->waited, 2u);
  // On a quiet machine the other waiter's ticks come long after the grant
  // (looks_before_grant is 1) and it must not count them; on a busy one it
  // may have looked while the slot was free, and counts that one look.
  EXPECT_GE(k->wakeups, 2u);
  EXPECT_LE(k->wakeups, looks_before_grant.load() > 1 ? 3u : 2u)
      << "a waiter counted a wake-up whose slot another had taken (looks before the grant: "
      << looks_before_grant.load() << ")";
}

TEST(CounterTableWaitTest, ReleaseWakesOneWaiterOfItsKeyOnly) {
  HeapTable t(TableOptions{16, 32});
  auto holder = *t->RegisterOwner();
  NodeKey a = Key("a"), b = Key("b");
  Slot held_a = *holder->TryAcquire(a, Limit::AtMost(1));
  Slot held_b = *holder->TryAcquire(b, Limit::AtMost(1));
  constexpr int kWaitersPerKey = 6;
  std::atomic<int> granted_a{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2 * kWaitersPerKey; ++i) {
    threads.emplace_back([&, i] {
      auto owner = *t->RegisterOwner();
      const NodeKey& key = i % 2 == 0 ? a : b;
      absl::StatusOr<Slot> s = owner->AcquireWaiting(
          key, [] { return Limit::AtMost(1); }, WaiterDeadline(), [&] { return stop.load(); },
          NoPolling());
      if (s.ok()) {
        ++granted_a;
        AwaitCondition([&] { return stop.load(); });  // hold it until the checks are done
      }
    });
  }
  AwaitCondition([&] {
    return WaitersOf(t.table(), a) == kWaitersPerKey && WaitersOf(t.table(), b) == kWaitersPerKey;
  });
  held_a.Release();
  AwaitCondition([&] { return granted_a.load() == 1; }, absl::Seconds(30));
  std::optional<KeyStats> stats_a = StatsOf(t.table(), a), stats_b = StatsOf(t.table(), b);
  ASSERT_TRUE(stats_a.has_value() && stats_b.has_value());
  KeyStats ka = *stats_a, kb = *stats_b;
  EXPECT_EQ(ka.waiters, kWaitersPerKey - 1u);
  EXPECT_EQ(ka.connections, 1u);
  // One wake-up on a, the winner's; none on b. Waking everyone would show 11.
  EXPECT_EQ(ka.wakeups, 1u);
  EXPECT_EQ(kb.wakeups, 0u);
  EXPECT_EQ(granted_a.load(), 1);
  stop = true;
  t->WakeAllWaiters();
  for (auto& th : threads) th.join();
}

TEST(CounterTableWaitTest, OptionalAcquireLeavesAFreedSlotToQueuedWaiters) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("fair");
  Slot held = *owner->TryAcquire(key, Limit::AtMost(2));
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    auto w = *t->RegisterOwner();
    // This waiter never accepts a slot, so it stays queued.
    (void)w->AcquireWaiting(
        key, [] { return Limit::AtMost(0); }, Deadline(), [&] { return stop.load(); });
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  // 1 in use of 2, but the free slot belongs to the waiter.
  EXPECT_EQ(owner->TryAcquire(key, Limit::AtMost(2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(owner->TryAcquire(key, Limit::AtMost(3)).ok());
  stop = true;
  waiter.join();
}

TEST(CounterTableWaitTest, WaiterThatGivesUpPassesTheWakeUpOn) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  NodeKey key = Key("pass");
  std::atomic<int> limit{1};
  auto current = [&] { return Limit::AtMost(static_cast<uint32_t>(limit.load())); };
  Slot held = *holder->TryAcquire(key, current());
  std::atomic<bool> first_gives_up{false}, second_done{false};
  absl::Status first_result, second_result;  // Slots must not outlive their owner
  std::thread first([&] {
    auto w = *t->RegisterOwner();
    first_result = w->AcquireWaiting(
                        key, [] { return Limit::AtMost(0); }, Deadline(),
                        [&] { return first_gives_up.load(); })
                       .status();
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 1; });
  std::thread second([&] {
    auto w = *t->RegisterOwner();
    second_result = w->AcquireWaiting(
                         key, current, WaiterDeadline(), [] { return false; }, NoPolling())
                        .status();
    second_done = true;
  });
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 2; });
  // A slot becomes free without anyone being woken (no WakeAllWaiters) ...
  limit = 2;
  // ... and the first waiter gives up: it must hand the wake-up on.
  first_gives_up = true;
  first.join();
  AwaitCondition([&] { return second_done.load(); }, absl::Seconds(30));
  second.join();
  EXPECT_EQ(first_result.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(second_result.ok()) << second_result;
}

TEST(CounterTableWaitTest, WakeAllWaitersLetsWaitersSeeARaisedLimit) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  NodeKey key = Key("raise");
  std::atomic<int> limit{1};
  auto current = [&] { return Limit::AtMost(static_cast<uint32_t>(limit.load())); };
  Slot held = *holder->TryAcquire(key, current());
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&] {
      auto w = *t->RegisterOwner();
      absl::StatusOr<Slot> s = w->AcquireWaiting(
          key, current, WaiterDeadline(), [] { return false; }, NoPolling());
      EXPECT_TRUE(s.ok()) << s.status();
      ++granted;
      AwaitCondition([&] { return granted.load() == 2; });
    });
  }
  AwaitCondition([&] { return WaitersOf(t.table(), key) == 2; });
  limit = 3;
  t->WakeAllWaiters();
  AwaitCondition([&] { return granted.load() == 2; }, absl::Seconds(30));
  for (auto& th : threads) th.join();
  EXPECT_EQ(granted.load(), 2);
}

// ---- owners -----------------------------------------------------------------

TEST(CounterTableOwnerTest, OwnerRecordsRunOutAndComeBack) {
  HeapTable t(TableOptions{8, 2});
  auto a = *t->RegisterOwner();
  auto b = *t->RegisterOwner();
  absl::StatusOr<std::unique_ptr<Owner>> c = t->RegisterOwner();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(t->Stats().owners, 2u);
  b.reset();
  EXPECT_TRUE(t->RegisterOwner().ok());
}

TEST(CounterTableOwnerTest, ReleaseAllGivesBackEverySlotRecordedAgainstTheOwner) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  NodeKey key = Key("leak");
  (*owner->AcquireForced(key)).Release();
  // Slots whose objects the caller lost track of (as on an error path) are
  // still recorded against the owner.
  std::vector<Slot> forgotten;
  forgotten.push_back(*owner->TryAcquire(key, Limit::AtMost(5)));
  forgotten.push_back(*owner->AcquireForced(key));
  AcquireOptions reservation;
  reservation.reservation = true;
  forgotten.push_back(*owner->TryAcquire(key, Limit::AtMost(5), reservation));
  EXPECT_EQ(owner->SlotsHeld(), 3u);
  EXPECT_EQ(owner->ReleaseAll(), 3u);
  EXPECT_EQ(t->ConnectionCount(key), 0u);
  EXPECT_EQ(owner->SlotsHeld(), 0u);
  forgotten.clear();  // void after ReleaseAll: no second give-back
  EXPECT_EQ(t->ConnectionCount(key), 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableOwnerTest, DestroyingAnOwnerGivesBackWhatItHeld) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  // Slot objects that are never destroyed (their storage is simply abandoned,
  // as a longjmp past them would) — the owner's record still knows them.
  alignas(Slot) unsigned char abandoned[2][sizeof(Slot)];
  new (abandoned[0]) Slot(*owner->TryAcquire(Key("gone"), Limit::AtMost(5)));
  new (abandoned[1]) Slot(*owner->TryAcquire(Key("other"), Limit::AtMost(5)));
  EXPECT_EQ(t->Snapshot().size(), 2u);
  owner.reset();
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_EQ(t->Stats().owners, 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

TEST(CounterTableOwnerTest, AuditFindsACountThatNoOwnerHolds) {
  HeapTable t;
  auto owner = *t->RegisterOwner();
  Slot s = *owner->TryAcquire(Key("audited"), Limit::AtMost(5));
  EXPECT_TRUE(t->Audit().ok());
  // Corrupt the count behind the owners' backs.
  auto* h = static_cast<internal::TableHeader*>(t.region());
  for (uint32_t e = 0; e < h->capacity; ++e) {
    internal::Entry& entry = internal::EntryAt(h, e);
    if ((entry.word.load() & 0xfffff) == 1) entry.word.store(entry.word.load() + 1);
  }
  absl::Status audit = t->Audit();
  EXPECT_EQ(audit.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(audit), HasSubstr("count 2 vs held 1"));
}

// ---- concurrency ----------------------------------------------------------

// Threads take and give back slots on few keys with small limits, mixing every
// intent; a checker samples the table and each thread's own account, and
// fails on any moment where a key has more non-forced slots than its limit.
TEST(CounterTableConcurrencyTest, StrictLimitUnderThreads) {
  HeapTable t(TableOptions{8, 32});
  constexpr int kThreads = 8;
  constexpr uint32_t kLimit = 2;
  const std::vector<NodeKey> keys = {Key("k0"), Key("k1"), Key("k2")};
  std::atomic<int> held[3] = {};  // non-forced slots held, by the threads' own account
  std::atomic<int> peak{0};
  std::atomic<bool> done{false};
  std::atomic<int> violations{0};

  std::thread checker([&] {
    while (!done) {
      for (const KeyStats& k : t->Snapshot()) {
        if (k.connections - k.forced > kLimit) ++violations;
        if (k.forced > k.connections || k.reserved > k.connections) ++violations;
      }
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      auto owner = *t->RegisterOwner();
      std::mt19937 rng(w);
      for (int i = 0; i < 3000; ++i) {
        int k = static_cast<int>(rng() % keys.size());
        int op = static_cast<int>(rng() % 10);
        absl::StatusOr<Slot> s;
        if (op < 5) {
          s = owner->TryAcquire(keys[k], Limit::AtMost(kLimit));
        } else if (op < 9) {
          AcquireOptions options;
          options.reservation = op == 8;
          s = owner->AcquireWaiting(keys[k], Limit::AtMost(kLimit),
                                    absl::Now() + absl::Milliseconds(5), options);
        } else {
          s = owner->AcquireForced(keys[k]);
        }
        if (!s.ok()) continue;
        bool forced = s->kind() == SlotKind::kForced;
        if (!forced) {
          int now = ++held[k];
          int p = peak.load();
          while (now > p && !peak.compare_exchange_weak(p, now)) {
          }
          --held[k];
        }
      }
    });
  }
  for (auto& th : workers) th.join();
  done = true;
  checker.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_LE(peak.load(), static_cast<int>(kLimit));
  EXPECT_TRUE(t->Snapshot().empty());
  EXPECT_EQ(t->Stats().entries_in_use, 0u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

// Many threads churn through many keys on a small table, so entries are
// created, dropped, revived and re-used under each other's feet.
TEST(CounterTableConcurrencyTest, EntryChurnKeepsCountsExact) {
  HeapTable t(TableOptions{16, 16});
  std::vector<std::thread> workers;
  std::atomic<int> uncounted{0};
  for (int w = 0; w < 6; ++w) {
    workers.emplace_back([&, w] {
      auto owner = *t->RegisterOwner();
      std::mt19937 rng(100 + w);
      std::vector<Slot> slots;
      for (int i = 0; i < 4000; ++i) {
        if (!slots.empty() && rng() % 2 == 0) {
          slots.erase(slots.begin() + static_cast<long>(rng() % slots.size()));
          continue;
        }
        if (slots.size() >= 2) continue;
        NodeKey key = Key(absl::StrCat("node-", rng() % 40), 5432, 1);
        absl::StatusOr<Slot> s = owner->TryAcquire(key, Limit::AtMost(3));
        if (s.ok()) {
          if (s->kind() == SlotKind::kUncounted) ++uncounted;
          slots.push_back(std::move(*s));
        }
      }
    });
  }
  std::atomic<bool> done{false};
  std::thread auditor([&] {
    while (!done) {
      for (const KeyStats& k : t->Snapshot()) {
        EXPECT_LE(k.connections, 3u) << k.host;
        EXPECT_THAT(k.host, ::testing::StartsWith("node-"));
      }
    }
  });
  for (auto& th : workers) th.join();
  done = true;
  auditor.join();
  EXPECT_EQ(uncounted.load(), 0) << "6 threads x 2 keys never fill 16 entries";
  EXPECT_TRUE(t->Snapshot().empty());
  TableStats stats = t->Stats();
  EXPECT_EQ(stats.entries_in_use, 0u);
  // What is left is zombies, at most one per entry.
  EXPECT_LE(stats.entries_created - stats.entries_dropped, stats.capacity);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

}  // namespace
}  // namespace connthrottle
