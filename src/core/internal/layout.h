// Shared-region layout of a CounterTable. Internal: only src/ includes it.
//
// The region holds, in this order, each part 64-byte aligned:
//
//   TableHeader               magic, layout version, sizes, table-wide
//                             counters, the structure lock
//   OwnerRecord[max_owners]   identity, waiting_on and in-flight marker
//   Cell[max_owners][cap]     what each owner holds on each entry, and how
//                             many slots it has taken there
//   Bucket[index_buckets]     open-addressing index: hash -> entry
//   Entry[capacity]           one counter: a node's, or with the per-database
//                             bound a database's on a node (node_key.h,
//                             CounterLevel); one cache line each
//   EntryKey[capacity]        the same counter's host and cold statistics
//
// Everything is addressed by index, never by pointer, so the region may be
// mapped at different addresses in different processes. Every field that more
// than one process touches is a lock-free std::atomic (address-free), so the
// same code is correct for threads, processes, and ThreadSanitizer.
//
// The locking and atomicity protocol is described at the top of
// owner_ops.cc; the death protocol at the top of reclaim.cc.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_LAYOUT_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_LAYOUT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace connthrottle::internal {

inline constexpr uint64_t kMagic = 0x6374687274626c31ULL;  // "cthrtbl1"
// Bump on any change to this file or to the key hash once released.
inline constexpr uint32_t kLayoutVersion = 7;
inline constexpr size_t kCacheLine = 64;

inline constexpr uint32_t kMaxCapacity = 1u << 24;
inline constexpr uint32_t kMaxOwners = (1u << 16) - 1;

// ---- Entry --------------------------------------------------------------

// Entry::word, the one word every acquire and release changes:
//   bits  0..19  unlocked: count, the slots held, of every kind.
//                locked: the lock stamp, which names the holder: its owner
//                id (bits 0..15) and the low bits of its record's lock_seq
//                (16..19). The count is then kept by the holder (Owner::
//                locked_count_) and written back when it unlocks.
//   bit  20      has_waiters: waiters > 0
//   bit  21      live: the entry holds a key and slots may be taken (else it
//                is free, or a zombie waiting to be revived or dropped; see
//                in_use)
//   bit  22      locked: an owner holds the entry lock
//   bit  23      unused (0)
//   bits 24..63  tag: the entry's generation, which changes whenever the
//                entry is dropped and whenever it takes a new key. A
//                compare-and-swap that expects a tag cannot succeed on an
//                entry that has since been dropped or changed keys.
// Every lock acquisition writes a stamp that differs from the word's stamp
// under the previous holder, so a compare-and-swap against a locked word
// read earlier fails once the lock has changed hands (owner_ops.cc, "Entry
// lock").
struct Word {
  static constexpr uint64_t kCountMask = (uint64_t{1} << 20) - 1;
  static constexpr uint64_t kHasWaiters = uint64_t{1} << 20;
  static constexpr uint64_t kLive = uint64_t{1} << 21;
  static constexpr uint64_t kLocked = uint64_t{1} << 22;
  static constexpr int kTagShift = 24;
  static constexpr uint64_t kTagMask = (uint64_t{1} << 40) - 1;
  static constexpr uint64_t kStampMask = kCountMask;
  static constexpr uint32_t kStampSeqBits = 4;

  static constexpr uint32_t Count(uint64_t w) { return static_cast<uint32_t>(w & kCountMask); }
  static constexpr uint64_t Tag(uint64_t w) { return w >> kTagShift; }
  static constexpr uint64_t WithTag(uint64_t tag) { return (tag & kTagMask) << kTagShift; }
  // The stamp of a lock taken by `owner_id` as its record's `seq`-th lock.
  static constexpr uint64_t Stamp(uint32_t owner_id, uint32_t seq) {
    return (uint64_t{owner_id} & 0xffff) | (uint64_t{seq & ((1u << kStampSeqBits) - 1)} << 16);
  }
  // The owner id a locked word names as its holder.
  static constexpr uint32_t Holder(uint64_t w) { return static_cast<uint32_t>(w & 0xffff); }
};

