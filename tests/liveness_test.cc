// Whether an owner is alive, judged where pids do not name processes the way
// the table expects (issue 13, findings 3 and 4): under hidepid=2, in another
// PID namespace, and without /proc. A live owner must never be reclaimed on
// a guess, and a process whose death its peers could not tell from its life
// must not register in a table that reclaims dead owners.
//
// The children set up their surroundings with real namespaces and mounts
// (unshare, mount), which needs root or user namespaces; a test is skipped,
// saying why, where the machine allows neither. Children leave via _exit,
// with the codes below, and never use gtest.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"
#include "tests/testing/heap_table.h"
#include "tests/testing/shared_table.h"

namespace connthrottle {
namespace {

using ::connthrottle::testing::Key;
using ::connthrottle::testing::SharedTable;
using ::connthrottle::testing::WaitForExit;

// Exit codes of the children.
constexpr int kPassed = 0;
constexpr int kFailed = 1;
constexpr int kCannotSetUp = 77;  // the machine does not allow the set-up

// A table in shared anonymous memory: forked children see the parent's.
TableOptions Options(bool reclaim) {
  return TableOptions{.capacity = 8, .max_owners = 8, .reclaim_dead_owners = reclaim};
}

// Runs `body` in a forked child and returns its exit code (or -signal).
// The child prints why it could not set up or why it failed to stderr.
int InChild(const std::function<int()>& body) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) return -1000;
  if (pid == 0) _exit(body());
  return WaitForExit(pid);
}

int CannotSetUp(const char* what) {
  std::fprintf(stderr, "cannot set up: %s: %s\n", what, strerror(errno));
  return kCannotSetUp;
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "child: %s\n", why.c_str());
  return kFailed;
}

// A fresh /proc in a mount namespace of our own (so the machine's /proc is
// untouched), for the PID namespace we are in, with `options`.
int MountOwnProc(const char* options) {
  if (unshare(CLONE_NEWNS) != 0) return CannotSetUp("unshare(CLONE_NEWNS)");
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return CannotSetUp("making / private");
  }
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options) != 0) {
    return CannotSetUp("mounting proc");
  }
  return kPassed;
}

#define EXPECT_CHILD_PASSED(code)                                                     \
  do {                                                                                \
    const int child_code = (code);                                                    \
    if (child_code == kCannotSetUp) GTEST_SKIP() << "the machine refused the set-up"; \
    EXPECT_EQ(child_code, kPassed) << "see the child's stderr above";                 \
  } while (0)

// hidepid=2: another user's processes have no /proc entry at all, as if
// they had exited. A live owner of another user must not look dead.
TEST(LivenessTest, OwnerThatHidepidHidesIsNotReclaimed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: mounts /proc and changes user";
  SharedTable table(Options(/*reclaim=*/true));
  std::unique_ptr<Owner> parent = *table->RegisterOwner();
  Slot held = *parent->TryAcquire(Key("k"), Limit::AtMost(1));
  const pid_t parent_pid = getpid();

  EXPECT_CHILD_PASSED(InChild([&] {
    if (int code = MountOwnProc("hidepid=2"); code != kPassed) return code;
    if (setgid(65534) != 0 || setuid(65534) != 0) return CannotSetUp("becoming nobody");
    // The parent (root) is hidden from us now.
    const std::string path = "/proc/" + std::to_string(parent_pid) + "/stat";
    if (access(path.c_str(), F_OK) == 0 || errno != ENOENT) {
      errno = 0;
      return CannotSetUp("hidepid=2 does not hide the parent");
    }
    absl::StatusOr<std::unique_ptr<Owner>> child = table->RegisterOwner();
    if (!child.ok()) return Fail("register: " + child.status().ToString());
    const int reclaimed = (*child)->ReclaimDeadOwners();
    if (reclaimed != 0) return Fail(std::to_string(reclaimed) + " live owner(s) reclaimed");
    if (table->ConnectionCount(Key("k")) != 1) return Fail("the parent's slot left the count");
    if ((*child)->TryAcquire(Key("k"), Limit::AtMost(1)).ok()) {
      return Fail("a slot was admitted over the limit");
    }
    return kPassed;
  }));
  EXPECT_EQ(table->ConnectionCount(Key("k")), 1u);
  EXPECT_EQ(table->Stats().dead_owners_reclaimed, 0u);
}

