// What a SIGKILLed process held is given back: its slots of every kind,
// whichever owner's action finds it dead first; the statistics of the
// reclamation; and its place in a wait queue, with live waiters still served.

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "connthrottle/reservation_ledger.h"
#include "connthrottle/slot.h"
#include "gtest/gtest.h"
#include "tests/testing/reclaim_harness.h"

namespace connthrottle::testing {
namespace {

// What triggers the reclamation after the kill.
enum class Trigger {
  kExplicitCall,    // Owner::ReclaimDeadOwners()
  kRefusedAcquire,  // the parent's own optional acquire, refused by the dead's slots
  kWaitTick,        // a wait tick of the parent's own waiting acquire
};

const char* TriggerName(Trigger trigger) {
  switch (trigger) {
    case Trigger::kExplicitCall:
      return "ExplicitCall";
    case Trigger::kRefusedAcquire:
      return "RefusedAcquire";
    case Trigger::kWaitTick:
      return "WaitTick";
  }
  return "Unknown";
}

void PrintTo(Trigger trigger, std::ostream* os) { *os << TriggerName(trigger); }

class ReclaimTriggerTest : public ::testing::TestWithParam<Trigger>, protected SegmentHarness {
 protected:
  void TearDown() override { Close(); }
};

TEST_P(ReclaimTriggerTest, KilledProcessSlotsAreGivenBack) {
  Open(TableOptions{16, 8});
  if (HasFatalFailure()) return;
  const NodeKey a = Key("worker-a");
  const NodeKey b = Key("worker-b");
  std::unique_ptr<Owner> mine = MustRegister();
  ASSERT_NE(mine, nullptr);
  absl::StatusOr<Slot> kept = mine->TryAcquire(a, Limit::AtMost(2));
  ASSERT_TRUE(kept.ok()) << kept.status();

  Pipe ready, go;
  const std::string name = name_;
  pid_t pid = Fork([&] {
    ready.CloseRead();
    go.CloseWrite();
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name);
    if (!segment.ok()) _exit(kChildAttachFailed);
    absl::StatusOr<std::unique_ptr<Owner>> owner = (*segment)->table().RegisterOwner();
    if (!owner.ok()) _exit(kChildRegisterFailed);
    // On a: an optional slot (reaching the limit of 2) and a forced one.
    absl::StatusOr<Slot> optional = (*owner)->TryAcquire(a, Limit::AtMost(2));
    absl::StatusOr<Slot> forced = (*owner)->AcquireForced(a);
    // On b: a reservation, through the ledger.
    ReservationLedger ledger(**owner);
    absl::Status reserved = ledger.ReserveAll(
        {{b, 7}}, [](const NodeKey&) { return Limit::AtMost(2); }, absl::Now() + absl::Seconds(5),
        [] { return false; }, [](const ReservationKey&) { return false; });
    if (!optional.ok() || !forced.ok() || !reserved.ok()) _exit(kChildAcquireFailed);
    if (!WriteU32(ready.write_fd(), (*owner)->id())) _exit(kChildPipeFailed);
    BlockOn(go.read_fd());  // until killed (or the parent goes away)
    _exit(kChildOk);
  });
  ASSERT_GT(pid, 0) << strerror(errno);
  ready.CloseWrite();
  go.CloseRead();
  uint32_t child_id = 0;
  ASSERT_TRUE(ReadU32(ready.read_fd(), &child_id)) << "child exited early: " << Reap(pid);

  KeyStats sa = StatsOf(table(), "worker-a");
  KeyStats sb = StatsOf(table(), "worker-b");
  ASSERT_EQ(sa.connections, 3u);
  ASSERT_EQ(sa.forced, 1u);
  ASSERT_EQ(sb.connections, 1u);
  ASSERT_EQ(sb.reserved, 1u);
  ASSERT_EQ(table().Stats().owners, 2u);
  const TableStats before = table().Stats();

  ASSERT_EQ(KillAndReap(pid), -SIGKILL);
  const absl::Time killed_at = absl::Now();