// Host names are stored as zero-padded 64-bit words so that they can be read
// with relaxed atomic loads by lock-free readers.
inline constexpr size_t kHostWords = 32;  // 256 bytes >= NodeKey::kMaxHostLength

struct alignas(kCacheLine) Entry {
  // --- first line: everything an acquire or release reads or writes ---
  std::atomic<uint64_t> word;      // see Word
  std::atomic<uint32_t> in_use;    // 1 from insert until dropped (live or zombie)
  std::atomic<uint32_t> waiters;   // waiting acquires queued (under the lock)
  std::atomic<uint32_t> forced;    // of count: forced slots (under the lock)
  std::atomic<uint32_t> reserved;  // of count: reservation slots (under the lock)
  std::atomic<uint32_t> wake_seq;  // futex word waiters sleep on
  std::atomic<uint32_t> version;   // bumped by every locked change, for readers
  std::atomic<uint64_t> hash;
  std::atomic<uint64_t> meta;           // port | host length << 16, and for a database
                                        // counter kMetaDatabase | database << 32
  std::atomic<uint64_t> acquired_base;  // acquisitions folded in from owners' cells
  std::atomic<uint64_t> refused;        // cumulative, under the lock
};
static_assert(sizeof(Entry) == kCacheLine, "the hot part of an entry is one cache line");

// The cold part of an entry, in a parallel array so that the hot array stays
// dense: the key's host and statistics that only slow paths touch.
struct alignas(kCacheLine) EntryKey {
  std::atomic<uint64_t> host[kHostWords];  // the host as zero-padded words
  // Cumulative, updated under the entry lock.
  std::atomic<uint64_t> waited;
  std::atomic<uint64_t> wait_ns;
  std::atomic<uint64_t> forced_total;
  std::atomic<uint64_t> wakeups;  // times a queued waiter woke and re-checked
  // Of count: slots whose connections sit idle in a session's cache
  // (Owner::Park). Changed without the entry lock; reset when the entry is
  // re-used. A dead owner's parked slots stay counted here until then, which
  // only makes parking more conservative.
  std::atomic<uint32_t> parked;
};
inline constexpr uint32_t MetaPort(uint64_t meta) { return static_cast<uint32_t>(meta & 0xffff); }
inline constexpr uint64_t kMetaDatabase = uint64_t{1} << 31;  // NodeKey::kDatabaseMeta
inline constexpr uint32_t MetaHostLen(uint64_t meta) {
  return static_cast<uint32_t>((meta >> 16) & 0x7fff);
}
inline constexpr bool MetaIsDatabase(uint64_t meta) { return (meta & kMetaDatabase) != 0; }
inline constexpr uint32_t MetaDatabase(uint64_t meta) { return static_cast<uint32_t>(meta >> 32); }

// ---- Index ----------------------------------------------------------------

// 0 = empty; else (low 32 bits of the key hash << 32) | (entry index + 1).
// The home bucket of a value is its hash bits & mask.
using Bucket = std::atomic<uint64_t>;

// ---- Owners -------------------------------------------------------------

// Identity word of an owner record:
//   0                               free
//   kOwnerAlive << 62 | pid (22 bits) << 40 | process start time (40 bits)
//   kOwnerReclaiming << 62 | reclaimer owner id
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

// What one owner holds on one entry, packed so that it changes with a single
// store. total includes forced and reserved.
struct Hold {
  uint32_t total = 0;
  uint32_t forced = 0;
  uint32_t reserved = 0;

  static constexpr uint64_t kMask = (1u << 21) - 1;
  static constexpr uint64_t kOneForced = uint64_t{1} << 21;
  static constexpr uint64_t kOneReserved = uint64_t{1} << 42;
  static Hold Unpack(uint64_t v) {
    return {static_cast<uint32_t>(v & kMask), static_cast<uint32_t>((v >> 21) & kMask),
            static_cast<uint32_t>((v >> 42) & kMask)};
  }
  uint64_t Pack() const {
    return uint64_t{total} | (uint64_t{forced} << 21) | (uint64_t{reserved} << 42);
  }
};

