// The entry lock under contention, with reclamation of dead owners on: a
// waiter for an entry lock may take it over only from a holder that died
// (issue 13, finding 1). Threads of one process never die apart, so in these
// tests no takeover may ever happen, however the lock is contended.
//
// The deterministic test pauses threads at named points of the protocol
// (internal/test_hooks.h) to play the interleaving that once let a waiter
// "take over" a lock its live holder had just released and taken again. The
// stress test hammers one entry's lock from many owners and counts takeovers.
// The last test lets a holder die for real (SIGKILL, in a child process) and
// re-uses its record while a waiter judges it.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "core/internal/layout.h"
#include "core/internal/test_hooks.h"
#include "gtest/gtest.h"
#include "tests/testing/heap_table.h"
#include "tests/testing/pauses.h"
#include "tests/testing/shared_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::HeapTable;
using ::connthrottle::testing::Key;

using ::connthrottle::testing::Pauses;
using ::connthrottle::testing::SharedTable;
constexpr Pauses::Role kHolder = Pauses::kFirst;
constexpr Pauses::Role kTaker = Pauses::kSecond;

class EntryLockTest : public ::testing::Test {
 protected:
  void SetUp() override { Pauses::Get().Install(); }
  void TearDown() override { Pauses::Get().Uninstall(); }

  static int Takeovers() { return Pauses::Get().Count("LockEntry.took_over"); }
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
  pauses.Arm(kHolder, "TryAcquireSlow.refusing");
  std::thread h1 = refused_acquire(*holder, kHolder);
  pauses.AwaitArrival(kHolder);

  // 2. T waits for the lock long enough to ask whether H is dead; stopped
  //    just before it judges, with the locked word it read in hand.
  pauses.Arm(kTaker, "LockEntry.judge_holder");
  bool taker_done = false;
  std::thread tk([&] {
    Pauses::role = kTaker;
    absl::StatusOr<Slot> s = taker->TryAcquire(key, Limit::AtMost(1));
    EXPECT_TRUE(absl::IsResourceExhausted(s.status())) << s.status();
    pauses.Done(&taker_done);
  });
  pauses.AwaitArrival(kTaker);

  // 3. H unlocks and leaves: for a moment no one holds the entry.
  pauses.Open(kHolder);
  h1.join();

  // 4. T judges. Had it judged H dead, it stops before its takeover.
  pauses.Arm(kTaker, "LockEntry.takeover");
  pauses.Open(kTaker);
  std::thread h2;
  if (pauses.AwaitArrivalOr(kTaker, &taker_done)) {
    // 5. H takes the lock again, so the word is back to what T read in
    //    step 2, and holds it while T tries its takeover.
    pauses.Arm(kHolder, "TryAcquireSlow.refusing");
    h2 = refused_acquire(*holder, kHolder);
    pauses.AwaitArrival(kHolder);
    pauses.Open(kTaker);
    // A wrong takeover would now wait for H to leave the entry: let H go.
    pauses.Open(kHolder);
  }
  tk.join();
  if (h2.joinable()) h2.join();
  EXPECT_EQ(Takeovers(), 0) << "a live holder's entry lock was taken over";
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
                 Takeovers());
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
  while (running.load() > 0) {
    ++samples;
    if (t->ConnectionCount(key) > kChurnLimit) ++over_limit;
  }
  for (std::thread& thread : threads) thread.join();
  {
    std::lock_guard<std::mutex> lock(watchdog_mu);
    finished = true;
  }
  watchdog_cv.notify_all();
  watchdog.join();

  std::printf("%d refusers x %d, %d churners x %d: %ld samples, %d judgements of a holder\n",
              kRefusers, kRefusals, kChurners, kChurns, samples,
              Pauses::Get().Count("LockEntry.judge_holder"));
  EXPECT_EQ(Takeovers(), 0) << "an entry lock was taken over while every owner was alive";
  EXPECT_GT(samples, 0);
  EXPECT_EQ(over_limit, 0);
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(t->ConnectionCount(key), 1u);
  absl::Status audit = t->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

