// reclaim.cc — giving back exactly what a dead process held.
//
// DEATH PROTOCOL (TableOptions::reclaim_dead_owners; the ledger, locks and
// in-flight markers are described at the top of owner_ops.cc)
// ==============
// Identity
//   An owner record's identity word holds (kOwnerAlive, pid, process start
//   time). A process is dead only when that is certain: /proc/<pid>/stat
//   shows another start time (the pid was reused) or a zombie with no other
//   thread left, or no process has the pid at all (/proc has no entry and
//   kill(pid, 0) says ESRCH: under hidepid=2 /proc hides other users' live
//   processes just as it hides gone ones). Anything else, a pid that exists
//   but cannot be read, is alive: never reclaim on a guess. Threads of one
//   process share its identity, and an owner never judges owners of its own
//   process.
//   A pid means something only in one PID namespace, and a start time only
//   where /proc shows it: so only processes of the namespace that
//   initialised the table, whose /proc shows them with a start time, may
//   register (process_identity.h, JudgeableSelfIdentity); they are the
//   judged and the judges.
// Who notices
//   Any live owner, with no daemon: on a refused optional acquire, on every
//   wait tick of a waiting acquire, every 1024 releases, on registration and
//   on unregistration — at most once per 200 ms across the table
//   (TableHeader::next_liveness_check_ns) — and whenever it has waited on an
//   entry lock long enough to ask whether its holder is alive.
// Claiming
//   The reclaimer swaps the dead owner's identity from the exact word it saw
//   to (kOwnerReclaiming, reclaimer id) with one compare-and-swap, so one
//   process reclaims a given death. If the reclaimer dies too, the next one
//   takes over from (kOwnerReclaiming, dead reclaimer) the same way.
// Reclaiming owner D
//   For every entry D has a cell on, is queued on or is in flight on: lock
//   the entry (taking the lock over if D held it: the word's stamp names D),
//   wait until no live owner is in flight on it, and recompute it
//   from the cells of live owners (owner_ops.cc, "Recovery"), which clears
//   D's cells, waiting_on and in_flight there. Wake its waiters. Then take
//   over the structure lock if D held it (rebuilding the index from the
//   entries), finish the reclamations D was running, and free D's record —
//   only then can another process register into it.
//   Why this is exact: an entry's counters are a function of the live cells.
//   D's operations — a hot-path compare-and-swap not yet in its cell, a
//   locked change half-written, a queue place — exist only as D's cells and
//   as effects the recomputation overwrites, so whatever instruction D died
//   at, it leaves nothing behind and takes nothing of anyone else's. Two
//   reclaimers of the same entry, one after the other, compute the same
//   values, so a reclamation cut short and resumed gives back nothing twice.
// Adopting
//   A process that registers while every record is taken may adopt the
//   record of a dead process: it swaps the identity to its own and recovers
//   every entry the record touches, treating the record's old cells as dead,
//   before its first operation (CounterTable::RegisterOwner).
// Judges
//   Whoever is about to take a lock over from a holder it judged dead
//   publishes the holder's id (OwnerRecord::judging) before it reads the
//   holder's identity, until its compare-and-swap is done. A process that
//   claims a record — free or adopted — waits, before anything else, until
//   no live owner judges that record (AwaitJudges): a new process on the
//   record could otherwise lock the entry again and again until the lock's
//   stamp, which keeps only a few sequence bits, came back to the one
//   judged, and the judge would take a live owner's lock (owner_ops.cc, "Why
//   the stamp"). The wait is a few instructions long, or ends when the
//   judge dies.

#include <time.h>
#include <unistd.h>

#include <climits>

#include "core/internal/backoff.h"
#include "core/internal/futex.h"
#include "core/internal/memory_order.h"
#include "core/internal/owner_ops.h"
#include "core/internal/process_identity.h"
#include "core/internal/test_hooks.h"

