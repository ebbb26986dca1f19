// The entry lock under contention, with reclamation of dead owners on: a
// waiter for an entry lock may take it over only from a holder that died
// (issue 13, finding 1). Threads of one process never die apart, so in these
// tests no takeover may ever happen, however the lock is contended.
//
// The deterministic test pauses threads at named points of the protocol
// (internal/test_hooks.h) to play the interleaving that once let a waiter
// "take over" a lock its live holder had just released and taken again. The
// stress test hammers one entry's lock from many owners and counts takeovers.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "gtest/gtest.h"
#include "internal/test_hooks.h"
#include "tests/testing/heap_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::HeapTable;
using ::connthrottle::testing::Key;

// Takeovers of an entry lock seen by the hook, in any test of this file.
std::atomic<int> takeovers{0};
// Times a waiter for an entry lock asked whether its holder is dead.
std::atomic<int> judgements{0};

// Pauses threads at named points. A thread takes part under a role; each
// role has one gate, which the test arms at a point: the next thread of that
// role to reach the point stops there until the test opens the gate.
class Pauses {
 public:
  enum Role { kNone = 0, kHolder = 1, kTaker = 2 };
  static thread_local Role role;

  static Pauses& Get() {
    static Pauses* pauses = new Pauses();
    return *pauses;
  }

  void Arm(Role r, const std::string& point) {
    std::lock_guard<std::mutex> lock(mu_);
    Gate& gate = gates_[r];
    gate.point = point;
    gate.armed = true;
    gate.arrived = false;
  }
  // Waits until r's gate holds a thread.
  void AwaitArrival(Role r) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return gates_[r].arrived; });
  }
  // Waits until r's gate holds a thread or *done (set with Done) is true.
  // Returns whether a thread arrived.
  bool AwaitArrivalOr(Role r, const bool* done) {
    std::unique_lock<std::mutex> lock(mu_);
    const Gate& gate = gates_[r];
    changed_.wait(lock, [&] { return gate.arrived || *done; });
    return gate.arrived;
  }
  // Lets the thread stopped at r's gate go on (the gate may be armed again
  // before, for the thread's next point).
  void Open(Role r) {
    std::lock_guard<std::mutex> lock(mu_);
    ++gates_[r].opened;
    changed_.notify_all();
  }
  void Done(bool* done) {
    std::lock_guard<std::mutex> lock(mu_);
    *done = true;
    changed_.notify_all();
  }

  static void Hook(const char* point) {
    if (std::strcmp(point, "LockEntry.took_over") == 0) takeovers.fetch_add(1);
    if (std::strcmp(point, "LockEntry.judge_holder") == 0) judgements.fetch_add(1);
    if (role != kNone) Get().Stop(point);
  }

 private:
  struct Gate {
    std::string point;
    bool armed = false;
    bool arrived = false;
    int opened = 0;  // times the test let a stopped thread go
  };

  void Stop(const char* point) {
    std::unique_lock<std::mutex> lock(mu_);
    Gate& gate = gates_[role];
    if (!gate.armed || gate.arrived || gate.point != point) return;
    gate.arrived = true;
    gate.armed = false;
    changed_.notify_all();
    const int ticket = gate.opened;
    changed_.wait(lock, [&] { return gate.opened > ticket; });
  }

  // std, not absl::Mutex: ThreadSanitizer sees the std (pthread) primitives
  // even when Abseil is a prebuilt, uninstrumented library.
  std::mutex mu_;
  std::condition_variable changed_;
  Gate gates_[3];
};
thread_local Pauses::Role Pauses::role = Pauses::kNone;

class EntryLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    takeovers.store(0);
    internal::test_hook.store(&Pauses::Hook);
  }
  void TearDown() override { internal::test_hook.store(nullptr); }
};

TableOptions Reclaiming() {
  return TableOptions{.capacity = 8, .max_owners = 16, .reclaim_dead_owners = true};
}

