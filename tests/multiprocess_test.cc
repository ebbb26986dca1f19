// Forked processes share one named segment and hammer a few keys with small
// limits — optional, waiting and reserved acquires mixed — while the parent
// samples the table and every process's own account of what it holds, and
// fails on any moment where a key has more non-forced slots than its limit.

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/owner.h"
#include "connthrottle/reservation_ledger.h"
#include "connthrottle/shared_segment.h"
#include "gtest/gtest.h"

namespace connthrottle {
namespace {

constexpr int kProcesses = 8;
constexpr int kKeys = 3;
constexpr uint32_t kLimit = 2;
// Keys whose counts fall to zero constantly (FallingKeysStayExact): more of
// them than the table has entries, so that entries are dropped and reused.
constexpr int kFallingKeys = 12;
constexpr uint32_t kFallingCapacity = 8;
constexpr int kMaxKeys = kFallingKeys;

// Shared with the children through an anonymous MAP_SHARED mapping: what the
// processes themselves believe they hold, and what went wrong.
struct Truth {
  std::atomic<int> held[kMaxKeys];  // non-forced slots held, per key
  std::atomic<int> peak[kMaxKeys];  // the most ever held at once, per key
  std::atomic<long> granted;        // slots granted (FallingKeysStayExact)
  std::atomic<int> over_limit;      // times a process saw more than kLimit held
  std::atomic<int> errors;          // unexpected statuses
  std::atomic<long> operations;
  // The opening of StrictLimitAcrossForkedProcesses (RunChild).
  std::atomic<int> opening_held;  // slots the openers hold
  // The others, refused while every key is full (FallingKeysStayExact:
  // openers done).
  std::atomic<int> opening_refused;
};

NodeKey KeyOf(int k) { return *NodeKey::Create(absl::StrCat("worker-", k), 5432, 1); }

void Hold(Truth& truth, int k) {
  const int now = truth.held[k].fetch_add(1) + 1;
  if (now > static_cast<int>(kLimit)) truth.over_limit.fetch_add(1);
  int peak = truth.peak[k].load();
  while (now > peak && !truth.peak[k].compare_exchange_weak(peak, now)) {
  }
}

void Drop(Truth& truth, int k) { truth.held[k].fetch_sub(1); }

bool Expected(const absl::Status& s) {
  return s.ok() || absl::IsResourceExhausted(s) || absl::IsDeadlineExceeded(s);
}

// The opening, which brings every key to its limit whatever the machine's
// speed: children 0..kKeys*kLimit-1 each take a slot of key child / kLimit
// and hold it until every key is full and each other child has been refused
// one optional acquire of every key. Then all go on to the random mix.
constexpr int kOpeners = kKeys * static_cast<int>(kLimit);
static_assert(kOpeners < kProcesses, "the opening needs a child that is refused");

void AwaitCount(const std::atomic<int>& count, int n) {
  while (count.load() < n) sched_yield();
}

void Opening(Owner& owner, Truth& truth, int child, const std::vector<NodeKey>& keys) {
  if (child < kOpeners) {
    const int k = child / static_cast<int>(kLimit);
    absl::StatusOr<Slot> s = owner.TryAcquire(keys[k], Limit::AtMost(kLimit));
    if (!s.ok()) {
      truth.errors.fetch_add(1);
      truth.opening_held.fetch_add(1);  // let the others go on
      return;
    }
    Hold(truth, k);
    truth.opening_held.fetch_add(1);
    AwaitCount(truth.opening_refused, kProcesses - kOpeners);
    Drop(truth, k);
    return;
  }
  AwaitCount(truth.opening_held, kOpeners);
  for (int k = 0; k < kKeys; ++k) {
    absl::StatusOr<Slot> s = owner.TryAcquire(keys[k], Limit::AtMost(kLimit));
    if (!absl::IsResourceExhausted(s.status())) truth.errors.fetch_add(1);
  }
  truth.opening_refused.fetch_add(1);
}

// One child's life: attach by name, the opening, mix every kind of acquire,
// leave.
int RunChild(const std::string& segment, Truth& truth, int child, absl::Duration run_for) {
  absl::StatusOr<std::unique_ptr<SharedSegment>> shm = SharedSegment::Attach(segment);
  if (!shm.ok()) return 10;
  absl::StatusOr<std::unique_ptr<Owner>> owner = (*shm)->table().RegisterOwner();
  if (!owner.ok()) return 11;
  std::mt19937 rng(1000 + child);
  std::vector<NodeKey> keys;
  for (int k = 0; k < kKeys; ++k) keys.push_back(KeyOf(k));
  Opening(**owner, truth, child, keys);
  const absl::Time end = absl::Now() + run_for;
  auto limit = [](const NodeKey&) { return Limit::AtMost(kLimit); };
  while (absl::Now() < end) {
    truth.operations.fetch_add(1);
    int k = static_cast<int>(rng() % kKeys);
    switch (rng() % 3) {
      case 0: {  // optional
        absl::StatusOr<Slot> s = (*owner)->TryAcquire(keys[k], Limit::AtMost(kLimit));
        if (!Expected(s.status())) truth.errors.fetch_add(1);
        if (s.ok()) {
          Hold(truth, k);
          Drop(truth, k);
        }
        break;
      }
      case 1: {  // waiting, with a short deadline
        absl::StatusOr<Slot> s = (*owner)->AcquireWaiting(keys[k], Limit::AtMost(kLimit),
                                                          absl::Now() + absl::Milliseconds(20));
        if (!Expected(s.status())) truth.errors.fetch_add(1);
        if (s.ok()) {
          Hold(truth, k);
          Drop(truth, k);
        }
        break;
      }
      case 2: {  // reserve two nodes in global order, use one, end the transaction
        ReservationLedger ledger(**owner);
        int other = (k + 1 + static_cast<int>(rng() % (kKeys - 1))) % kKeys;
        std::vector<ReservationKey> targets = {{keys[k], 10}, {keys[other], 10}};
        absl::Status s = ledger.ReserveAll(
            targets, limit, absl::Now() + absl::Milliseconds(30), [] { return false; },
            [](const ReservationKey&) { return false; });
        if (!Expected(s)) truth.errors.fetch_add(1);
        if (s.ok()) {
          Hold(truth, k);
          Hold(truth, other);
          std::optional<Slot> used = ledger.Consume({keys[k], 10});
          if (!used.has_value()) truth.errors.fetch_add(1);
          Drop(truth, other);  // given back by EndTransaction below
          ledger.EndTransaction();
          Drop(truth, k);
        }
        break;
      }
    }
  }
  return 0;
}

NodeKey FallingKey(int k) { return *NodeKey::Create(absl::StrCat("falling-", k), 5432, 1); }

// One child of FallingKeysStayExact: takes a slot of a random key, holds it
// for a moment and gives it back, so that every key's count keeps falling to
// zero and rising again, while the other processes do the same on the same
// keys. A process holds at most one slot, so the table (kFallingCapacity
// entries, kProcesses processes) is never full of busy keys: every slot is
// counted, and keys beyond the capacity take the places of zombies.
int RunFallingChild(const std::string& segment, Truth& truth, int seed, absl::Duration run_for) {
  absl::StatusOr<std::unique_ptr<SharedSegment>> shm = SharedSegment::Attach(segment);
  if (!shm.ok()) return 10;
  absl::StatusOr<std::unique_ptr<Owner>> owner = (*shm)->table().RegisterOwner();
  if (!owner.ok()) return 11;
  std::mt19937 rng(seed);
  std::vector<NodeKey> keys;
  for (int k = 0; k < kFallingKeys; ++k) keys.push_back(FallingKey(k));
  if (seed - 2000 < static_cast<int>(kLimit)) {
    // The opening: the first kLimit children hold key 0 together once, so
    // that a key reaches its limit however slow the machine; the others
    // start when they are done.
    absl::StatusOr<Slot> s = (*owner)->TryAcquire(keys[0], Limit::AtMost(kLimit));
    if (s.ok()) {
      truth.granted.fetch_add(1);
      Hold(truth, 0);
    } else {
      truth.errors.fetch_add(1);
    }
    truth.opening_held.fetch_add(1);
    AwaitCount(truth.opening_held, static_cast<int>(kLimit));
    if (s.ok()) Drop(truth, 0);
    truth.opening_refused.fetch_add(1);  // here: openers done
  }
  AwaitCount(truth.opening_refused, static_cast<int>(kLimit));
  const absl::Time end = absl::Now() + run_for;
  while (absl::Now() < end) {
    truth.operations.fetch_add(1);
    const int k = static_cast<int>(rng() % kFallingKeys);
    absl::StatusOr<Slot> s = (*owner)->TryAcquire(keys[k], Limit::AtMost(kLimit));
    if (!Expected(s.status())) truth.errors.fetch_add(1);
    if (!s.ok()) continue;
    if (s->kind() != SlotKind::kConnection) truth.errors.fetch_add(1);  // uncounted: table full
    truth.granted.fetch_add(1);
    Hold(truth, k);
    for (int i = static_cast<int>(rng() % 3); i > 0; --i) sched_yield();
    Drop(truth, k);
  }
  return 0;
}

// The checker of both tests: samples `table` until `children` forked
// processes have exited, counting samples and counts above `limit`, and
// showing each sampled key to `on_key`. Returns the children's exit codes.
struct Checked {
  long samples = 0, violations = 0;
  std::vector<int> exit_codes;
};
Checked SampleUntilChildrenExit(const CounterTable& table, int children, uint32_t limit,
                                const std::function<void(const KeyStats&)>& on_key) {
  Checked c;
  while (children > 0) {
    for (const KeyStats& k : table.Snapshot()) {
      ++c.samples;
      if (k.connections - k.forced > limit) ++c.violations;
      on_key(k);
    }
    int status = 0;
    if (waitpid(-1, &status, WNOHANG) > 0) {
      --children;
      c.exit_codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status));
    }
  }
  return c;
}

