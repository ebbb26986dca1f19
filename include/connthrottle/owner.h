// connthrottle/owner.h — a registered participant of a CounterTable.
//
// Every slot is taken through an Owner and recorded against it in the shared
// region: per key, how many slots of each kind it holds, and which key it is
// waiting on. That record is what lets a backend that exits on an error give
// back what it held, and (with TableOptions::reclaim_dead_owners) lets live
// processes give back exactly what a killed process held.

#ifndef CONNTHROTTLE_OWNER_H_
#define CONNTHROTTLE_OWNER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/slot.h"

namespace connthrottle {

namespace internal {
struct Cell;
struct Entry;
struct OwnerRecord;
}  // namespace internal

// A registered participant: a PostgreSQL backend, a process, or one thread of
// a process. Every slot taken through an Owner is recorded against it in the
// shared region. Destroying an Owner gives back every slot still recorded
// against it (Slots must not outlive their Owner) and unregisters it.
//
// Two levels. A limit with a per-database bound (Limit::per_database(),
// limit.h) makes every acquire take two slots, returned as one Slot: one of
// the key's database counter (against the bound) and one of its node counter
// (against the node's limit). Optional: the database's slot, then the
// node's; refused at the node, the database's is given back. Waiting: the
// database's slot is waited for first, then the node's while holding it (so
// no node slot, usable by any database, is held idle waiting for one
// database's quota). Release gives back the node's, then the database's. Forced and
// reservation slots are counted at both levels alike; parking checks both.
// Each level keeps every promise of counter_table.h on its own counter.
//
// Thread-compatible: use an Owner from one thread at a time; its Slots are
// released through it and count as its operations. An Owner belongs to the
// process that registered it: in a child forked afterwards, its acquires fail
// with FailedPrecondition, and destroying it or its Slots touches nothing.
class Owner {
 public:
  Owner(const Owner&) = delete;
  Owner& operator=(const Owner&) = delete;
  ~Owner();

  // Optional acquire: a slot if `limit` admits one now, else ResourceExhausted
  // naming the key and the figures. Never waits.
  absl::StatusOr<Slot> TryAcquire(const NodeKey& key, Limit limit,
                                  const AcquireOptions& options = {});

  // Waiting acquire. `limit` is evaluated at every decision (the first try and
  // every wake-up), so a configuration change applies while waiting; it is
  // never called with a lock of the table held, so a slow or throwing
  // callback delays only this caller (an exception leaves the wait cleanly
  // only before it queues: keep it from throwing). Returns DeadlineExceeded
  // when `deadline` passes and Cancelled when `interrupted` returns true (it
  // is called at least every options.poll_interval and must not block or
  // throw). A limit that never_waits() makes this an optional acquire.
  absl::StatusOr<Slot> AcquireWaiting(const NodeKey& key, absl::FunctionRef<Limit()> limit,
                                      absl::Time deadline, absl::FunctionRef<bool()> interrupted,
                                      const AcquireOptions& options = {});
  // Same, with a fixed limit and no interrupt check.
  absl::StatusOr<Slot> AcquireWaiting(const NodeKey& key, Limit limit, absl::Time deadline,
                                      const AcquireOptions& options = {});

  // Parking, for connection caches. A session that keeps a connection idle
  // for later (and cannot give its slot back until it runs again) parks the
  // slot. Park succeeds only while the key has no waiters and, with this
  // slot, fewer than `limit` slots of the key are parked, so idle caches
  // never hold all of a key's slots: whoever needs one gets it once the busy
  // ones are given back. Returns whether the slot is parked now (true if it
  // was already; an uncounted slot parks without counting). Unpark before
  // using the connection again; Release() unparks by itself.
  bool Park(Slot& slot, Limit limit);
  void Unpark(Slot& slot);

  // Forced acquire: always counted, even above the limit. Fails only when the
  // table is full under FullTablePolicy::kRefuse, or when the key's count
  // would exceed kMaxSlotsPerKey. The first form counts at the node level;
  // the second at both when `limit` has a per-database bound (its figures
  // are not otherwise applied).
  absl::StatusOr<Slot> AcquireForced(const NodeKey& key, const AcquireOptions& options = {});
  absl::StatusOr<Slot> AcquireForced(const NodeKey& key, Limit limit,
                                     const AcquireOptions& options = {});