namespace connthrottle {

using internal::CellAt;
using internal::EntryAt;
using internal::OwnerAt;

namespace {

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The calling process's identity, re-read after a fork.
const internal::ProcessIdentity& Self() {
  static thread_local internal::ProcessIdentity self;
  if (self.pid != static_cast<uint32_t>(getpid())) self = internal::SelfIdentity();
  return self;
}

bool IsSelfProcess(uint64_t identity) {
  const internal::ProcessIdentity& self = Self();
  return internal::PidOf(identity) == (self.pid & 0x3fffff) &&
         internal::StartTimeOf(identity) == (self.start_time & 0xffffffffffULL);
}

}  // namespace

bool OwnerOps::OwnerIsAlive(uint32_t id) {
  if (id == owner_.id_) return true;
  uint64_t identity = OwnerAt(h_, id).identity.load(kAcquire);
  if (internal::StatusOf(identity) != internal::kOwnerAlive) return false;
  // Without reclamation no owner can die without the region dying with it.
  if (!reclaiming() || IsSelfProcess(identity)) return true;
  return internal::IsAlive(internal::PidOf(identity), internal::StartTimeOf(identity));
}

bool OwnerOps::HolderIsDead(uint32_t holder_id) {
  if (holder_id == 0 || holder_id > h_->max_owners || holder_id == owner_.id_) return false;
  // Publish whom we judge before reading its identity (the other side of
  // this fence is AwaitJudges'): from here on, a process that registers
  // into the holder's record waits until we are done.
  self_.judging.store(holder_id, kRelaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!OwnerIsAlive(holder_id)) return true;
  EndJudging();
  return false;
}

void OwnerOps::EndJudging() { self_.judging.store(0, std::memory_order_release); }

void OwnerOps::AwaitJudges() {
  if (!reclaiming()) return;  // no one judges, no one takes over
  // Our claim of the record (its identity) is ordered before the loads below.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    if (id == owner_.id_) continue;
    std::atomic<uint32_t>& judging = OwnerAt(h_, id).judging;
    if (judging.load(kAcquire) != owner_.id_) continue;
    internal::TestPoint("RegisterOwner.awaits_judge");
    // The judge is a few instructions from its compare-and-swap; a dead one
    // never makes it.
    internal::Backoff backoff;
    while (judging.load(kAcquire) == owner_.id_) {
      if (backoff.Pause() && !OwnerIsAlive(id)) break;
    }
  }
}

void OwnerOps::StartOnFreeRecord() {
  self_.in_flight.store(0, kRelaxed);
  self_.judging.store(0, kRelaxed);
  AwaitJudges();
}

void OwnerOps::MaybeReclaimDeadOwners(absl::Duration interval) {
  if (!reclaiming()) return;
  int64_t now = MonotonicNanos();
  int64_t next = h_->next_liveness_check_ns.load(kRelaxed);
  if (now < next) return;
  if (!h_->next_liveness_check_ns.compare_exchange_strong(
          next, now + absl::ToInt64Nanoseconds(interval), kRelaxed, kRelaxed)) {
    return;  // another process is checking now
  }
  ReclaimDeadOwners();
}

int OwnerOps::ReclaimDeadOwners() {
  if (!reclaiming()) return 0;
  int reclaimed = 0;
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    if (id == owner_.id_) continue;
    uint64_t identity = OwnerAt(h_, id).identity.load(kAcquire);
    switch (internal::StatusOf(identity)) {
      case internal::kOwnerAlive:
        if (OwnerIsAlive(id)) continue;
        break;
      case internal::kOwnerReclaiming:
        // Resume a reclamation whose reclaimer died.
        if (internal::ReclaimerOf(identity) == owner_.id_ ||
            OwnerIsAlive(internal::ReclaimerOf(identity))) {
          continue;
        }
        break;
      default:
        continue;
    }
    if (ReclaimOwner(id, identity)) ++reclaimed;
  }
  return reclaimed;
}