// T waits for the lock H holds; while T decides whether H is dead, H gives
// the lock back and takes it again, so that the entry's word holds the very
// value T read before deciding. T must not take the lock over: H is alive.
TEST_F(EntryLockTest, WaiterNeverTakesOverALockItsLiveHolderTookAgain) {
  HeapTable t(Reclaiming());
  const NodeKey key = Key("contended");
  std::unique_ptr<Owner> setup = *t->RegisterOwner();
  std::unique_ptr<Owner> holder = *t->RegisterOwner();
  std::unique_ptr<Owner> taker = *t->RegisterOwner();
  // The key at its limit of 1: every acquire below is refused under the lock.
  Slot busy = *setup->TryAcquire(key, Limit::AtMost(1));
  Pauses& pauses = Pauses::Get();
  auto refused_acquire = [&](Owner& owner, Pauses::Role role) {
    return std::thread([&owner, role, &key] {
      Pauses::role = role;
      absl::StatusOr<Slot> s = owner.TryAcquire(key, Limit::AtMost(1));
      EXPECT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
    });
  };

  // 1. H holds the entry lock, stopped before it unlocks.
  pauses.Arm(Pauses::kHolder, "TryAcquireSlow.refusing");
  std::thread h1 = refused_acquire(*holder, Pauses::kHolder);
  pauses.AwaitArrival(Pauses::kHolder);

  // 2. T waits for the lock long enough to ask whether H is dead; stopped
  //    just before it judges, with the locked word it read in hand.
  pauses.Arm(Pauses::kTaker, "LockEntry.judge_holder");
  bool taker_done = false;
  std::thread tk([&] {
    Pauses::role = Pauses::kTaker;
    absl::StatusOr<Slot> s = taker->TryAcquire(key, Limit::AtMost(1));
    EXPECT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
    pauses.Done(&taker_done);
  });
  pauses.AwaitArrival(Pauses::kTaker);

  // 3. H unlocks and leaves: for a moment no one holds the entry.
  pauses.Open(Pauses::kHolder);
  h1.join();

  // 4. T judges. Had it judged H dead, it stops before its takeover.
  pauses.Arm(Pauses::kTaker, "LockEntry.takeover");
  pauses.Open(Pauses::kTaker);
  std::thread h2;
  if (pauses.AwaitArrivalOr(Pauses::kTaker, &taker_done)) {
    // 5. H takes the lock again, so the word is back to what T read in
    //    step 2, and holds it while T tries its takeover.
    pauses.Arm(Pauses::kHolder, "TryAcquireSlow.refusing");
    h2 = refused_acquire(*holder, Pauses::kHolder);
    pauses.AwaitArrival(Pauses::kHolder);
    pauses.Open(Pauses::kTaker);
    // A wrong takeover would now wait for H to leave the entry: let H go.
    pauses.Open(Pauses::kHolder);
  }
  tk.join();
  if (h2.joinable()) h2.join();
  EXPECT_EQ(takeovers.load(), 0) << "a live holder's entry lock was taken over";
  EXPECT_EQ(t->ConnectionCount(key), 1u);
  EXPECT_TRUE(t->Audit().ok()) << t->Audit();
}

// Many owners hammer refused acquires of a key at its limit (each one locks
// the entry) while others churn its hot path, and a sampler watches: no
// entry lock is ever taken over (no one dies here), the strict limit holds,
// and the books balance at the end. A watchdog turns a deadlock (two owners
// each believing they hold the lock, one waiting for the other to leave)
// into a failure instead of a hung test.
TEST_F(EntryLockTest, ContendedLockIsNeverTakenOverWhileNobodyDies) {
  constexpr int kRefusers = 6;
  constexpr int kChurners = 3;
  constexpr int kRefusals = 200000;  // per refuser
  constexpr int kChurns = 1000000;   // per churner
  constexpr uint32_t kChurnLimit = 2;
  // Many owner records, so that a waiter's scan of them for the holder takes
  // long enough for holders to come and go while it runs.
  HeapTable t(TableOptions{.capacity = 8, .max_owners = 2048, .reclaim_dead_owners = true});
  const NodeKey key = Key("contended");
  std::unique_ptr<Owner> setup = *t->RegisterOwner();
  Slot busy = *setup->TryAcquire(key, Limit::AtMost(1));

  std::mutex watchdog_mu;
  std::condition_variable watchdog_cv;
  bool finished = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(watchdog_mu);
    if (watchdog_cv.wait_for(lock, std::chrono::minutes(10), [&] { return finished; })) return;
    std::fprintf(stderr, "entry lock stress: no progress in 10 minutes, %d takeovers: deadlock\n",
                 takeovers.load());
    std::abort();
  });

  std::atomic<int> running{kRefusers + kChurners};
  std::atomic<long> unexpected{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRefusers; ++i) {
    threads.emplace_back([&] {
      std::unique_ptr<Owner> owner = *t->RegisterOwner();
      for (int n = 0; n < kRefusals; ++n) {
        absl::StatusOr<Slot> s = owner->TryAcquire(key, Limit::AtMost(1));
        if (!absl::IsResourceExhausted(s.status())) unexpected.fetch_add(1);
      }
      running.fetch_sub(1);
    });
  }
  for (int i = 0; i < kChurners; ++i) {
    threads.emplace_back([&] {
      std::unique_ptr<Owner> owner = *t->RegisterOwner();
      for (int n = 0; n < kChurns; ++n) {
        absl::StatusOr<Slot> s = owner->TryAcquire(key, Limit::AtMost(kChurnLimit));
        if (!s.ok() && !absl::IsResourceExhausted(s.status())) unexpected.fetch_add(1);
      }
      running.fetch_sub(1);
    });
  }
  long samples = 0, over_limit = 0;
  int takeovers_seen = 0;
  while (running.load() > 0) {
    ++samples;
    if (t->ConnectionCount(key) > kChurnLimit) ++over_limit;
    takeovers_seen = std::max(takeovers_seen, takeovers.load());
  }
  for (std::thread& thread : threads) thread.join();
  {
    std::lock_guard<std::mutex> lock(watchdog_mu);
    finished = true;
  }
  watchdog_cv.notify_all();
  watchdog.join();

  std::printf("%d refusers x %d, %d churners x %d: %ld samples, %d judgements of a holder\n",
              kRefusers, kRefusals, kChurners, kChurns, samples, judgements.load());
  EXPECT_EQ(takeovers_seen, 0) << "an entry lock was taken over while every owner was alive";
  EXPECT_EQ(takeovers.load(), 0);
  EXPECT_GT(samples, 0);
  EXPECT_EQ(over_limit, 0);
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(t->ConnectionCount(key), 1u);
  absl::Status audit = t->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

}  // namespace
}  // namespace connthrottle