// A waiting acquire's limit is the caller's code (issue 13, finding 5): it
// must never run under the entry lock, or a callback that blocks would wedge
// the key for everyone. Here the waiter's callback blocks, in the waiter's
// wait loop, until the others are done with the key: they must get through.
TEST_F(EntryLockTest, BlockingLimitCallbackDoesNotHoldTheKey) {
  HeapTable t(Reclaiming());
  const NodeKey key = Key("k");
  std::unique_ptr<Owner> holder = *t->RegisterOwner();
  std::unique_ptr<Owner> waiter = *t->RegisterOwner();
  std::unique_ptr<Owner> other = *t->RegisterOwner();
  Slot busy = *holder->TryAcquire(key, Limit::AtMost(1));

  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  bool block_next = false, blocked = false, go_on = false;
  auto limit = [&] {
    std::unique_lock<std::mutex> lock(mu);
    ++calls;
    cv.notify_all();
    if (block_next) {
      block_next = false;
      blocked = true;
      cv.notify_all();
      cv.wait(lock, [&] { return go_on; });
    }
    return Limit::AtMost(1);
  };
  absl::StatusOr<Slot> got = absl::UnknownError("not yet");
  std::thread w([&] {
    got = waiter->AcquireWaiting(key, limit, absl::InfiniteFuture(), [] { return false; });
  });
  {
    // Three calls: the first decision, the check once queued, and one from
    // the wait loop (it re-evaluates at every poll tick). The next one, made
    // in the loop, blocks.
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return calls >= 3; });
    block_next = true;
    cv.wait(lock, [&] { return blocked; });
  }
  // The waiter's callback is blocked. The key must still serve others: a
  // refusal and a release both lock the entry (it has a waiter).
  bool others_done = false;
  std::thread o([&] {
    EXPECT_TRUE(absl::IsResourceExhausted(other->TryAcquire(key, Limit::AtMost(1)).status()));
    busy.Release();
    std::lock_guard<std::mutex> lock(mu);
    others_done = true;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(60), [&] { return others_done; })) {
      ADD_FAILURE() << "a blocked limit callback holds the entry: others hang";
      std::fflush(stdout);
      _exit(1);  // the threads cannot be stopped
    }
    go_on = true;
    cv.notify_all();
  }
  o.join();
  w.join();
  ASSERT_TRUE(got.ok()) << got.status();  // the freed slot went to the waiter
  EXPECT_EQ(t->ConnectionCount(key), 1u);
  absl::Status audit = t->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

// A limit callback that throws once the caller is queued: the exception
// reaches the caller, and the queue place goes with it (a phantom waiter
// would keep every optional acquire of the key refused).
TEST_F(EntryLockTest, ThrowingLimitCallbackLeavesTheQueue) {
  HeapTable t(Reclaiming());
  const NodeKey key = Key("k");
  std::unique_ptr<Owner> holder = *t->RegisterOwner();
  std::unique_ptr<Owner> waiter = *t->RegisterOwner();
  Slot busy = *holder->TryAcquire(key, Limit::AtMost(1));
  int calls = 0;
  auto limit = [&] {
    if (++calls == 2) throw std::runtime_error("configuration gone");
    return Limit::AtMost(1);
  };
  EXPECT_THROW(
      (void)waiter->AcquireWaiting(key, limit, absl::InfiniteFuture(), [] { return false; }),
      std::runtime_error);
  EXPECT_EQ(calls, 2);
  std::vector<KeyStats> keys = t->Snapshot();
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].waiters, 0u) << "the thrown-out waiter is still queued";
  // With no one queued, a second slot under a limit of 2 is admitted.
  absl::StatusOr<Slot> second = holder->TryAcquire(key, Limit::AtMost(2));
  EXPECT_TRUE(second.ok()) << second.status();
  absl::Status audit = t->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

// A holder that died leaves its lock stamped with its owner id and the low
// bits of its record's lock sequence. A waiter judges it dead and is about to
// take the lock over when another process adopts the dead holder's record.
// Were the adopter let go on, its 16th lock of the entry would carry the very
// stamp the waiter judged, and the waiter's compare-and-swap would take a
// lock a live owner holds. The adopter must wait for the judgement to end.
// Children leave via _exit and never use gtest.
class EntryLockAfterDeathTest : public ::testing::Test {
 protected:
  void TearDown() override { Pauses::Get().Uninstall(); }

  std::atomic<uint64_t>& Word(const NodeKey& key) {
    auto* h = static_cast<internal::TableHeader*>(table_.region());
    for (uint32_t e = 0; e < h->capacity; ++e) {
      internal::Entry& entry = internal::EntryAt(h, e);
      if (entry.in_use.load() != 0 && entry.hash.load() == key.node_hash()) return entry.word;
    }
    ADD_FAILURE() << "no entry for " << key.host();
    return internal::EntryAt(h, 0).word;
  }

  // Two records: the waiter's, and the one that dies and is adopted.
  SharedTable table_{TableOptions{.capacity = 8, .max_owners = 2, .reclaim_dead_owners = true}};
};

// Dies (SIGKILL) the moment it holds an entry lock to refuse an acquire.
void KillSelfWhenRefusing(const char* point) {
  if (std::strcmp(point, "TryAcquireSlow.refusing") == 0) raise(SIGKILL);
}