  // Counts a slot taken while the per-database bound was off for its key's
  // database too, if `limit`'s bound admits one more now (an optional
  // acquire at the database level; the caller keeps the slot either way).
  // For a holder of a long-lived connection when the bound is turned on: a
  // slot it cannot count should have its connection closed. True when the
  // slot is counted at both levels now, or the database level admitted it
  // uncounted (a full table under kAdmitUncounted); false for a parked,
  // uncounted or empty slot, a limit without the bound, or a refusal.
  bool CountForDatabase(Slot& slot, const NodeKey& key, Limit limit,
                        const AcquireOptions& options = {});

  // Hands a slot to a connection of another database of the same node (a
  // pool giving its slot to another pool): the node's slot stays, and under
  // `limit`'s per-database bound the slot is counted for `key`'s database
  // instead of its old one (an optional acquire there, then the old
  // database's slot given back). False, with the slot unchanged, when the
  // new database is at its bound (or the slot is empty or parked). `key`
  // must name another database than the slot's.
  bool MoveToDatabase(Slot& slot, const NodeKey& key, Limit limit,
                      const AcquireOptions& options = {});

  // Gives back every slot recorded against this owner, including those whose
  // Slot objects were lost (for example on a PostgreSQL error path). Returns
  // the number of slots given back, per counter (a two-level Slot counts
  // twice). Slot objects still alive become empty only logically: releasing
  // them afterwards is a no-op.
  uint64_t ReleaseAll();

  // Slots currently recorded against this owner (every kind; per counter,
  // so a two-level Slot counts twice).
  uint64_t SlotsHeld() const;

  // With TableOptions::reclaim_dead_owners: checks every registered owner now
  // and gives back exactly what owners of dead processes held. Returns how
  // many owners were reclaimed. (Live owners also do this by themselves, at
  // most every 200 ms; see reclaim.cc.) A no-op returning 0 otherwise.
  int ReclaimDeadOwners();

  uint32_t id() const { return id_; }
  const CounterTable& table() const { return table_; }

 private:
  friend class CounterTable;
  friend class Slot;
  friend class OwnerOps;
  Owner(CounterTable table, uint32_t id);
  // Everything TryAcquire's fast path does not handle; out of line.
  absl::StatusOr<Slot> TryAcquireSlow(const NodeKey& key, Limit limit,
                                      const AcquireOptions& options);
  // TryAcquire under a per-database bound: both levels.
  absl::StatusOr<Slot> TryAcquireTwoLevel(const NodeKey& key, Limit limit,
                                          const AcquireOptions& options);
  // The fast path of an optional acquire on the counter cached under
  // `cache_id`: true, with the entry in *entry, when one compare-and-swap
  // took the slot.
  bool TryFast(uint64_t cache_id, Limit limit, uint32_t* entry);
  bool ParkEntry(uint32_t entry, Limit limit);
  void UnparkEntry(uint32_t entry);

  // "The key with this NodeKey id lives in that entry, with that tag": lets a
  // repeated acquire skip the index probe and the key comparison. The tag is
  // part of the word the acquire compares-and-swaps, so a stale hint fails
  // safely. Direct-mapped by the counter's cache id (even for a node's, odd
  // for a database's); twice as many slots as the table has entries (a power
  // of two, 128 .. 65536), so that every busy counter of either kind can stay
  // cached.
  struct CachedEntry {
    uint64_t key_id = 0;
    uint64_t tag_and_entry = 0;  // the entry's tag << 24 | entry index
    uint64_t tag() const { return tag_and_entry >> 24; }
    uint32_t entry() const { return static_cast<uint32_t>(tag_and_entry & 0xffffff); }
  };
  CachedEntry& CacheSlot(uint64_t cache_id) { return cache_[cache_id & cache_mask_]; }
  void UnparkAll();

  CounterTable table_;
  internal::Entry* entries_;              // the table's entries
  internal::Cell* cells_;                 // this owner's row of cells
  internal::OwnerRecord* record_;         // this owner's record
  uint32_t id_;                           // 1-based index of this owner's record
  uint64_t release_epoch_;                // bumped by ReleaseAll; Slots of older epochs are void
  uint32_t ops_since_check_ = 0;          // releases since the last check for dead owners
  uint32_t fork_generation_;              // the process's fork count when registered (owner.cc)
  uint32_t locked_count_ = 0;             // the count of the entry this owner has locked
  std::vector<uint32_t> parked_entries_;  // one element per parked Slot of this owner
  std::unique_ptr<CachedEntry[]> cache_;
  uint64_t cache_mask_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_OWNER_H_
