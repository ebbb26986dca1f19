// CounterTable's waiting acquires: a deadline, an interrupt, a wait resumed
// after an interrupt, and Holders() showing who holds and who waits.

#include <atomic>
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

TEST(CounterTableWaitTest, DeadlinePassesWithDeadlineExceeded) {
  HeapTable t;
  auto holder = *t->RegisterOwner();
  auto waiter = *t->RegisterOwner();
  NodeKey key = Key("slow");
  Slot held = *holder->TryAcquire(key, Limit::AtMost(1));
  absl::StatusOr<Slot> s =
      waiter->AcquireWaiting(key, Limit::AtMost(1), absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Message(s.status()), HasSubstr("node slow:5432 became"));
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

}  // namespace
}  // namespace connthrottle::testing
