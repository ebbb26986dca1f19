// CounterTable under threads: strict limits with every kind of acquire mixed,
// and counts kept exact while entries churn.

#include <atomic>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"

namespace connthrottle::testing {
namespace {

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
}  // namespace connthrottle::testing
