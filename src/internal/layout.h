// Shared-region layout of a CounterTable. Internal: only src/ includes it.
//
// The region holds, in this order, each part 64-byte aligned:
//
//   TableHeader                    magic, layout version, sizes, table-wide
//                                  counters, the structure lock
//   OwnerRecord[max_owners]        identity and redo intent of each owner
//   HoldCell[max_owners][capacity] slots each owner holds on each entry
//   Bucket[index_buckets]          open-addressing index: hash -> entry
//   Entry[capacity]                one key's counters
//
// Everything is addressed by index, never by pointer, so the region may be
// mapped at different addresses in different processes. Every field that more
// than one process touches is a lock-free std::atomic (address-free), so the
// same code is correct for threads, processes, and ThreadSanitizer.
//
// The locking and atomicity protocol is described at the top of
// counter_table.cc.

#ifndef CONNTHROTTLE_SRC_INTERNAL_LAYOUT_H_
#define CONNTHROTTLE_SRC_INTERNAL_LAYOUT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace connthrottle::internal {

inline constexpr uint64_t kMagic = 0x6374687274626c31ULL;  // "cthrtbl1"
// Bump on any change to this file or to the key hash.
inline constexpr uint32_t kLayoutVersion = 1;
inline constexpr size_t kCacheLine = 64;

inline constexpr uint32_t kMaxCapacity = 1u << 24;
inline constexpr uint32_t kMaxOwners = 1u << 16;

// ---- Entry --------------------------------------------------------------

enum EntryState : uint32_t {
  kFree = 0,    // not in the index, holds no key
  kLive = 1,    // in the index, holds a key; slots may be taken
  kZombie = 2,  // count and waiters reached zero; in the index until dropped
};

// Host names are stored as zero-padded 64-bit words so that they can be read
// with relaxed atomic loads by lock-free snapshot readers.
inline constexpr size_t kHostWords = 32;  // 256 bytes >= NodeKey::kMaxHostLength

struct alignas(kCacheLine) Entry {
  // --- first line: everything the fast path reads or writes ---
  // 0 when unlocked, else (owner id << 32) | the owner's operation sequence.
  std::atomic<uint64_t> lock;
  // Seqlock version for lock-free readers: odd while a commit is in progress.
  std::atomic<uint32_t> version;
  std::atomic<uint32_t> state;     // EntryState
  std::atomic<uint32_t> count;     // slots held, of every kind
  std::atomic<uint32_t> waiters;   // waiting acquires queued
  std::atomic<uint32_t> forced;    // of count: forced slots
  std::atomic<uint32_t> reserved;  // of count: reservation slots
  std::atomic<uint32_t> wake_seq;  // futex word waiters sleep on
  std::atomic<uint32_t> port;
  std::atomic<uint32_t> database;
  std::atomic<uint32_t> host_len;
  std::atomic<uint64_t> hash;
  std::atomic<uint64_t> acquired;  // cumulative, updated under the lock
  // --- key ---
  std::atomic<uint64_t> host[kHostWords];
  // --- cold statistics, updated under the lock ---
  std::atomic<uint64_t> refused;
  std::atomic<uint64_t> waited;
  std::atomic<uint64_t> wait_ns;
  std::atomic<uint64_t> forced_total;
  std::atomic<uint64_t> wakeups;  // times a queued waiter woke and re-checked
};
static_assert(offsetof(Entry, host) <= kCacheLine);

// ---- Index ----------------------------------------------------------------

// 0 = empty; else (low 32 bits of the key hash << 32) | (entry index + 1).
// The home bucket of a value is its hash bits & mask.
using Bucket = std::atomic<uint64_t>;

// ---- Owners -------------------------------------------------------------

// Identity word of an owner record:
//   0                                  free
//   kAlive     | pid << 40 ... see EncodeAlive: status 2 bits, pid 22 bits,
//                                      process start time 40 bits
//   kReclaiming| reclaimer owner id    being reclaimed by that owner
enum OwnerStatus : uint64_t {
  kOwnerFree = 0,
  kOwnerAlive = 1,
  kOwnerReclaiming = 2,
};

inline constexpr uint64_t EncodeAlive(uint32_t pid, uint64_t start_time) {
  return (uint64_t{kOwnerAlive} << 62) | ((uint64_t{pid} & 0x3fffff) << 40) |
         (start_time & 0xffffffffffULL);
}
inline constexpr uint64_t EncodeReclaiming(uint32_t reclaimer_id) {
  return (uint64_t{kOwnerReclaiming} << 62) | reclaimer_id;
}
inline constexpr OwnerStatus StatusOf(uint64_t identity) {
  return static_cast<OwnerStatus>(identity >> 62);
}
inline constexpr uint32_t PidOf(uint64_t identity) {
  return static_cast<uint32_t>((identity >> 40) & 0x3fffff);
}
inline constexpr uint64_t StartTimeOf(uint64_t identity) { return identity & 0xffffffffffULL; }
inline constexpr uint32_t ReclaimerOf(uint64_t identity) {
  return static_cast<uint32_t>(identity & 0xffffffff);
}

// A hold cell: what one owner holds on one entry, packed so that it changes
// with a single store. total includes forced and reserved.
struct Hold {
  uint32_t total = 0;
  uint32_t forced = 0;
  uint32_t reserved = 0;