TEST_F(EntryLockAfterDeathTest, RecordOfAJudgedHolderIsNotReusedUntilTheJudgementEnds) {
  constexpr Pauses::Role kWaiter = Pauses::kFirst;
  constexpr Pauses::Role kAdopter = Pauses::kSecond;
  const NodeKey key = Key("a");
  // Record 1: the waiter, in this process, with one slot of the key.
  std::unique_ptr<Owner> waiter = *table_->RegisterOwner();
  Slot held = *waiter->TryAcquire(key, Limit::AtMost(5));
  // Record 2: a process that takes a slot, then dies holding the entry lock.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    absl::StatusOr<std::unique_ptr<Owner>> dying = table_->RegisterOwner();
    if (!dying.ok()) _exit(2);
    absl::StatusOr<Slot> its = (*dying)->TryAcquire(key, Limit::AtMost(5));
    if (!its.ok()) _exit(2);
    internal::test_hook.store(&KillSelfWhenRefusing);
    (void)(*dying)->TryAcquire(key, Limit::AtMost(2));
    _exit(3);  // not reached: killed while refusing
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const uint64_t judged = Word(key).load();
  ASSERT_TRUE(judged & internal::Word::kLocked);
  ASSERT_EQ(internal::Word::Holder(judged), 2u);

  Pauses& pauses = Pauses::Get();
  pauses.Install();
  // 1. The waiter wants the entry, judges the holder dead and stops just
  //    before its takeover, with the dead holder's word in hand.
  pauses.Arm(kWaiter, "LockEntry.takeover");
  bool waiter_done = false;
  absl::StatusOr<Slot> got = absl::UnknownError("not acquired");
  std::thread w([&] {
    Pauses::role = kWaiter;
    got = waiter->TryAcquire(key, Limit::AtMost(5));
    pauses.Done(&waiter_done);
  });
  pauses.AwaitArrival(kWaiter);

  // 2. Another process (here a thread: its own registration) finds every
  //    record taken and adopts the dead one's. It must wait for the judge.
  pauses.Arm(kAdopter, "RegisterOwner.awaits_judge");
  bool adopted = false;
  std::unique_ptr<Owner> adopter;
  std::thread a([&] {
    Pauses::role = kAdopter;
    absl::StatusOr<std::unique_ptr<Owner>> r = table_->RegisterOwner();
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) adopter = *std::move(r);
    pauses.Done(&adopted);
  });
  std::thread relocker;
  bool adopter_holds = false;
  if (pauses.AwaitArrivalOr(kAdopter, &adopted)) {
    pauses.Open(kAdopter);  // it goes on waiting for the judgement to end
  } else {
    // 3'. Not waited for: the adopter locks the entry (refusing acquires)
    //     until its stamp comes back to the one the waiter judged, and
    //     stops holding it there.
    a.join();
    ASSERT_NE(adopter, nullptr);
    for (int n = 0; n < 64 && !adopter_holds; ++n) {
      pauses.Arm(kAdopter, "TryAcquireSlow.refusing");
      relocker = std::thread([&] {
        Pauses::role = kAdopter;
        (void)adopter->TryAcquire(key, Limit::AtMost(1));
      });
      pauses.AwaitArrival(kAdopter);
      adopter_holds = Word(key).load() == judged;
      if (!adopter_holds) {
        pauses.Open(kAdopter);
        relocker.join();
      }
    }
    ASSERT_TRUE(adopter_holds) << "the adopter's stamp never came back to the judged one";
  }

  // 3. The waiter tries its takeover against the word it judged: the dead
  //    holder's lock, unless the adopter holds a lock with the same stamp.
  pauses.Arm(kWaiter, "LockEntry.took_over");
  pauses.Open(kWaiter);
  const bool took = pauses.AwaitArrivalOr(kWaiter, &waiter_done);
  EXPECT_TRUE(took) << "the waiter did not take over the dead holder's lock";
  EXPECT_FALSE(took && adopter_holds)
      << "the waiter took over an entry lock the adopter holds: the adopter re-used the record of "
         "the holder it was judging, and its stamp came back to the judged one";
  if (took) pauses.Open(kWaiter);
  if (adopter_holds) {
    pauses.Open(kAdopter);
    relocker.join();
  }
  w.join();
  if (a.joinable()) a.join();
  pauses.Uninstall();

  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_NE(adopter, nullptr);
  // The dead process's slot is given back: the waiter's two remain.
  EXPECT_EQ(table_->ConnectionCount(key), 2u);
  adopter.reset();  // Audit registers an owner of its own
  absl::Status audit = table_->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

}  // namespace
}  // namespace connthrottle
