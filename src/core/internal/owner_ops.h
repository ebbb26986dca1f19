// The operations an Owner performs on the shared region beyond its two hot
// paths (owner.cc): entry and structure locks, the index, entry lifecycle,
// waits, and the recovery of entries touched by dead owners. Internal; the
// protocol is documented at the top of owner_ops.cc.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_OWNER_OPS_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_OWNER_OPS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"
#include "core/internal/layout.h"

namespace connthrottle {

// An entry's counters as one locked operation sees and changes them. count
// and the flags live in Entry::word; the rest in fields beside it.
struct EntryCounts {
  uint32_t count = 0;
  uint32_t waiters = 0;
  uint32_t forced = 0;
  uint32_t reserved = 0;
  bool live = false;
};

// Statistics a locked operation adds to an entry. A process killed in the
// middle of an operation may lose its last increment; never a slot.
struct StatDelta {
  uint64_t refused = 0;
  uint64_t waited = 0;
  uint64_t wait_ns = 0;
  uint64_t forced_total = 0;
  uint64_t wakeups = 0;
};

// One counter of a key, as the operations below find and name it: the
// node's, or the database's on the node (node_key.h, CounterLevel).
struct CounterKey {
  const NodeKey& key;
  CounterLevel level = CounterLevel::kNode;

  uint64_t hash() const { return key.counter_hash(level); }
  uint64_t meta() const { return key.counter_meta(level); }
  uint64_t cache_id() const { return key.cache_id(level); }
  // "node h:p", or "database 16384 on node h:p", for messages.
  std::string Name() const;
  // `limit` as this level applies it, for messages.
  std::string LimitText(const Limit& limit) const;
};

class OwnerOps {
 public:
  explicit OwnerOps(Owner& owner)
      : owner_(owner), h_(owner.table_.header_), self_(*owner.record_) {}

  // ---- acquire and release beyond the hot paths (owner.cc) ----
  // One level: the counter `key` names, against `limit`'s node figures.
  absl::StatusOr<Slot> TryAcquireSlow(CounterKey key, Limit limit, const AcquireOptions& options);
  // Both levels when the first limit evaluated has a per-database bound:
  // the database counter's slot first, then the node's while holding it
  // (owner.h, "Two levels").
  absl::StatusOr<Slot> AcquireWaiting(const NodeKey& key, absl::FunctionRef<Limit()> limit,
                                      absl::Time deadline, absl::FunctionRef<bool()> interrupted,
                                      const AcquireOptions& options);
  absl::StatusOr<Slot> AcquireForced(CounterKey key, const AcquireOptions& options);
  void ReleaseSlow(uint32_t entry, SlotKind kind);
  void ReleaseUncounted();
  // Every 1024th hot-path release: look for dead owners.
  void AfterRelease();
  // Gives back every slot recorded against this owner. With fold_acquired,
  // also folds its acquisition counts into the entries (when it leaves).
  uint64_t ReleaseAll(bool fold_acquired);

  // ---- reclamation (reclaim.cc) ----
  // Checks, at most every `interval`, whether any registered owner's process
  // has died, and reclaims what it held. Cheap when it is not yet time.
  void MaybeReclaimDeadOwners(absl::Duration interval = absl::Milliseconds(200));
  // Checks every owner now. Returns the number of owners reclaimed.
  int ReclaimDeadOwners();
  // Run by a new owner on the free record it has just claimed, before its
  // first operation: clears the markers a previous process may have left and
  // waits until no live owner is judging the record (a judgement of its
  // previous process, about to take over a lock that process left).
  void StartOnFreeRecord();
  // Run by a new owner that adopted a dead process's record, before its first
  // operation: waits like StartOnFreeRecord, then gives back everything the
  // previous holder left.
  void RecoverAdoptedRecord();

  // CounterTable::Audit, with this owner locking each entry in turn.
  absl::Status Audit();

 private:
  bool reclaiming() const { return (h_->flags & internal::kFlagReclaimDeadOwners) != 0; }
  internal::Entry& EntryOf(uint32_t entry) { return owner_.entries_[entry]; }
  internal::Cell& MyCell(uint32_t entry) { return owner_.cells_[entry]; }
  void Remember(CounterKey key, uint32_t entry);
  // One level of AcquireWaiting.
  absl::StatusOr<Slot> AcquireWaitingAt(CounterKey key, absl::FunctionRef<Limit()> limit,
                                        absl::Time deadline, absl::FunctionRef<bool()> interrupted,
                                        const AcquireOptions& options);