  switch (GetParam()) {
    case Trigger::kExplicitCall:
      EXPECT_EQ(mine->ReclaimDeadOwners(), 1);
      break;
    case Trigger::kRefusedAcquire: {
      // The dead process's optional slot keeps a at its limit: our optional
      // acquires are refused, and a refusal is when an owner looks for the dead.
      int refused = 0;
      bool given_back = PollUntil(
          [&] {
            absl::StatusOr<Slot> s = mine->TryAcquire(a, Limit::AtMost(2));
            if (!s.ok()) {
              ++refused;
              return false;
            }
            s->Release();
            return table().ConnectionCount(a) == 1 && table().ConnectionCount(b) == 0;
          },
          absl::Seconds(30));
      EXPECT_TRUE(given_back) << "refused acquires did not reclaim the dead owner's slots";
      EXPECT_GT(refused, 0) << "no acquire was refused: the trigger was not exercised";
      std::printf("reclaimed by a refused acquire after %s (%d refusals)\n",
                  absl::FormatDuration(absl::Now() - killed_at).c_str(), refused);
      break;
    }
    case Trigger::kWaitTick: {
      // Queued behind the dead process's slots, the wait ticks (10 ms) are
      // when this owner looks for the dead; only reclamation frees a slot.
      absl::StatusOr<Slot> s =
          mine->AcquireWaiting(a, Limit::AtMost(2), absl::Now() + absl::Seconds(30));
      EXPECT_TRUE(s.ok()) << "the waiting acquire was not served: " << s.status();
      std::printf("reclaimed by a wait tick after %s\n",
                  absl::FormatDuration(absl::Now() - killed_at).c_str());
      if (s.ok()) s->Release();
      break;
    }
  }

  // Back to exactly what this process holds: one optional slot of a.
  EXPECT_EQ(table().ConnectionCount(a), 1u);
  EXPECT_EQ(table().ConnectionCount(b), 0u);
  sa = StatsOf(table(), "worker-a");
  EXPECT_EQ(sa.forced, 0u);
  EXPECT_EQ(sa.reserved, 0u);
  EXPECT_EQ(sa.waiters, 0u);
  EXPECT_EQ(table().Snapshot().size(), 1u);
  const TableStats after = table().Stats();
  EXPECT_EQ(after.dead_owners_reclaimed - before.dead_owners_reclaimed, 1u);
  EXPECT_EQ(after.slots_reclaimed - before.slots_reclaimed, 3u);
  EXPECT_EQ(after.owners, 1u);
  EXPECT_EQ(mine->SlotsHeld(), 1u);
  absl::Status audit = table().Audit();
  EXPECT_TRUE(audit.ok()) << audit;

  // Nothing else is found dead, and our own slot still works.
  EXPECT_EQ(mine->ReclaimDeadOwners(), 0);
  kept->Release();
  EXPECT_TRUE(table().Snapshot().empty());
  audit = table().Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

INSTANTIATE_TEST_SUITE_P(Triggers, ReclaimTriggerTest,
                         ::testing::Values(Trigger::kExplicitCall, Trigger::kRefusedAcquire,
                                           Trigger::kWaitTick),
                         [](const ::testing::TestParamInfo<Trigger>& info) {
                           return std::string(TriggerName(info.param));
                         });

// ---- 1b. The statistics of a reclamation ------------------------------------

// Two processes die holding slots of the same key; one pass gives back all
// four slots, and TableStats::slots_reclaimed should say four.
//
// Library bug at 3a77b54 (statistics only, the counts were exact):
// RecoverRecord added to slots_reclaimed only the holds of the record it
// recovered, but RecomputeLocked clears the cells of *every* dead owner on the
// entry, so the second dead owner's slots were given back but never counted:
// slots_reclaimed == 2.
TEST_F(ReclaimTest, SlotsReclaimedCountsEveryDeadOwnersSlots) {
  Open(TableOptions{16, 8});
  if (HasFatalFailure()) return;
  const NodeKey a = Key("worker-a");
  std::unique_ptr<Owner> mine = MustRegister();
  ASSERT_NE(mine, nullptr);
  const std::string name = name_;
  Pipe go;  // never written
  std::vector<pid_t> pids;
  for (int i = 0; i < 2; ++i) {
    Pipe ready;
    pid_t pid = Fork([&] {
      ready.CloseRead();
      go.CloseWrite();
      absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name);
      if (!segment.ok()) _exit(kChildAttachFailed);
      absl::StatusOr<std::unique_ptr<Owner>> owner = (*segment)->table().RegisterOwner();
      if (!owner.ok()) _exit(kChildRegisterFailed);
      absl::StatusOr<Slot> s1 = (*owner)->TryAcquire(a, Limit::AtMost(10));
      absl::StatusOr<Slot> s2 = (*owner)->TryAcquire(a, Limit::AtMost(10));
      if (!s1.ok() || !s2.ok()) _exit(kChildAcquireFailed);
      if (!WriteU32(ready.write_fd(), (*owner)->id())) _exit(kChildPipeFailed);
      BlockOn(go.read_fd());
      _exit(kChildOk);
    });
    ASSERT_GT(pid, 0) << strerror(errno);
    ready.CloseWrite();
    uint32_t id = 0;
    ASSERT_TRUE(ReadU32(ready.read_fd(), &id)) << "child " << i << " exited early: " << Reap(pid);
    pids.push_back(pid);
  }
  ASSERT_EQ(table().ConnectionCount(a), 4u);
  for (pid_t pid : pids) ASSERT_EQ(KillAndReap(pid), -SIGKILL);

