// The structure lock after its holder died (issue 13, finding 2): a waiter
// that judged the dead holder may take the lock over only from that holder,
// never from the process that has since adopted the dead holder's record.
// Two things see to it: the adopter waits until no live owner judges its
// record before it does anything (so it cannot take the lock over, as its
// record's new owner, under the judge's feet), and every acquisition writes
// a word of its own (so a compare-and-swap against a word judged earlier
// fails once the lock has changed hands).
//
// Children leave via _exit and never use gtest.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
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

using ::connthrottle::testing::Key;
using ::connthrottle::testing::Pauses;
using ::connthrottle::testing::SharedTable;
constexpr Pauses::Role kWaiter = Pauses::kFirst;
constexpr Pauses::Role kAdopter = Pauses::kSecond;

class StructureLockTest : public ::testing::Test {
 protected:
  void TearDown() override { Pauses::Get().Uninstall(); }

  uint64_t StructureLockWord() const {
    return static_cast<internal::TableHeader*>(table_.region())->structure_lock.load();
  }

  SharedTable table_{TableOptions{.capacity = 8, .max_owners = 2, .reclaim_dead_owners = true}};
};

// Dies (SIGKILL) the moment it holds the structure lock.
void KillSelfWhenLocked(const char* point) {
  if (std::strcmp(point, "LockStructure.locked") == 0) raise(SIGKILL);
}

TEST_F(StructureLockTest, WaiterNeverTakesOverFromTheAdopterOfTheDeadHoldersRecord) {
  // Record 1: the waiter, in this process.
  std::unique_ptr<Owner> waiter = *table_->RegisterOwner();
  // Record 2: a process that dies holding the structure lock (inserting a key).
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    internal::test_hook.store(&KillSelfWhenLocked);
    absl::StatusOr<std::unique_ptr<Owner>> dying = table_->RegisterOwner();
    if (!dying.ok()) _exit(2);
    (void)(*dying)->TryAcquire(Key("a"), Limit::AtMost(5));
    _exit(3);  // not reached: killed inside the insert
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const uint64_t left_by_dead = StructureLockWord();
  ASSERT_EQ(internal::LockOwner(left_by_dead), 2u);

  Pauses& pauses = Pauses::Get();
  pauses.Install();
  // 1. The waiter needs the structure lock (a new key), judges its holder
  //    dead, and stops just before its takeover, with the dead holder's word
  //    in hand.
  pauses.Arm(kWaiter, "LockStructure.takeover");
  bool waiter_done = false;
  absl::StatusOr<Slot> b = absl::UnknownError("not acquired");
  std::thread w([&] {
    Pauses::role = kWaiter;
    b = waiter->TryAcquire(Key("b"), Limit::AtMost(5));
    pauses.Done(&waiter_done);
  });
  pauses.AwaitArrival(kWaiter);

  // 2. Another process (here a thread: its own registration) finds every
  //    record taken and adopts the dead one's. While the waiter judges that
  //    record, the adopter must not start: as the record's new owner it
  //    would take the lock over at once and hold it, and the waiter's
  //    compare-and-swap would then decide who else holds it.
  pauses.Arm(kAdopter, "RegisterOwner.awaits_judge");
  bool adopted = false;
  std::thread a([&] {
    Pauses::role = kAdopter;
    absl::StatusOr<std::unique_ptr<Owner>> adopter = table_->RegisterOwner();
    EXPECT_TRUE(adopter.ok()) << adopter.status();
    pauses.Done(&adopted);
  });
  const bool waited = pauses.AwaitArrivalOr(kAdopter, &adopted);
  EXPECT_TRUE(waited) << "the adopter started on the record while the waiter judged it";
  if (waited) pauses.Open(kAdopter);  // it goes on waiting for the judgement to end

  // 3. The waiter takes over the dead holder's lock, which nobody else holds.
  pauses.Arm(kWaiter, "LockStructure.took_over");
  pauses.Open(kWaiter);
  const bool took = pauses.AwaitArrivalOr(kWaiter, &waiter_done);
  EXPECT_TRUE(took) << "the waiter did not take over the dead holder's structure lock";
  if (took) {
    EXPECT_NE(StructureLockWord(), left_by_dead)
        << "the takeover wrote the same word as the dead holder's acquisition";
    EXPECT_EQ(pauses.Count("LockStructure.took_over"), 1) << "two owners took the lock over";
    pauses.Open(kWaiter);
  }
  a.join();
  w.join();
  EXPECT_EQ(pauses.Count("LockStructure.took_over"), 1) << "two owners took the lock over";
  pauses.Uninstall();

  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(StructureLockWord(), 0u);
  EXPECT_EQ(table_->ConnectionCount(Key("b")), 1u);
  absl::Status audit = table_->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

}  // namespace
}  // namespace connthrottle