// A process in another PID namespace (a container sharing the segment) has
// pids that name other processes, or none, in the table's namespace. With
// reclamation it must not register: had it registered, the parent would
// judge it by a pid that is not its own, and it would judge the parent by a
// pid its own /proc does not show.
TEST(LivenessTest, OwnerInAnotherPidNamespaceIsRefusedWhereDeadOwnersAreReclaimed) {
  SharedTable table(Options(/*reclaim=*/true));
  std::unique_ptr<Owner> parent = *table->RegisterOwner();
  Slot held = *parent->TryAcquire(Key("k"), Limit::AtMost(1));

  EXPECT_CHILD_PASSED(InChild([&] {
    if (unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0) {
      return CannotSetUp("unshare(CLONE_NEWUSER | CLONE_NEWPID)");
    }
    // The first child after unshare is pid 1 of the new namespace; with a
    // /proc of its own, as in a container.
    return InChild([&] {
      if (getpid() != 1) return Fail("not pid 1 of a new PID namespace");
      if (int code = MountOwnProc(nullptr); code != kPassed) return code;
      absl::StatusOr<std::unique_ptr<Owner>> child = table->RegisterOwner();
      if (child.ok()) {
        (void)(*child)->ReclaimDeadOwners();  // what a registered owner would do
        return Fail("registered from another PID namespace");
      }
      if (!absl::IsFailedPrecondition(child.status()) ||
          !absl::StrContains(child.status().message(), "PID namespace")) {
        return Fail("refused, but not for its namespace: " + child.status().ToString());
      }
      return kPassed;
    });
  }));
  EXPECT_EQ(parent->ReclaimDeadOwners(), 0);
  EXPECT_EQ(table->ConnectionCount(Key("k")), 1u);
  EXPECT_EQ(table->Stats().dead_owners_reclaimed, 0u);
  absl::Status audit = table->Audit();
  EXPECT_TRUE(audit.ok()) << audit;
}

// Without reclamation nobody judges anyone: namespaces do not matter, and
// the table is shared across them.
TEST(LivenessTest, TableWithoutReclamationIsSharedAcrossPidNamespaces) {
  SharedTable table(Options(/*reclaim=*/false));
  EXPECT_CHILD_PASSED(InChild([&] {
    if (unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0) {
      return CannotSetUp("unshare(CLONE_NEWUSER | CLONE_NEWPID)");
    }
    return InChild([&] {
      if (int code = MountOwnProc(nullptr); code != kPassed) return code;
      absl::StatusOr<std::unique_ptr<Owner>> child = table->RegisterOwner();
      if (!child.ok()) return Fail("register: " + child.status().ToString());
      absl::StatusOr<Slot> slot = (*child)->TryAcquire(Key("k"), Limit::AtMost(1));
      if (!slot.ok()) return Fail("acquire: " + slot.status().ToString());
      if (table->ConnectionCount(Key("k")) != 1) return Fail("the slot was not counted");
      return kPassed;
    });
  }));
  EXPECT_EQ(table->ConnectionCount(Key("k")), 0u);  // given back when the child let go
}

// Without a /proc showing it, a process's start time is unknown, and a dead
// owner known by its pid alone would look alive for as long as the pid is
// reused. Such a process must not register where dead owners are reclaimed,
// nor initialise such a table.
TEST(LivenessTest, ProcessWithoutProcIsRefusedWhereDeadOwnersAreReclaimed) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: mounts over /proc";
  SharedTable table(Options(/*reclaim=*/true));
  EXPECT_CHILD_PASSED(InChild([&] {
    if (unshare(CLONE_NEWNS) != 0) return CannotSetUp("unshare(CLONE_NEWNS)");
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return CannotSetUp("making / private");
    }
    if (mount("tmpfs", "/proc", "tmpfs", 0, nullptr) != 0) return CannotSetUp("hiding /proc");
    absl::StatusOr<std::unique_ptr<Owner>> child = table->RegisterOwner();
    if (child.ok()) return Fail("registered without /proc");
    if (!absl::IsFailedPrecondition(child.status())) return Fail(child.status().ToString());
    std::fprintf(stderr, "child, as expected: %s\n", child.status().ToString().c_str());

    testing::HeapTable plain;  // no reclamation: fine without /proc
    if (!plain->RegisterOwner().ok()) return Fail("no /proc refused without reclamation");
    const TableOptions reclaiming{.capacity = 8, .max_owners = 8, .reclaim_dead_owners = true};
    const size_t bytes = *CounterTable::RequiredBytes(reclaiming);
    void* region = aligned_alloc(64, bytes);
    std::memset(region, 0xAB, bytes);
    absl::StatusOr<CounterTable> made = CounterTable::Initialize(region, bytes, reclaiming);
    const bool untouched = static_cast<unsigned char*>(region)[0] == 0xAB;
    free(region);
    if (made.ok()) return Fail("a reclaiming table initialised without /proc");
    if (!untouched) return Fail("a refused Initialize wrote to the region");
    return kPassed;
  }));
}

}  // namespace
}  // namespace connthrottle