// One owner's cell for one entry. Written by that owner (or, for a dead
// owner, by whoever recomputes the entry under its lock).
struct Cell {
  std::atomic<uint64_t> hold;      // Hold::Pack
  std::atomic<uint64_t> acquired;  // slots this owner took here since the entry's last fold
};

struct alignas(kCacheLine) OwnerRecord {
  std::atomic<uint64_t> identity;
  std::atomic<uint32_t> waiting_on;  // entry index + 1 while queued, else 0
  // entry index + 1 from just before this owner's compare-and-swap on that
  // entry's word until its cell agrees with it again, else 0. While an owner
  // holds an entry lock it names that entry, which identifies the holder.
  std::atomic<uint32_t> in_flight;
  std::atomic<uint32_t> uncounted;  // kUncounted slots held
  // Entry locks taken through this record, by every process that has held
  // it (never reset): part of each lock's stamp (Word::Stamp).
  std::atomic<uint32_t> lock_seq;
  // The owner id of the lock holder this owner is judging, from just before
  // it reads that holder's identity until its takeover compare-and-swap is
  // done, else 0. A process registering into a record waits until no live
  // owner judges it (owner_ops.cc, "Why the stamp"), so a lock word naming
  // the record cannot come back under a new process during a judgement.
  std::atomic<uint32_t> judging;
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
  uint64_t cells_offset;
  uint64_t index_offset;
  uint64_t entries_offset;
  uint64_t keys_offset;
  uint32_t flags;
  // With kFlagReclaimDeadOwners: the PID namespace every owner must be in
  // (process_identity.h), that of the process that initialised the table.
  uint64_t pid_namespace;

  // Structure lock: serialises changes to the index and to entry lifecycle.
  // 0 when free, else (owner id << 32) | the acquisition's sequence number,
  // drawn from structure_seq: no two acquisitions (in 2^32) write the same
  // word, so a takeover compare-and-swap against a word read earlier fails
  // once the lock has changed hands, even to an adopter of the same record.
  alignas(kCacheLine) std::atomic<uint64_t> structure_lock;
  std::atomic<uint32_t> structure_seq;
  std::atomic<uint32_t> live_entries;  // entries in use (live + zombie)
  std::atomic<uint32_t> alloc_hint;    // where to start looking for a free entry
  std::atomic<uint32_t> retire_seq;    // odd while folding a dropped entry's statistics
  std::atomic<uint64_t> full_table_events;
  std::atomic<uint64_t> entries_created;
  std::atomic<uint64_t> entries_dropped;
  // Statistics of dropped entries, folded in inside a retire_seq window.
  std::atomic<uint64_t> retired_acquired;
  std::atomic<uint64_t> retired_refused;
  std::atomic<uint64_t> retired_waited;
  std::atomic<uint64_t> retired_wait_ns;
  std::atomic<uint64_t> retired_forced_total;
  std::atomic<uint64_t> retired_wakeups;
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
inline Cell* CellRow(TableHeader* h, uint32_t owner_id) {
  auto* cells = reinterpret_cast<Cell*>(reinterpret_cast<char*>(h) + h->cells_offset);
  return cells + size_t{owner_id - 1} * h->capacity;
}
inline Cell& CellAt(TableHeader* h, uint32_t owner_id, uint32_t entry) {
  return CellRow(h, owner_id)[entry];
}
inline Bucket* Buckets(TableHeader* h) {
  return reinterpret_cast<Bucket*>(reinterpret_cast<char*>(h) + h->index_offset);
}
inline Entry& EntryAt(TableHeader* h, uint32_t index) {
  return reinterpret_cast<Entry*>(reinterpret_cast<char*>(h) + h->entries_offset)[index];
}
inline EntryKey& KeyAt(TableHeader* h, uint32_t index) {
  return reinterpret_cast<EntryKey*>(reinterpret_cast<char*>(h) + h->keys_offset)[index];
}

inline constexpr uint64_t LockWord(uint32_t owner_id, uint32_t seq) {
  return (uint64_t{owner_id} << 32) | seq;
}
inline constexpr uint32_t LockOwner(uint64_t lock) { return static_cast<uint32_t>(lock >> 32); }

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_LAYOUT_H_