  EXPECT_EQ(mine->ReclaimDeadOwners(), 2);
  EXPECT_EQ(table().ConnectionCount(a), 0u);  // exact: all four given back
  const TableStats stats = table().Stats();
  EXPECT_EQ(stats.dead_owners_reclaimed, 2u);
  EXPECT_EQ(stats.slots_reclaimed, 4u) << "slots given back from dead owners are under-counted";
  EXPECT_EQ(stats.owners, 1u);
  absl::Status audit = table().Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

// ---- 2. A killed waiter leaves the queue; live waiters still get served --------

TEST_F(ReclaimTest, WaiterOfKilledProcessIsRemovedAndOthersWoken) {
  Open(TableOptions{16, 8});
  if (HasFatalFailure()) return;
  const NodeKey key = Key("worker-w");
  std::unique_ptr<Owner> holder = MustRegister();
  std::unique_ptr<Owner> waiter_owner = MustRegister();
  ASSERT_NE(holder, nullptr);
  ASSERT_NE(waiter_owner, nullptr);
  absl::StatusOr<Slot> held = holder->TryAcquire(key, Limit::AtMost(1));
  ASSERT_TRUE(held.ok()) << held.status();

  // The child queues on the full key (and would wait a minute).
  const std::string name = name_;
  pid_t pid = Fork([&] {
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment = SharedSegment::Attach(name);
    if (!segment.ok()) _exit(kChildAttachFailed);
    absl::StatusOr<std::unique_ptr<Owner>> owner = (*segment)->table().RegisterOwner();
    if (!owner.ok()) _exit(kChildRegisterFailed);
    AcquireOptions options;
    options.poll_interval = absl::Hours(1);
    absl::StatusOr<Slot> s =
        (*owner)->AcquireWaiting(key, Limit::AtMost(1), absl::Now() + absl::Seconds(60), options);
    _exit(kChildWaitReturned);
  });
  ASSERT_GT(pid, 0) << strerror(errno);
  auto waiters = [&] { return StatsOf(table(), "worker-w").waiters; };
  ASSERT_TRUE(PollUntil([&] { return waiters() == 1; }, absl::Seconds(30)))
      << "the child never queued";

  // A thread of ours queues behind it. No polling: only a wake-up can serve it.
  std::atomic<bool> got{false};
  std::atomic<bool> finish{false};
  absl::Status waiter_status;
  std::thread waiter([&] {
    AcquireOptions options;
    options.poll_interval = absl::Hours(1);
    absl::StatusOr<Slot> s = waiter_owner->AcquireWaiting(key, Limit::AtMost(1),
                                                          absl::Now() + absl::Seconds(20), options);
    waiter_status = s.status();
    got = s.ok();
    // Hold the slot until the main thread has looked at the table.
    while (!finish.load()) std::this_thread::yield();
  });
  absl::Cleanup join_waiter = [&] {
    if (held.ok()) held->Release();
    finish = true;
    if (waiter.joinable()) waiter.join();
  };
  EXPECT_TRUE(PollUntil([&] { return waiters() == 2; }, absl::Seconds(30)));

  ASSERT_EQ(KillAndReap(pid), -SIGKILL);
  // The dead waiter's place is still in the books until someone reclaims.
  EXPECT_EQ(holder->ReclaimDeadOwners(), 1);
  KeyStats s = StatsOf(table(), "worker-w");
  EXPECT_EQ(s.waiters, 1u) << "the killed process's waiter place was not removed";
  EXPECT_EQ(s.connections, 1u);
  EXPECT_FALSE(got.load());
  EXPECT_EQ(table().Stats().dead_owners_reclaimed, 1u);
  EXPECT_EQ(table().Stats().slots_reclaimed, 0u);
  absl::Status audit = table().Audit();
  EXPECT_TRUE(audit.ok()) << audit;

  // Freeing the slot must serve our live waiter (liveness bound, not speed).
  const absl::Time released_at = absl::Now();
  held->Release();
  EXPECT_TRUE(PollUntil([&] { return got.load(); }, absl::Seconds(30)))
      << "the live waiter was not woken after the dead one was removed";
  const absl::Duration latency = absl::Now() - released_at;
  s = StatsOf(table(), "worker-w");
  EXPECT_EQ(s.connections, 1u);
  EXPECT_EQ(s.waiters, 0u);
  finish = true;  // lets the thread release and finish
  waiter.join();
  EXPECT_TRUE(waiter_status.ok()) << waiter_status;
  std::printf("live waiter served %s after the release\n", absl::FormatDuration(latency).c_str());

  EXPECT_EQ(table().ConnectionCount(key), 0u);
  EXPECT_TRUE(table().Snapshot().empty());
  EXPECT_EQ(table().Stats().owners, 2u);
  audit = table().Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

}  // namespace
}  // namespace connthrottle::testing