  static constexpr uint64_t kMask = (1u << 21) - 1;
  static Hold Unpack(uint64_t v) {
    return {static_cast<uint32_t>(v & kMask), static_cast<uint32_t>((v >> 21) & kMask),
            static_cast<uint32_t>((v >> 42) & kMask)};
  }
  uint64_t Pack() const {
    return uint64_t{total} | (uint64_t{forced} << 21) | (uint64_t{reserved} << 42);
  }
};
using HoldCell = std::atomic<uint64_t>;

// The redo record of an owner's operation in progress. Written completely,
// then published by storing `seq` (release), before any field of the entry,
// the hold cell or the waiting_on word is changed. See the protocol block.
struct Intent {
  std::atomic<uint32_t> seq;  // equals the seq in the entry's lock word once valid
  std::atomic<uint32_t> entry;
  std::atomic<uint32_t> state;
  std::atomic<uint32_t> count;
  std::atomic<uint32_t> waiters;
  std::atomic<uint32_t> forced;
  std::atomic<uint32_t> reserved;
  std::atomic<uint32_t> target_owner;  // whose hold cell / waiting_on follow (1-based)
  std::atomic<uint64_t> hold;          // new HoldCell value of (target_owner, entry)
  std::atomic<uint32_t> waiting_on;    // new waiting_on of target_owner
};

struct alignas(kCacheLine) OwnerRecord {
  std::atomic<uint64_t> identity;
  std::atomic<uint32_t> waiting_on;  // entry index + 1 while queued, else 0
  std::atomic<uint32_t> uncounted;   // kUncounted slots held
  Intent intent;
};

// ---- Header -------------------------------------------------------------

struct alignas(kCacheLine) TableHeader {
  // Immutable after Initialize. `magic` is written last, with release order.
  std::atomic<uint64_t> magic;
  uint32_t layout_version;
  uint32_t capacity;
  uint32_t max_owners;
  uint32_t index_buckets;  // power of two >= 2 * capacity
  uint64_t total_bytes;
  uint64_t owners_offset;
  uint64_t holds_offset;
  uint64_t index_offset;
  uint64_t entries_offset;
  uint32_t flags;

  // Structure lock: serialises changes to the index and entry lifecycle.
  // Same encoding as Entry::lock.
  alignas(kCacheLine) std::atomic<uint64_t> structure_lock;
  std::atomic<uint32_t> live_entries;  // kLive + kZombie entries
  std::atomic<uint32_t> alloc_hint;    // where to start looking for a free entry
  std::atomic<uint64_t> full_table_events;
  std::atomic<uint64_t> entries_created;
  std::atomic<uint64_t> entries_dropped;
  // Statistics of dropped entries, folded in under the structure lock inside
  // a retire_seq window (odd while folding) so Stats() counts them once.
  std::atomic<uint32_t> retire_seq;
  std::atomic<uint64_t> retired_acquired;
  std::atomic<uint64_t> retired_refused;
  std::atomic<uint64_t> retired_waited;
  std::atomic<uint64_t> retired_wait_ns;
  std::atomic<uint64_t> retired_forced_total;
  std::atomic<uint64_t> refused_without_entry;

  // Reclamation of dead owners (TableOptions::reclaim_dead_owners).
  alignas(kCacheLine) std::atomic<int64_t> next_liveness_check_ns;
  std::atomic<uint64_t> dead_owners_reclaimed;
  std::atomic<uint64_t> slots_reclaimed;
};

inline constexpr uint32_t kFlagReclaimDeadOwners = 1;

inline constexpr size_t AlignUp(size_t n) { return (n + kCacheLine - 1) & ~(kCacheLine - 1); }

// Accessors into the region. All take the header of an initialised table.
inline OwnerRecord* Owners(TableHeader* h) {
  return reinterpret_cast<OwnerRecord*>(reinterpret_cast<char*>(h) + h->owners_offset);
}
inline OwnerRecord& OwnerAt(TableHeader* h, uint32_t owner_id) { return Owners(h)[owner_id - 1]; }
inline HoldCell& HoldAt(TableHeader* h, uint32_t owner_id, uint32_t entry) {
  auto* cells = reinterpret_cast<HoldCell*>(reinterpret_cast<char*>(h) + h->holds_offset);
  return cells[size_t{owner_id - 1} * h->capacity + entry];
}
inline Bucket* Buckets(TableHeader* h) {
  return reinterpret_cast<Bucket*>(reinterpret_cast<char*>(h) + h->index_offset);
}
inline Entry& EntryAt(TableHeader* h, uint32_t index) {
  return reinterpret_cast<Entry*>(reinterpret_cast<char*>(h) + h->entries_offset)[index];
}

inline constexpr uint64_t LockWord(uint32_t owner_id, uint32_t seq) {
  return (uint64_t{owner_id} << 32) | seq;
}
inline constexpr uint32_t LockOwner(uint64_t lock) { return static_cast<uint32_t>(lock >> 32); }
inline constexpr uint32_t LockSeq(uint64_t lock) { return static_cast<uint32_t>(lock); }

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_INTERNAL_LAYOUT_H_