  // ---- the entry lock (a bit of Entry::word, and the holder's stamp) ----
  // Locks the entry; this owner's in_flight names it until Unlock. With
  // reclamation, takes the lock over from a holder that died (or one left by
  // the previous process of an adopted record), and recomputes the entry
  // before returning. ReadLocked, WriteLocked and the unlocks require the
  // lock, held by this owner.
  void LockEntry(uint32_t entry);
  EntryCounts ReadLocked(uint32_t entry);
  // Writes `counts` into the locked entry (same tag), keeping it locked.
  void WriteLocked(uint32_t entry, const EntryCounts& counts);
  // Writes `counts` and unlocks.
  void Unlock(uint32_t entry, const EntryCounts& counts);
  // Unlocks without changing anything.
  void UnlockUnchanged(uint32_t entry);
  void AddStats(uint32_t entry, const StatDelta& stats);
  // Waits until no live owner other than this one is in flight on `entry`
  // (a hot-path operation that changed the word before the entry was locked).
  void AwaitInFlight(uint32_t entry);
  // With the entry locked: computes its counters from the live owners'
  // cells, and clears the cells and queue places of dead owners (and, for an
  // adopted record, this owner's own), adding the slots they held to
  // *reclaimed. Returns the counters; the caller writes them (WriteLocked or
  // Unlock).
  EntryCounts RecomputeLocked(uint32_t entry, bool exclude_self, uint64_t* reclaimed = nullptr);

  // ---- the structure lock ----
  uint64_t LockStructure();
  void UnlockStructure();
  // The word this owner writes for its next structure-lock acquisition: its
  // id and a sequence number unique across the table (layout.h).
  uint64_t NextStructureLockWord();
  // Whether the lock holder `holder_id` (named by a lock word) is dead. When
  // it says dead, the owner is judging that holder (OwnerRecord::judging)
  // until EndJudging, which the caller calls right after its takeover
  // compare-and-swap, won or lost.
  bool HolderIsDead(uint32_t holder_id);
  void EndJudging();

  // ---- index and lifecycle ----
  bool KeyMatches(uint32_t entry, CounterKey key) const;
  std::optional<uint32_t> FindLive(CounterKey key);
  // The key's entry, locked, created if needed; nullopt when the table is
  // full (the event is counted).
  std::optional<uint32_t> FindOrInsert(CounterKey key);
  std::optional<uint32_t> AllocateEntryLocked();
  void InsertBucketLocked(uint32_t entry, uint64_t hash);
  void RemoveBucketLocked(uint32_t entry);
  // With the structure lock and the entry lock held, on an entry with no
  // slot and no waiter: folds its statistics into the table totals, frees it
  // and changes its tag, so that no cached hint revives it (the caller
  // removes or rebuilds its bucket).
  void RetireLocked(uint32_t entry);
  // Rebuilds the index from the entries after a structure-lock holder died.
  void RepairIndexLocked();

  // ---- shared pieces of the acquire paths ----
  absl::StatusOr<Slot> Grant(uint32_t entry, SlotKind kind, bool dequeue, const StatDelta& stats);
  absl::StatusOr<Slot> TableFull(CounterKey key, const AcquireOptions& options);
  absl::Status Refusal(CounterKey key, Limit limit, const EntryCounts& counts) const;
  // Takes this owner's place in `entry`'s queue away, adding `stats`.
  void LeaveQueue(uint32_t entry, const StatDelta& stats);

  // ---- reclamation ----
  bool ReclaimOwner(uint32_t dead_id, uint64_t observed_identity);
  // Recovers every entry record `dead` touches (which the caller claimed).
  // Returns the number of slots given back.
  uint64_t RecoverRecord(uint32_t dead);
  // Whether owner `id` is alive: registered and its process running.
  bool OwnerIsAlive(uint32_t id);
  // Waits until no live owner's OwnerRecord::judging names this owner's id.
  void AwaitJudges();

  Owner& owner_;
  internal::TableHeader* h_;
  internal::OwnerRecord& self_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_OWNER_OPS_H_