TEST(MultiProcessTest, FallingKeysStayExact) {
  const std::string name = absl::StrCat("connthrottle-mp-falling-", getpid());
  (void)SharedSegment::Remove(name);
  absl::StatusOr<std::unique_ptr<SharedSegment>> shm =
      SharedSegment::CreateOrAttach(name, TableOptions{kFallingCapacity, 64});
  ASSERT_TRUE(shm.ok()) << shm.status();
  CounterTable table = (*shm)->table();
  void* mem =
      mmap(nullptr, sizeof(Truth), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  Truth& truth = *new (mem) Truth();

  for (int i = 0; i < kProcesses; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(RunFallingChild(name, truth, 2000 + i, absl::Seconds(3)));
  }
  const Checked checked =
      SampleUntilChildrenExit(table, kProcesses, kLimit, [](const KeyStats&) {});
  long samples = checked.samples, table_violations = checked.violations;
  const std::vector<int>& exit_codes = checked.exit_codes;
  for (int code : exit_codes) EXPECT_EQ(code, 0);
  EXPECT_EQ(table_violations, 0);
  EXPECT_EQ(truth.over_limit.load(), 0);
  EXPECT_EQ(truth.errors.load(), 0);
  int keys_at_limit = 0;
  for (int i = 0; i < kFallingKeys; ++i) {
    EXPECT_EQ(truth.held[i].load(), 0);
    if (truth.peak[i].load() == static_cast<int>(kLimit)) ++keys_at_limit;
  }
  EXPECT_GT(keys_at_limit, 0) << "no key ever reached its limit: the test proves nothing";
  EXPECT_TRUE(table.Snapshot().empty());
  const TableStats stats = table.Stats();
  EXPECT_EQ(stats.entries_in_use, 0u);
  EXPECT_EQ(stats.owners, 0u);
  EXPECT_EQ(stats.full_table_events, 0u);
  EXPECT_GT(stats.entries_dropped, 0u) << "no entry was ever reused for another key";
  // Exact: every grant counted once, whether its entry was revived, kept or
  // dropped and reused since.
  EXPECT_EQ(stats.acquired, static_cast<uint64_t>(truth.granted.load()));
  EXPECT_TRUE(table.Audit().ok()) << table.Audit();
  std::printf("%ld operations, %ld granted, %ld samples, %lu entries created, %lu dropped\n",
              truth.operations.load(), truth.granted.load(), samples,
              static_cast<unsigned long>(stats.entries_created),
              static_cast<unsigned long>(stats.entries_dropped));
  munmap(mem, sizeof(Truth));
  EXPECT_TRUE(SharedSegment::Remove(name).ok());
}

TEST(MultiProcessTest, StrictLimitAcrossForkedProcesses) {
  const std::string name = absl::StrCat("connthrottle-mp-", getpid());
  (void)SharedSegment::Remove(name);
  absl::StatusOr<std::unique_ptr<SharedSegment>> shm =
      SharedSegment::CreateOrAttach(name, TableOptions{16, 64});
  ASSERT_TRUE(shm.ok()) << shm.status();
  CounterTable table = (*shm)->table();

  void* mem =
      mmap(nullptr, sizeof(Truth), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  Truth& truth = *new (mem) Truth();

  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(RunChild(name, truth, i, absl::Seconds(3)));
    children.push_back(pid);
  }

  // The checker: sample until every child has exited.
  uint32_t peak[kKeys] = {};
  const Checked checked =
      SampleUntilChildrenExit(table, kProcesses, kLimit, [&](const KeyStats& k) {
        for (int i = 0; i < kKeys; ++i) {
          if (k.host == absl::StrCat("worker-", i)) peak[i] = std::max(peak[i], k.connections);
        }
      });
  long samples = checked.samples, table_violations = checked.violations;
  const std::vector<int>& exit_codes = checked.exit_codes;

  for (int code : exit_codes) EXPECT_EQ(code, 0);
  EXPECT_GT(samples, 100);
  EXPECT_EQ(table_violations, 0);
  EXPECT_EQ(truth.over_limit.load(), 0);
  EXPECT_EQ(truth.errors.load(), 0);
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_LE(peak[i], kLimit);
    // The processes' own record, not the sampled one: a slow sampler (under
    // a sanitizer, on a busy machine) may miss the moments at the limit. The
    // opening brings every key there, however slow the machine.
    EXPECT_EQ(truth.peak[i].load(), static_cast<int>(kLimit))
        << "the load never reached the limit: the test proves nothing";
    EXPECT_EQ(truth.held[i].load(), 0);
  }
  // Everything given back: no busy key, every counter zero, books balanced.
  EXPECT_TRUE(table.Snapshot().empty());
  TableStats stats = table.Stats();
  EXPECT_EQ(stats.entries_in_use, 0u);
  EXPECT_EQ(stats.owners, 0u);
  EXPECT_GT(stats.waited, 0u) << "no waiting acquire ever queued";
  EXPECT_TRUE(table.Audit().ok()) << table.Audit();
  std::printf("%ld operations in %d processes, %ld samples, %lu acquired, %lu waited\n",
              truth.operations.load(), kProcesses, samples,
              static_cast<unsigned long>(stats.acquired), static_cast<unsigned long>(stats.waited));
  munmap(mem, sizeof(Truth));
  EXPECT_TRUE(SharedSegment::Remove(name).ok());
}

}  // namespace
}  // namespace connthrottle
