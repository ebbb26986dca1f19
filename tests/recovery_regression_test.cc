// Regression tests for bugs found by an adversarial review of the recovery
// protocol; each failed before its fix. Children never use gtest and leave
// via _exit.
// Some tests simulate a process killed at one exact instruction by writing the
// state that instruction leaves (documented in each test).

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "core/internal/layout.h"
#include "gtest/gtest.h"

namespace connthrottle {
namespace {

// Polls `flag` for at most `limit`: whether it became true.
bool AwaitFlag(const std::atomic<bool>& flag, absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  while (!flag.load() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  return flag.load();
}

// A thread of the test hangs: it cannot be stopped and uses the test's state,
// so the test fails and the process ends here.
[[noreturn]] void Hung(const char* what) {
  ADD_FAILURE() << what;
  std::fflush(stdout);
  _exit(1);
}

using internal::TableHeader;

struct Shared {
  void* region;
  size_t bytes;
  CounterTable table;
};

Shared MakeShared(TableOptions o) {
  size_t bytes = *CounterTable::RequiredBytes(o);
  void* region = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return {region, bytes, *CounterTable::Initialize(region, bytes, o)};
}

TableHeader* Header(const Shared& s) { return static_cast<TableHeader*>(s.region); }

NodeKey K(const char* host) { return *NodeKey::Create(host, 5432, 1); }

int FindEntry(const Shared& s) {
  for (uint32_t e = 0; e < Header(s)->capacity; ++e) {
    if (internal::EntryAt(Header(s), e).in_use.load()) return static_cast<int>(e);
  }
  return -1;
}

char ProcState(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(f)), {});
  size_t p = all.rfind(')');
  return p == std::string::npos ? '?' : all[p + 2];
}

// 1. A waiter killed while it holds the entry lock (a real SIGKILL from inside
// limit_now(), which AcquireWaiting calls under the lock) leaves a phantom
// waiter: LockEntry's takeover recomputes only Entry::word, not
// Entry::waiters/forced/reserved, and also clears the dead owner's
// waiting_on/in_flight, so the later RecoverRecord skips the entry.
TEST(RecoveryRegressionTest, LockTakeoverRecomputesEveryField) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 4, .reclaim_dead_owners = true});
  auto p = *s.table.RegisterOwner();
  const NodeKey key = K("w");
  absl::StatusOr<Slot> held = p->TryAcquire(key, Limit::AtMost(1));
  ASSERT_TRUE(held.ok());
  pid_t pid = fork();
  if (pid == 0) {
    auto c = *s.table.RegisterOwner();
    int calls = 0;
    AcquireOptions o;
    o.poll_interval = absl::Milliseconds(1);
    (void)c->AcquireWaiting(
        key,
        [&] {
          if (++calls == 3) raise(SIGKILL);  // 3rd call: re-check, entry locked
          return Limit::AtMost(1);
        },
        absl::Now() + absl::Seconds(5), [] { return false; }, o);
    _exit(3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  held->Release();  // takes the dead waiter's lock over
  p->ReclaimDeadOwners();
  EXPECT_EQ(s.table.Stats().dead_owners_reclaimed, 1u);
  // Nobody holds or waits: a limit of 1 must admit.
  absl::StatusOr<Slot> again = p->TryAcquire(key, Limit::AtMost(1));
  EXPECT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(s.table.Audit().ok()) << s.table.Audit();
  for (const KeyStats& k : s.table.Snapshot()) {
    EXPECT_EQ(k.waiters, 0u) << "phantom waiter on " << k.host;
  }
}

// 2. Adoption deadlock: the adopted record's previous process died holding the
// structure lock (state right after LockStructure's CAS in FindOrInsert) and
// held the only slot of a key. RecoverAdoptedRecord recomputes that entry to a
// zombie and calls DropIfZombie -> LockStructure, whose holder id is now its
// own id; HolderIsDead(own id) is false, so it spins forever.
TEST(RecoveryRegressionTest, AdoptionTakesOverStructureLockLeftByPredecessor) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 1, .reclaim_dead_owners = true});
  pid_t pid = fork();
  if (pid == 0) {
    auto c = *s.table.RegisterOwner();
    absl::StatusOr<Slot> slot = c->TryAcquire(K("a"), Limit::AtMost(5));
    if (!slot.ok()) _exit(2);
    Header(s)->structure_lock.store(internal::LockWord(c->id(), 7));  // killed here
    raise(SIGKILL);
  }
  waitpid(pid, nullptr, 0);
  std::atomic<bool> done{false};
  std::thread t([&] {
    auto adopted = s.table.RegisterOwner();
    EXPECT_TRUE(adopted.ok()) << adopted.status();
    done = true;
  });
  if (!AwaitFlag(done, absl::Seconds(30)))
    Hung("RegisterOwner (adoption) still spinning after 30 s");
  t.join();
}

