// reclaim.cc — giving back exactly what a dead process held.
//
// DEATH PROTOCOL (TableOptions::reclaim_dead_owners; see owner_ops.cc for
// locks, intents and the invariant count == sum of hold cells)
// ==============
// Identity
//   An owner record's identity word holds (kAlive, pid, process start time).
//   A process is dead when /proc/<pid>/stat is gone, shows a zombie, or shows
//   another start time (the pid was reused). Threads of one process share its
//   identity, and an owner never judges owners of its own process.
// Who notices
//   Any live owner, with no daemon: on a refused optional acquire, on every
//   wait tick of a waiting acquire, every 1024 releases, on registration and
//   on unregistration, at most once per 200 ms across the table
//   (TableHeader::next_liveness_check_ns), and whenever it has spun on a lock
//   long enough to ask whether the holder is alive.
// Claiming
//   The reclaimer swaps the dead owner's identity from the exact word it saw
//   to (kReclaiming, reclaimer id) with one compare-and-swap, so only one
//   process reclaims a given death. If the reclaimer dies too, the next one
//   takes over from (kReclaiming, dead reclaimer) the same way. Reclaiming is
//   idempotent, so resuming a half-done reclamation is safe.
// Reclaiming owner D
//   1. Entry lock held by D (at most one): taken over. D's intent is re-applied
//      if it was published for that lock, otherwise nothing of D's operation
//      was applied (owner_ops.cc, "Commit and redo"). Either way the entry's
//      counters agree with every hold cell again.
//   2. Structure lock held by D: taken over, and the index is rebuilt from
//      the entries, which are the truth.
//   3. For every entry where D holds slots or is queued: under the entry lock,
//      count -= hold.total (and forced, reserved likewise), waiters -= 1 if D
//      was queued there, and D's hold cell and waiting_on are cleared — one
//      committed change, itself redo-logged, so a reclaimer that dies here is
//      resolved the same way. Waiters of the entry are woken.
//   4. Reclamations that D itself was running are taken over.
//   5. D's record is freed; only then can a new process register into it.
//   A process that registers while every record is taken may instead adopt
//   the record of a dead process: it swaps the identity to its own and runs
//   steps 1-4 on it before its first operation (CounterTable::RegisterOwner).
//   Because of 1, an operation of D cut short at any instruction ends either
//   entirely applied or not at all, and 3 then gives back exactly what the
//   hold cells say D held — no slot is lost and none is invented.

#include <time.h>
#include <unistd.h>

#include "internal/owner_ops.h"
#include "internal/process_identity.h"

namespace connthrottle {

using internal::EntryAt;
using internal::OwnerAt;

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;
constexpr auto kAcquire = std::memory_order_acquire;

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

bool OwnerOps::HolderIsDead(uint32_t holder_id) {
  if (holder_id == 0 || holder_id > h_->max_owners || holder_id == owner_.id_) return false;
  uint64_t identity = OwnerAt(h_, holder_id).identity.load(kAcquire);
  switch (internal::StatusOf(identity)) {
    case internal::kOwnerAlive:
      if (IsSelfProcess(identity)) return false;
      return !internal::IsAlive(internal::PidOf(identity), internal::StartTimeOf(identity));
    case internal::kOwnerReclaiming:
    case internal::kOwnerFree:
      // A record is reclaimed or freed only after its process died.
      return true;
  }
  return false;
}

void OwnerOps::MaybeReclaimDeadOwners(absl::Duration interval) {
  if ((h_->flags & internal::kFlagReclaimDeadOwners) == 0) return;
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
  if ((h_->flags & internal::kFlagReclaimDeadOwners) == 0) return 0;
  int reclaimed = 0;
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    if (id == owner_.id_) continue;
    uint64_t identity = OwnerAt(h_, id).identity.load(kAcquire);
    switch (internal::StatusOf(identity)) {
      case internal::kOwnerAlive:
        if (IsSelfProcess(identity) ||
            internal::IsAlive(internal::PidOf(identity), internal::StartTimeOf(identity))) {
          continue;
        }
        break;
      case internal::kOwnerReclaiming:
        // Resume a reclamation whose reclaimer died.
        if (internal::ReclaimerOf(identity) == owner_.id_ ||
            !HolderIsDead(internal::ReclaimerOf(identity))) {
          continue;
        }
        break;
      case internal::kOwnerFree:
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
  // 1. The entry lock, if it held one: take it over and resolve its intent.
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    std::atomic<uint64_t>& lock = EntryAt(h_, e).lock;
    uint64_t current = lock.load(kAcquire);
    if (current == 0 || internal::LockOwner(current) != dead) continue;
    Locked locked{e, internal::LockWord(owner_.id_, NextSeq())};
    if (lock.compare_exchange_strong(current, locked.word, kAcquire, kRelaxed)) {
      ResolveDeadEntryLock(locked, current);
      Unlock(locked);
    }
  }
  // 2. The structure lock, if it held it. After step 1, because rebuilding
  //    the index locks every entry.
  std::atomic<uint64_t>& structure = h_->structure_lock;
  uint64_t current = structure.load(kAcquire);
  if (current != 0 && internal::LockOwner(current) == dead) {
    uint64_t mine = internal::LockWord(owner_.id_, NextSeq());
    if (structure.compare_exchange_strong(current, mine, kAcquire, kRelaxed)) {
      RepairIndexLocked();
      UnlockStructure();
    }
  }
  // 3. Every slot and queue place it had.
  uint64_t slots = GiveBackHoldsOf(dead, /*target_is_dead=*/true);
  OwnerAt(h_, dead).uncounted.store(0, kRelaxed);
  // 4. Reclamations it was running.
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    uint64_t identity = OwnerAt(h_, id).identity.load(kAcquire);
    if (internal::StatusOf(identity) == internal::kOwnerReclaiming &&
        internal::ReclaimerOf(identity) == dead) {
      if (dead == owner_.id_) {
        // Adopted: those reclamations are ours now; finish them.
        RecoverRecord(id);
        uint64_t expected = identity;
        OwnerAt(h_, id).identity.compare_exchange_strong(expected, 0, std::memory_order_release,
                                                         kRelaxed);
        h_->dead_owners_reclaimed.fetch_add(1, kRelaxed);
      } else {
        ReclaimOwner(id, identity);
      }
    }
  }
  return slots;
}

}  // namespace connthrottle
