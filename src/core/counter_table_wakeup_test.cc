// CounterTable's wake-ups: a release wakes one waiter of its key, without
// polling; poll ticks are not wake-ups; a waiter that gives up passes its
// wake-up on; WakeAllWaiters lets waiters see a raised limit.

#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gtest/gtest.h"
#include "tests/testing/counter_table_helpers.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

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

}  // namespace
}  // namespace connthrottle::testing
