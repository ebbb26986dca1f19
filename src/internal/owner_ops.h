// The operations an Owner performs on the shared region: entry and structure
// locks, committed changes with their redo intent, the index, and the
// reclamation of dead owners. Internal; the protocol is documented at the top
// of owner_ops.cc.

#ifndef CONNTHROTTLE_SRC_INTERNAL_OWNER_OPS_H_
#define CONNTHROTTLE_SRC_INTERNAL_OWNER_OPS_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "internal/layout.h"

namespace connthrottle {

// The values an operation gives an entry's counters; committed atomically
// with respect to owner death (redo intent) and to snapshot readers (seqlock).
struct EntryImage {
  uint32_t state;
  uint32_t count;
  uint32_t waiters;
  uint32_t forced;
  uint32_t reserved;
};

// Statistics an operation adds to an entry. Not part of the redo intent: a
// process killed mid-operation may lose its last increment, never a slot.
struct StatDelta {
  uint64_t acquired = 0;
  uint64_t refused = 0;
  uint64_t waited = 0;
  uint64_t wait_ns = 0;
  uint64_t forced_total = 0;
  uint64_t wakeups = 0;
};

// An entry this owner has locked, and the lock word it used.
struct Locked {
  uint32_t entry;
  uint64_t word;
};

class OwnerOps {
 public:
  explicit OwnerOps(Owner& owner)
      : owner_(owner), h_(owner.table_.header_), self_(internal::OwnerAt(h_, owner.id_)) {}

  // ---- acquire and release (owner.cc calls these) ----
  absl::StatusOr<Slot> TryAcquire(const NodeKey& key, Limit limit, const AcquireOptions& options);
  absl::StatusOr<Slot> AcquireWaiting(const NodeKey& key, absl::FunctionRef<Limit()> limit,
                                      absl::Time deadline, absl::FunctionRef<bool()> interrupted,
                                      const AcquireOptions& options);
  absl::StatusOr<Slot> AcquireForced(const NodeKey& key, const AcquireOptions& options);
  void Release(uint32_t entry, SlotKind kind);
  uint64_t ReleaseAll();

  // ---- reclamation (reclaim.cc) ----
  // Checks, at most every `interval`, whether any registered owner's process
  // has died, and reclaims what it held. Cheap when it is not yet time.
  void MaybeReclaimDeadOwners(absl::Duration interval = absl::Milliseconds(200));
  // Checks every owner now. Returns the number of owners reclaimed.
  int ReclaimDeadOwners();
  // Run by a new owner that adopted a dead process's record, before its
  // first operation: gives back everything the previous holder left.
  void RecoverAdoptedRecord();

 private:
  // ---- locks ----
  uint32_t NextSeq() { return owner_.next_seq_++; }
  Locked LockEntry(uint32_t entry);
  Locked LockEntrySlow(uint32_t entry, uint64_t mine);
  void Unlock(const Locked& locked);
  uint64_t LockStructure();
  void UnlockStructure();
  // Whether the owner that holds a lock word is known to be dead.
  bool HolderIsDead(uint32_t holder_id);
  // After taking over `dead_word` on `entry`, finishes the dead holder's
  // operation if its intent was published.
  void ResolveDeadEntryLock(const Locked& locked, uint64_t dead_word);

  // ---- committed changes ----
  void Commit(const Locked& locked, const EntryImage& image, uint32_t target_owner, uint64_t hold,
              uint32_t waiting_on, const StatDelta& stats = {});
  void Apply(uint32_t entry, const EntryImage& image, uint32_t target_owner, uint64_t hold,
             uint32_t waiting_on, const StatDelta& stats);
  EntryImage Read(uint32_t entry) const;
  // Adds statistics without changing counters (for example a refusal).
  void AddStats(uint32_t entry, const StatDelta& stats);

  // ---- index ----
  bool KeyMatches(uint32_t entry, const NodeKey& key) const;
  std::optional<Locked> FindLive(const NodeKey& key);
  // Returns the key's entry, locked, creating it if needed. nullopt when the
  // table is full (the event is counted).
  std::optional<Locked> FindOrInsert(const NodeKey& key);
  std::optional<uint32_t> AllocateEntryLocked();
  void InsertBucketLocked(uint32_t entry, uint64_t hash);
  void RemoveBucketLocked(uint32_t entry);
  // Drops `entry` if it is still a zombie. Takes the structure lock.
  void DropIfZombie(uint32_t entry);
  // With the structure lock and the entry lock held: frees a zombie entry.
  void FreeZombieLocked(const Locked& locked);
  // Same locks held: folds the entry's statistics into the table totals and
  // marks it kFree (the caller has removed or will rebuild its bucket).
  void RetireLocked(const Locked& locked);
  // Rebuilds the index from the entries after a structure-lock holder died.
  void RepairIndexLocked();

  // ---- shared pieces of the acquire paths ----
  absl::StatusOr<Slot> Grant(const Locked& locked, SlotKind kind, bool dequeue,
                             const StatDelta& stats);
  absl::StatusOr<Slot> TableFull(const NodeKey& key, const AcquireOptions& options);
  absl::Status Refusal(const NodeKey& key, Limit limit, const EntryImage& image) const;
  // Gives the slot back's wake-up to one waiter of `entry`.
  void WakeOne(uint32_t entry);

  // ---- reclamation ----
  bool ReclaimOwner(uint32_t dead_id, uint64_t observed_identity);
  // Steps 1-4 of the death protocol (reclaim.cc) for record `dead`, which the
  // caller has claimed. Returns the number of slots given back.
  uint64_t RecoverRecord(uint32_t dead);
  uint64_t GiveBackHoldsOf(uint32_t target_id, bool target_is_dead);

  Owner& owner_;
  internal::TableHeader* h_;
  internal::OwnerRecord& self_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_INTERNAL_OWNER_OPS_H_