// 3. AwaitInFlight checks liveness once, then spins while in_flight names the
// entry. An owner killed inside the hot path (between owner.cc's
// in_flight.store(e + 1) and its clear) after that check hangs the waiter
// forever, holding the structure lock and the entry lock.
TEST(RecoveryRegressionTest, WaitForInFlightOwnerEndsWhenItDies) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 4, .reclaim_dead_owners = true});
  auto p = *s.table.RegisterOwner();
  absl::StatusOr<Slot> slot = p->TryAcquire(K("a"), Limit::AtMost(5));
  ASSERT_TRUE(slot.ok());
  const int e = FindEntry(s);
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    auto c = *s.table.RegisterOwner();
    // In the hot path: in_flight set, compare-and-swap not yet made.
    internal::OwnerAt(Header(s), c->id()).in_flight.store(e + 1);
    char x = 1;
    (void)!write(pipefd[1], &x, 1);
    for (;;) pause();
  }
  close(pipefd[1]);  // a child that dies early ends the read below
  char x;
  ASSERT_EQ(read(pipefd[0], &x, 1), 1);
  std::atomic<bool> done{false};
  std::thread t([&] {
    slot->Release();  // last slot: zombie -> DropIfZombie -> RetireLocked -> AwaitInFlight
    done = true;
  });
  // Aims at the regression's interleaving (the releaser judged the child
  // alive before it died); the assertion below holds whichever comes first.
  absl::SleepFor(absl::Milliseconds(300));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  if (!AwaitFlag(done, absl::Seconds(30))) {
    Hung("Release() still spinning 30 s after the in-flight owner died");
  }
  t.join();
}

// 4. A reclaimer that cannot open /proc/<pid>/stat (EMFILE: at its fd limit,
// common for connection-heavy processes) judges every live owner dead and
// reclaims its slots; the key then exceeds its limit.
TEST(RecoveryRegressionTest, UnreadableProcDoesNotMeanDead) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 4, .reclaim_dead_owners = true});
  auto p = *s.table.RegisterOwner();
  const NodeKey key = K("a");
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    auto c = *s.table.RegisterOwner();
    absl::StatusOr<Slot> slot = c->TryAcquire(key, Limit::AtMost(1));
    char x = slot.ok();
    (void)!write(pipefd[1], &x, 1);
    for (;;) pause();
  }
  close(pipefd[1]);  // a child that dies early ends the read below
  char x = 0;
  ASSERT_EQ(read(pipefd[0], &x, 1), 1);
  ASSERT_EQ(x, 1);
  std::vector<int> fds;
  for (int fd; (fd = dup(0)) >= 0;) fds.push_back(fd);  // reach EMFILE
  int reclaimed = p->ReclaimDeadOwners();
  for (int fd : fds) close(fd);
  EXPECT_EQ(reclaimed, 0) << "a live process's owner was reclaimed";
  absl::StatusOr<Slot> second = p->TryAcquire(key, Limit::AtMost(1));
  EXPECT_FALSE(second.ok()) << "limit 1 exceeded: the live child still holds its slot";
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// 5. A process whose main thread called pthread_exit shows state Z in
// /proc/<pid>/stat while its other threads run; IsAlive() treats Z as dead.
TEST(RecoveryRegressionTest, ProcessWhoseMainThreadExitedIsAlive) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 4, .reclaim_dead_owners = true});
  auto p = *s.table.RegisterOwner();
  const NodeKey key = K("a");
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    std::thread([&] {
      auto c = *s.table.RegisterOwner();
      absl::StatusOr<Slot> slot = c->TryAcquire(key, Limit::AtMost(1));
      char x = slot.ok();
      (void)!write(pipefd[1], &x, 1);
      absl::SleepFor(absl::Milliseconds(500));
      x = 2;  // proves the process is still running after the reclamation
      (void)!write(pipefd[1], &x, 1);
      for (;;) pause();
    }).detach();
    syscall(SYS_exit, 0);  // main thread only, as pthread_exit ends (no unwinding)
  }
  close(pipefd[1]);  // a child that dies early ends the reads below
  char x = 0;
  ASSERT_EQ(read(pipefd[0], &x, 1), 1);
  ASSERT_EQ(x, 1);
  // The main thread's exit shows in /proc shortly after the write.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (ProcState(pid) != 'Z' && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_EQ(ProcState(pid), 'Z');
  EXPECT_EQ(p->ReclaimDeadOwners(), 0) << "a running process's owner was reclaimed";
  absl::StatusOr<Slot> second = p->TryAcquire(key, Limit::AtMost(1));
  EXPECT_FALSE(second.ok()) << "limit 1 exceeded: the child's thread still holds its slot";
  ASSERT_EQ(read(pipefd[0], &x, 1), 1);
  EXPECT_EQ(x, 2);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// 6. Audit() claims its count checks are exact at any time, but hot paths
// change Entry::word without bumping Entry::version, so an acquire+release
// between Audit's two word reads (ABA) is invisible and a cell read in the
// middle is summed against the old count: a false DataLoss.
TEST(RecoveryRegressionTest, AuditIsExactUnderHotPathChurn) {
  Shared s = MakeShared({.capacity = 4, .max_owners = 64});
  const NodeKey key = K("a");
  auto a = *s.table.RegisterOwner();
  absl::StatusOr<Slot> keep = a->TryAcquire(key, Limit::AtMost(100));  // count stays >= 1
  ASSERT_TRUE(keep.ok());
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    auto b = *s.table.RegisterOwner();
    while (!stop) {
      absl::StatusOr<Slot> x = b->TryAcquire(key, Limit::AtMost(100));
    }
  });
  int bad = 0;
  std::string first;
  const absl::Time end = absl::Now() + absl::Seconds(3);
  while (absl::Now() < end) {
    absl::Status st = s.table.Audit();
    if (!st.ok() && bad++ == 0) first = std::string(st.message());
  }
  stop = true;
  churn.join();
  EXPECT_EQ(bad, 0) << first;
}

}  // namespace
}  // namespace connthrottle