bool OwnerOps::ReclaimOwner(uint32_t dead, uint64_t observed) {
  internal::OwnerRecord& record = OwnerAt(h_, dead);
  const uint64_t mine = internal::EncodeReclaiming(owner_.id_);
  if (!record.identity.compare_exchange_strong(observed, mine, kAcquire, kRelaxed)) return false;
  uint64_t slots = RecoverRecord(dead);
  uint64_t expected = mine;
  record.identity.compare_exchange_strong(expected, 0, std::memory_order_release, kRelaxed);
  h_->dead_owners_reclaimed.fetch_add(1, kRelaxed);
  h_->slots_reclaimed.fetch_add(slots, kRelaxed);
  return true;
}

void OwnerOps::RecoverAdoptedRecord() {
  uint64_t slots = RecoverRecord(owner_.id_);
  h_->dead_owners_reclaimed.fetch_add(1, kRelaxed);
  h_->slots_reclaimed.fetch_add(slots, kRelaxed);
}

uint64_t OwnerOps::RecoverRecord(uint32_t dead) {
  const bool adopted = dead == owner_.id_;
  internal::OwnerRecord& record = OwnerAt(h_, dead);
  // Where the dead owner was in flight: possibly an entry where its cell does
  // not show the compare-and-swap it made, or whose lock it held.
  const uint32_t was_in_flight = record.in_flight.load(kAcquire);
  if (adopted) {
    // The adopted record's markers are the previous holder's. Clearing
    // in_flight lets anyone take over an entry lock that holder left, and
    // must come before we wait for judges of the record: a judge that took
    // such a lock over waits for that marker (AwaitInFlight).
    record.in_flight.store(0, std::memory_order_release);
    record.judging.store(0, kRelaxed);
    AwaitJudges();
  }
  // The structure lock first, if it held it: the entries are the truth and
  // the index is rebuilt from them (entry locks it left are taken over on
  // the way). Dropping zombies below needs the structure lock.
  std::atomic<uint64_t>& structure = h_->structure_lock;
  uint64_t current = structure.load(kAcquire);
  if (current != 0 && internal::LockOwner(current) == dead) {
    const uint64_t mine = NextStructureLockWord();
    if (structure.compare_exchange_strong(current, mine, kAcquire, kRelaxed)) {
      internal::TestPoint("LockStructure.took_over");
      RepairIndexLocked();
      UnlockStructure();
    }
  }
  uint64_t slots = 0;
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    internal::Cell& cell = CellAt(h_, dead, e);
    if (cell.hold.load(kAcquire) == 0 && cell.acquired.load(kRelaxed) == 0 &&
        record.waiting_on.load(kRelaxed) != e + 1 && was_in_flight != e + 1) {
      continue;
    }
    LockEntry(e);  // takes the lock over (and recomputes) if the dead owner held it
    EntryCounts counts = RecomputeLocked(e, /*exclude_self=*/adopted, &slots);
    internal::Entry& entry = EntryAt(h_, e);
    entry.wake_seq.fetch_add(1, std::memory_order_release);
    Unlock(e, counts);
    internal::FutexWake(entry.wake_seq, INT_MAX);
  }
  record.uncounted.store(0, kRelaxed);
  if (!adopted) {
    record.in_flight.store(0, kRelaxed);
    record.judging.store(0, kRelaxed);
  }
  // Reclamations it was running.
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    uint64_t identity = OwnerAt(h_, id).identity.load(kAcquire);
    if (internal::StatusOf(identity) != internal::kOwnerReclaiming ||
        internal::ReclaimerOf(identity) != dead) {
      continue;
    }
    if (adopted) {
      // Those reclamations are ours now; finish them.
      slots += RecoverRecord(id);
      uint64_t expected = identity;
      OwnerAt(h_, id).identity.compare_exchange_strong(expected, 0, std::memory_order_release,
                                                       kRelaxed);
      h_->dead_owners_reclaimed.fetch_add(1, kRelaxed);
    } else {
      ReclaimOwner(id, identity);
    }
  }
  return slots;
}

}  // namespace connthrottle
