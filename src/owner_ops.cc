// owner_ops.cc — how owners change the shared counter table.
//
// LOCKING AND ATOMICITY PROTOCOL
// ==============================
// Locks
//   Entry lock (Entry::lock). A word holding (owner id << 32 | seq) of its
//   holder, 0 when free; seq is the holder's own operation counter. Every
//   change to an entry's counters (state, count, waiters, forced, reserved),
//   to a hold cell (owner, entry) or to an owner's waiting_on is made with
//   that entry's lock held. Taking it is one compare-and-swap; it is held for
//   a few dozen instructions, never across a sleep or a system call, and the
//   only foreign code run under it is the caller's limit function.
//   Structure lock (TableHeader::structure_lock), same encoding. Serialises
//   changes to the index and to entry lifecycle: kFree -> kLive (insert),
//   kZombie -> kLive (revive), kZombie -> kFree (drop). kLive -> kZombie
//   happens under the entry lock alone, when count and waiters reach zero.
//   Order: the structure lock before an entry lock, never the reverse; an
//   owner holds at most one entry lock at a time.
// Lookup
//   Lock-free: probe the index, lock the candidate entry, and accept it only
//   if it is kLive and holds the key (entries are re-used, so only a check
//   made under the entry lock counts). A miss is confirmed under the structure
//   lock, where the index is exact, before an entry is created; so there is
//   never more than one entry for a key and the limit is never split.
// Commit and redo
//   A change under an entry lock first writes the owner's Intent (the new
//   counters, the new hold cell and waiting_on of the target owner), then
//   publishes it by storing Intent::seq = the seq of its lock word, then
//   applies it, then unlocks. If the holder dies at any instruction, whoever
//   takes over the lock (compare-and-swap from the dead holder's word, see
//   reclaim.cc) finds one of two cases:
//     Intent::seq != the lock's seq: nothing was applied yet; the entry,
//       its hold cells and waiting_on are exactly as before the operation.
//     Intent::seq == the lock's seq: the intent is complete; applying it
//       again writes the same absolute values, so the entry ends exactly as
//       after the operation.
//   Therefore at every unlock: count == sum of all hold cells' totals (forced
//   and reserved alike), and waiters == number of owners whose waiting_on
//   names the entry. Cumulative statistics are not logged and may miss the
//   dead holder's last increment; slots never are.
// Readers
//   Snapshots never lock. Apply brackets its stores with Entry::version (odd
//   while writing); readers retry when the version was odd or changed.
// Wake-ups
//   Waiters sleep on Entry::wake_seq (futex). A waiter reads wake_seq before
//   evaluating its condition and sleeps only while wake_seq still holds that
//   value. A release that leaves waiters queued increments wake_seq under the
//   entry lock and wakes one sleeper after unlocking; WakeAllWaiters
//   increments it without the lock and wakes all. An increment that lands
//   between a waiter's read and its sleep makes the sleep return at once, so
//   no wake-up is lost.
// Fairness
//   A freed slot goes to a queued waiter: optional acquires and not yet queued
//   waiting acquires are admitted only while count + waiters < limit.

#include "internal/owner_ops.h"

#include <sched.h>

#include <algorithm>
#include <cassert>
#include <climits>
#include <cstring>

#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "internal/futex.h"

namespace connthrottle {

using internal::Bucket;
using internal::Buckets;
using internal::Entry;
using internal::EntryAt;
using internal::Hold;
using internal::HoldAt;
using internal::Intent;
using internal::kFree;
using internal::kLive;
using internal::kZombie;
using internal::LockOwner;
using internal::LockSeq;
using internal::LockWord;
using internal::OwnerAt;

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;
constexpr auto kAcquire = std::memory_order_acquire;
constexpr auto kRelease = std::memory_order_release;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins briefly, then yields the processor. Pause() returns true every so
// often once yielding, which is when a waiter for a lock asks whether the
// holder has died.
class Backoff {
 public:
  bool Pause() {
    if (spins_ < 64) {
      for (int i = 0; i < (1 << std::min(spins_ / 8, 5)); ++i) CpuRelax();
      ++spins_;
      return false;
    }
    sched_yield();
    return (++yields_ % 64) == 0;
  }

 private:
  int spins_ = 0;
  uint32_t yields_ = 0;
};

// Host names are compared and stored as zero-padded 64-bit words.
inline uint64_t HostWord(std::string_view host, size_t word) {
  uint64_t w = 0;
  size_t offset = word * 8;
  std::memcpy(&w, host.data() + offset, std::min<size_t>(8, host.size() - offset));
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------
// Locks

Locked OwnerOps::LockEntry(uint32_t entry) {
  uint64_t mine = LockWord(owner_.id_, NextSeq());
  uint64_t expected = 0;
  if (ABSL_PREDICT_TRUE(
          EntryAt(h_, entry).lock.compare_exchange_strong(expected, mine, kAcquire, kRelaxed))) {
    return {entry, mine};
  }
  return LockEntrySlow(entry, mine);
}

Locked OwnerOps::LockEntrySlow(uint32_t entry, uint64_t mine) {
  std::atomic<uint64_t>& lock = EntryAt(h_, entry).lock;
  const bool reclaim = (h_->flags & internal::kFlagReclaimDeadOwners) != 0;
  Backoff backoff;
  for (;;) {
    uint64_t current = lock.load(kRelaxed);
    if (current == 0) {
      if (lock.compare_exchange_weak(current, mine, kAcquire, kRelaxed)) return {entry, mine};
      continue;
    }
    if (backoff.Pause() && reclaim && HolderIsDead(LockOwner(current)) &&
        lock.compare_exchange_strong(current, mine, kAcquire, kRelaxed)) {
      Locked locked{entry, mine};
      ResolveDeadEntryLock(locked, current);
      return locked;
    }
  }
}

void OwnerOps::Unlock(const Locked& locked) { EntryAt(h_, locked.entry).lock.store(0, kRelease); }

uint64_t OwnerOps::LockStructure() {
  uint64_t mine = LockWord(owner_.id_, NextSeq());
  std::atomic<uint64_t>& lock = h_->structure_lock;
  uint64_t expected = 0;
  if (ABSL_PREDICT_TRUE(lock.compare_exchange_strong(expected, mine, kAcquire, kRelaxed))) {
    return mine;
  }
  const bool reclaim = (h_->flags & internal::kFlagReclaimDeadOwners) != 0;
  Backoff backoff;
  for (;;) {
    uint64_t current = lock.load(kRelaxed);
    if (current == 0) {
      if (lock.compare_exchange_weak(current, mine, kAcquire, kRelaxed)) return mine;
      continue;
    }
    if (backoff.Pause() && reclaim && HolderIsDead(LockOwner(current)) &&
        lock.compare_exchange_strong(current, mine, kAcquire, kRelaxed)) {
      // The holder died between any two of its steps; the entries are the
      // truth and the index is rebuilt from them.
      RepairIndexLocked();
      return mine;
    }
  }
}

void OwnerOps::UnlockStructure() { h_->structure_lock.store(0, kRelease); }

void OwnerOps::ResolveDeadEntryLock(const Locked& locked, uint64_t dead_word) {
  // The dead holder's stores reached memory before the kernel reported it
  // dead; the fence orders our reads after the takeover.
  std::atomic_thread_fence(kAcquire);
  Intent& intent = OwnerAt(h_, LockOwner(dead_word)).intent;
  if (intent.seq.load(kAcquire) == LockSeq(dead_word) &&
      intent.entry.load(kRelaxed) == locked.entry) {
    EntryImage image{intent.state.load(kRelaxed), intent.count.load(kRelaxed),
                     intent.waiters.load(kRelaxed), intent.forced.load(kRelaxed),
                     intent.reserved.load(kRelaxed)};
    Commit(locked, image, intent.target_owner.load(kRelaxed), intent.hold.load(kRelaxed),
           intent.waiting_on.load(kRelaxed));
  }
  // Whatever the holder was doing, a waiter may be owed a wake-up.
  Entry& entry = EntryAt(h_, locked.entry);
  entry.wake_seq.fetch_add(1, kRelease);
  internal::FutexWake(entry.wake_seq, INT_MAX);
}

// ---------------------------------------------------------------------------
// Committed changes

void OwnerOps::Commit(const Locked& locked, const EntryImage& image, uint32_t target_owner,
                      uint64_t hold, uint32_t waiting_on, const StatDelta& stats) {
  Intent& intent = self_.intent;
  intent.entry.store(locked.entry, kRelaxed);
  intent.state.store(image.state, kRelaxed);
  intent.count.store(image.count, kRelaxed);
  intent.waiters.store(image.waiters, kRelaxed);
  intent.forced.store(image.forced, kRelaxed);
  intent.reserved.store(image.reserved, kRelaxed);
  intent.target_owner.store(target_owner, kRelaxed);
  intent.hold.store(hold, kRelaxed);
  intent.waiting_on.store(waiting_on, kRelaxed);
  intent.seq.store(LockSeq(locked.word), kRelease);
  // No store of Apply may become visible before the intent is published.
  std::atomic_thread_fence(kRelease);
  Apply(locked.entry, image, target_owner, hold, waiting_on, stats);
}

void OwnerOps::Apply(uint32_t entry_index, const EntryImage& image, uint32_t target_owner,
                     uint64_t hold, uint32_t waiting_on, const StatDelta& stats) {
  Entry& entry = EntryAt(h_, entry_index);
  // Odd while writing; `| 1` also repairs a version left odd by a dead writer.
  uint32_t version = entry.version.load(kRelaxed) | 1;
  entry.version.store(version, kRelaxed);
  std::atomic_thread_fence(kRelease);
  entry.state.store(image.state, kRelaxed);
  entry.count.store(image.count, kRelaxed);
  entry.waiters.store(image.waiters, kRelaxed);
  entry.forced.store(image.forced, kRelaxed);
  entry.reserved.store(image.reserved, kRelaxed);
  HoldAt(h_, target_owner, entry_index).store(hold, kRelaxed);
  OwnerAt(h_, target_owner).waiting_on.store(waiting_on, kRelaxed);
  auto add = [](std::atomic<uint64_t>& counter, uint64_t delta) {
    if (delta != 0) counter.store(counter.load(kRelaxed) + delta, kRelaxed);
  };
  add(entry.acquired, stats.acquired);
  add(entry.refused, stats.refused);
  add(entry.waited, stats.waited);
  add(entry.wait_ns, stats.wait_ns);
  add(entry.forced_total, stats.forced_total);
  add(entry.wakeups, stats.wakeups);
  entry.version.store(version + 1, kRelease);
}

EntryImage OwnerOps::Read(uint32_t entry_index) const {
  const Entry& entry = EntryAt(h_, entry_index);
  return {entry.state.load(kRelaxed), entry.count.load(kRelaxed), entry.waiters.load(kRelaxed),
          entry.forced.load(kRelaxed), entry.reserved.load(kRelaxed)};
}

void OwnerOps::AddStats(uint32_t entry_index, const StatDelta& stats) {
  Apply(entry_index, Read(entry_index), owner_.id_,
        HoldAt(h_, owner_.id_, entry_index).load(kRelaxed), self_.waiting_on.load(kRelaxed), stats);
}

// ---------------------------------------------------------------------------
// Index

bool OwnerOps::KeyMatches(uint32_t entry_index, const NodeKey& key) const {
  const Entry& entry = EntryAt(h_, entry_index);
  std::string_view host = key.host();
  if (entry.hash.load(kRelaxed) != key.hash() ||
      entry.port.load(kRelaxed) != static_cast<uint32_t>(key.port()) ||
      entry.database.load(kRelaxed) != key.database() ||
      entry.host_len.load(kRelaxed) != host.size()) {
    return false;
  }
  const size_t words = (host.size() + 7) / 8;
  for (size_t i = 0; i < words; ++i) {
    if (entry.host[i].load(kRelaxed) != HostWord(host, i)) return false;
  }
  return true;
}

std::optional<Locked> OwnerOps::FindLive(const NodeKey& key) {
  const uint32_t mask = h_->index_buckets - 1;
  const uint32_t tag = static_cast<uint32_t>(key.hash());
  Bucket* buckets = Buckets(h_);
  uint32_t i = tag & mask;
  for (uint32_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    uint64_t value = buckets[i].load(kAcquire);
    if (value == 0) return std::nullopt;
    if (static_cast<uint32_t>(value >> 32) != tag) continue;
    Locked locked = LockEntry(static_cast<uint32_t>(value) - 1);
    if (EntryAt(h_, locked.entry).state.load(kRelaxed) == kLive && KeyMatches(locked.entry, key)) {
      return locked;
    }
    Unlock(locked);
  }
  return std::nullopt;
}

std::optional<Locked> OwnerOps::FindOrInsert(const NodeKey& key) {
  if (std::optional<Locked> found = FindLive(key)) return found;

  LockStructure();
  // Under the structure lock the index is exact: a miss here is a real miss.
  const uint32_t mask = h_->index_buckets - 1;
  const uint32_t tag = static_cast<uint32_t>(key.hash());
  Bucket* buckets = Buckets(h_);
  uint32_t i = tag & mask;
  for (uint32_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    uint64_t value = buckets[i].load(kAcquire);
    if (value == 0) break;
    if (static_cast<uint32_t>(value >> 32) != tag) continue;
    Locked locked = LockEntry(static_cast<uint32_t>(value) - 1);
    EntryImage image = Read(locked.entry);
    if ((image.state == kLive || image.state == kZombie) && KeyMatches(locked.entry, key)) {
      if (image.state == kZombie) {
        image.state = kLive;  // revived before anyone dropped it
        Commit(locked, image, owner_.id_, HoldAt(h_, owner_.id_, locked.entry).load(kRelaxed),
               self_.waiting_on.load(kRelaxed));
      }
      UnlockStructure();
      return locked;
    }
    Unlock(locked);
  }

  std::optional<uint32_t> free_entry = AllocateEntryLocked();
  if (!free_entry) {
    h_->full_table_events.fetch_add(1, kRelaxed);
    UnlockStructure();
    return std::nullopt;
  }
  Locked locked = LockEntry(*free_entry);
  Entry& entry = EntryAt(h_, locked.entry);
  // The entry is kFree, so no reader looks at the key until the commit below
  // publishes kLive (and the version change tells snapshot readers to retry).
  std::string_view host = key.host();
  entry.hash.store(key.hash(), kRelaxed);
  entry.port.store(static_cast<uint32_t>(key.port()), kRelaxed);
  entry.database.store(key.database(), kRelaxed);
  entry.host_len.store(static_cast<uint32_t>(host.size()), kRelaxed);
  for (size_t w = 0; w < internal::kHostWords; ++w) {
    entry.host[w].store(w * 8 < host.size() ? HostWord(host, w) : 0, kRelaxed);
  }
  for (auto* counter : {&entry.acquired, &entry.refused, &entry.waited, &entry.wait_ns,
                        &entry.forced_total, &entry.wakeups}) {
    counter->store(0, kRelaxed);
  }
  Commit(locked, EntryImage{kLive, 0, 0, 0, 0}, owner_.id_, 0, self_.waiting_on.load(kRelaxed));
  InsertBucketLocked(locked.entry, key.hash());
  h_->live_entries.fetch_add(1, kRelaxed);
  h_->entries_created.fetch_add(1, kRelaxed);
  UnlockStructure();
  return locked;
}

std::optional<uint32_t> OwnerOps::AllocateEntryLocked() {
  const uint32_t capacity = h_->capacity;
  if (h_->live_entries.load(kRelaxed) < capacity) {
    // kFree -> anything happens only under the structure lock, which we hold.
    uint32_t start = h_->alloc_hint.load(kRelaxed);
    for (uint32_t n = 0; n < capacity; ++n) {
      uint32_t e = (start + n) % capacity;
      if (EntryAt(h_, e).state.load(kRelaxed) == kFree) {
        h_->alloc_hint.store((e + 1) % capacity, kRelaxed);
        return e;
      }
    }
  }
  // Full of busy keys, unless a zombie is waiting to be dropped: take it.
  for (uint32_t e = 0; e < capacity; ++e) {
    if (EntryAt(h_, e).state.load(kRelaxed) != kZombie) continue;
    Locked locked = LockEntry(e);
    bool freed = Read(e).state == kZombie;
    if (freed) FreeZombieLocked(locked);
    Unlock(locked);
    if (freed) return e;
  }
  return std::nullopt;
}

void OwnerOps::InsertBucketLocked(uint32_t entry, uint64_t hash) {
  const uint32_t mask = h_->index_buckets - 1;
  const uint32_t tag = static_cast<uint32_t>(hash);
  Bucket* buckets = Buckets(h_);
  uint32_t i = tag & mask;
  while (buckets[i].load(kRelaxed) != 0) i = (i + 1) & mask;
  buckets[i].store((uint64_t{tag} << 32) | (entry + 1), kRelease);
}

void OwnerOps::RemoveBucketLocked(uint32_t entry) {
  const uint32_t mask = h_->index_buckets - 1;
  Bucket* buckets = Buckets(h_);
  uint32_t i = static_cast<uint32_t>(EntryAt(h_, entry).hash.load(kRelaxed)) & mask;
  uint32_t probes = 0;
  while (static_cast<uint32_t>(buckets[i].load(kRelaxed)) != entry + 1) {
    if (buckets[i].load(kRelaxed) == 0 || ++probes > mask) return;  // not indexed
    i = (i + 1) & mask;
  }
  // Backward-shift deletion keeps linear probing free of tombstones. A
  // lock-free reader racing with it may miss its key; it then retries under
  // the structure lock, which sees the index exactly.
  uint32_t hole = i;
  for (uint32_t j = (i + 1) & mask;; j = (j + 1) & mask) {
    uint64_t value = buckets[j].load(kRelaxed);
    if (value == 0) break;
    uint32_t home = static_cast<uint32_t>(value >> 32) & mask;
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      buckets[hole].store(value, kRelease);
      hole = j;
    }
  }
  buckets[hole].store(0, kRelease);
}

void OwnerOps::DropIfZombie(uint32_t entry) {
  LockStructure();
  Locked locked = LockEntry(entry);
  if (Read(entry).state == kZombie) FreeZombieLocked(locked);
  Unlock(locked);
  UnlockStructure();
}

void OwnerOps::FreeZombieLocked(const Locked& locked) {
  RemoveBucketLocked(locked.entry);
  RetireLocked(locked);
  h_->live_entries.fetch_sub(1, kRelaxed);
}

void OwnerOps::RetireLocked(const Locked& locked) {
  Entry& entry = EntryAt(h_, locked.entry);
  // Fold the entry's statistics into the table totals. Stats() reads both
  // inside the retire_seq window, so a dropped key is counted exactly once.
  uint32_t seq = h_->retire_seq.load(kRelaxed) | 1;
  h_->retire_seq.store(seq, kRelaxed);
  std::atomic_thread_fence(kRelease);
  auto fold = [](std::atomic<uint64_t>& total, const std::atomic<uint64_t>& part) {
    total.store(total.load(kRelaxed) + part.load(kRelaxed), kRelaxed);
  };
  fold(h_->retired_acquired, entry.acquired);
  fold(h_->retired_refused, entry.refused);
  fold(h_->retired_waited, entry.waited);
  fold(h_->retired_wait_ns, entry.wait_ns);
  fold(h_->retired_forced_total, entry.forced_total);
  Commit(locked, EntryImage{kFree, 0, 0, 0, 0}, owner_.id_,
         HoldAt(h_, owner_.id_, locked.entry).load(kRelaxed), self_.waiting_on.load(kRelaxed));
  h_->retire_seq.store(seq + 1, kRelease);
  h_->entries_dropped.fetch_add(1, kRelaxed);
}

void OwnerOps::RepairIndexLocked() {
  Bucket* buckets = Buckets(h_);
  for (uint32_t i = 0; i < h_->index_buckets; ++i) buckets[i].store(0, kRelease);
  uint32_t live = 0;
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    Locked locked = LockEntry(e);  // also resolves entry locks of dead holders
    EntryImage image = Read(e);
    if (image.state != kFree) {
      if (image.count == 0 && image.waiters == 0) {
        // A zombie, or an entry whose inserter died before using it.
        RetireLocked(locked);
      } else {
        InsertBucketLocked(e, EntryAt(h_, e).hash.load(kRelaxed));
        ++live;
      }
    }
    Unlock(locked);
  }
  h_->live_entries.store(live, kRelaxed);
}

// ---------------------------------------------------------------------------
// Acquire and release

absl::Status OwnerOps::Refusal(const NodeKey& key, Limit limit, const EntryImage& image) const {
  return absl::ResourceExhaustedError(
      absl::StrCat("no free connection slot for node ", key.ToString(), ": ", image.count,
                   " in use, ", image.waiters, " waiting, limit ", limit.ToString()));
}

absl::StatusOr<Slot> OwnerOps::TableFull(const NodeKey& key, const AcquireOptions& options) {
  if (options.when_full == FullTablePolicy::kRefuse) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the connection counter table is full (", h_->capacity,
                     " busy nodes); cannot count a connection to ", key.ToString()));
  }
  self_.uncounted.store(self_.uncounted.load(kRelaxed) + 1, kRelaxed);
  return Slot(&owner_, 0, SlotKind::kUncounted, owner_.release_epoch_);
}

absl::StatusOr<Slot> OwnerOps::Grant(const Locked& locked, SlotKind kind, bool dequeue,
                                     const StatDelta& stats) {
  EntryImage image = Read(locked.entry);
  if (image.count >= static_cast<uint32_t>(kMaxSlotsPerKey)) {
    Unlock(locked);
    return absl::ResourceExhaustedError(
        absl::StrCat("node already has the maximum of ", kMaxSlotsPerKey, " slots counted"));
  }
  Hold hold = Hold::Unpack(HoldAt(h_, owner_.id_, locked.entry).load(kRelaxed));
  ++image.count;
  ++hold.total;
  if (kind == SlotKind::kForced) {
    ++image.forced;
    ++hold.forced;
  } else if (kind == SlotKind::kReservation) {
    ++image.reserved;
    ++hold.reserved;
  }
  uint32_t waiting_on = self_.waiting_on.load(kRelaxed);
  if (dequeue) {
    --image.waiters;
    waiting_on = 0;
  }
  StatDelta delta = stats;
  delta.acquired += 1;
  Commit(locked, image, owner_.id_, hold.Pack(), waiting_on, delta);
  Unlock(locked);
  return Slot(&owner_, locked.entry, kind, owner_.release_epoch_);
}

absl::StatusOr<Slot> OwnerOps::TryAcquire(const NodeKey& key, Limit limit,
                                          const AcquireOptions& options) {
  if (!limit.Admits(0, 0)) {
    // Refused whatever the key's count: do not create an entry for it.
    h_->refused_without_entry.fetch_add(1, kRelaxed);
    return Refusal(key, limit, EntryImage{});
  }
  std::optional<Locked> locked = FindOrInsert(key);
  if (!locked) return TableFull(key, options);
  EntryImage image = Read(locked->entry);
  if (!limit.Admits(image.count, image.waiters)) {
    AddStats(locked->entry, StatDelta{.refused = 1});
    Unlock(*locked);
    MaybeReclaimDeadOwners();
    return Refusal(key, limit, image);
  }
  return Grant(*locked, options.reservation ? SlotKind::kReservation : SlotKind::kConnection, false,
               {});
}

absl::StatusOr<Slot> OwnerOps::AcquireForced(const NodeKey& key, const AcquireOptions& options) {
  std::optional<Locked> locked = FindOrInsert(key);
  if (!locked) return TableFull(key, options);
  return Grant(*locked, SlotKind::kForced, false, StatDelta{.forced_total = 1});
}

absl::StatusOr<Slot> OwnerOps::AcquireWaiting(const NodeKey& key,
                                              absl::FunctionRef<Limit()> limit_now,
                                              absl::Time deadline,
                                              absl::FunctionRef<bool()> interrupted,
                                              const AcquireOptions& options) {
  const SlotKind kind = options.reservation ? SlotKind::kReservation : SlotKind::kConnection;
  Limit limit = limit_now();
  if (limit.never_waits()) return TryAcquire(key, limit, options);

  std::optional<Locked> locked = FindOrInsert(key);
  if (!locked) return TableFull(key, options);
  const uint32_t e = locked->entry;
  Entry& entry = EntryAt(h_, e);
  // Read wake_seq before evaluating the limit (see "Wake-ups" above).
  uint32_t seen = entry.wake_seq.load(kAcquire);
  limit = limit_now();
  EntryImage image = Read(e);
  if (limit.Admits(image.count, image.waiters)) return Grant(*locked, kind, false, {});

  // Queue behind the waiters already there.
  const absl::Time start = absl::Now();
  ++image.waiters;
  Commit(*locked, image, owner_.id_, HoldAt(h_, owner_.id_, e).load(kRelaxed), e + 1,
         StatDelta{.waited = 1});
  Unlock(*locked);

  const absl::Duration poll =
      std::clamp(options.poll_interval, absl::Milliseconds(1), absl::Hours(1));
  absl::Status gave_up;
  for (;;) {
    absl::Time now = absl::Now();
    if (interrupted()) {
      gave_up = absl::CancelledError(
          absl::StrCat("wait for a connection slot to node ", key.ToString(), " was interrupted"));
      break;
    }
    if (now >= deadline) {
      gave_up = absl::DeadlineExceededError(
          absl::StrCat("no connection slot to node ", key.ToString(), " became free within ",
                       absl::FormatDuration(now - start), " (limit ", limit.ToString(), ")"));
      break;
    }
    internal::FutexWait(entry.wake_seq, seen, std::min(poll, deadline - now));
    MaybeReclaimDeadOwners();

    seen = entry.wake_seq.load(kAcquire);
    Locked relocked = LockEntry(e);
    limit = limit_now();
    image = Read(e);
    // Woken waiters compete only with each other: no one queued is ahead.
    if (limit.Admits(image.count, 0)) {
      return Grant(
          relocked, kind, /*dequeue=*/true,
          StatDelta{.wait_ns = static_cast<uint64_t>(absl::ToInt64Nanoseconds(absl::Now() - start)),
                    .wakeups = 1});
    }
    AddStats(e, StatDelta{.wakeups = 1});
    Unlock(relocked);
  }

  // Leave the queue. The wake-up this waiter may have consumed is passed on
  // to the next one whenever others are queued: their limits may differ from
  // ours, so only they can tell whether a slot is free for them.
  Locked relocked = LockEntry(e);
  image = Read(e);
  --image.waiters;
  const bool pass_on = image.waiters > 0;
  const bool zombie = image.count == 0 && image.waiters == 0;
  if (zombie) image.state = kZombie;
  Commit(
      relocked, image, owner_.id_, HoldAt(h_, owner_.id_, e).load(kRelaxed), 0,
      StatDelta{.refused = 1,
                .wait_ns = static_cast<uint64_t>(absl::ToInt64Nanoseconds(absl::Now() - start))});
  if (pass_on) entry.wake_seq.fetch_add(1, kRelease);
  Unlock(relocked);
  if (pass_on) internal::FutexWake(entry.wake_seq, 1);
  if (zombie) DropIfZombie(e);
  return gave_up;
}

void OwnerOps::Release(uint32_t e, SlotKind kind) {
  if (kind == SlotKind::kUncounted) {
    uint32_t uncounted = self_.uncounted.load(kRelaxed);
    if (uncounted > 0) self_.uncounted.store(uncounted - 1, kRelaxed);
    return;
  }
  Locked locked = LockEntry(e);
  EntryImage image = Read(e);
  Hold hold = Hold::Unpack(HoldAt(h_, owner_.id_, e).load(kRelaxed));
  assert(hold.total > 0 && image.count > 0);
  if (ABSL_PREDICT_FALSE(hold.total == 0 || image.count == 0)) {
    Unlock(locked);  // given back already (by ReleaseAll or reclamation)
    return;
  }
  --image.count;
  --hold.total;
  if (kind == SlotKind::kForced && hold.forced > 0) {
    --image.forced;
    --hold.forced;
  } else if (kind == SlotKind::kReservation && hold.reserved > 0) {
    --image.reserved;
    --hold.reserved;
  }
  const bool wake = image.waiters > 0;
  const bool zombie = image.count == 0 && !wake;
  if (zombie) image.state = kZombie;
  Commit(locked, image, owner_.id_, hold.Pack(), self_.waiting_on.load(kRelaxed));
  Entry& entry = EntryAt(h_, e);
  if (wake) entry.wake_seq.fetch_add(1, kRelease);
  Unlock(locked);
  if (wake) internal::FutexWake(entry.wake_seq, 1);
  if (zombie) DropIfZombie(e);
  if ((++owner_.ops_since_check_ & 1023) == 0) MaybeReclaimDeadOwners();
}

uint64_t OwnerOps::ReleaseAll() {
  uint64_t released = GiveBackHoldsOf(owner_.id_, /*target_is_dead=*/false);
  released += self_.uncounted.load(kRelaxed);
  self_.uncounted.store(0, kRelaxed);
  ++owner_.release_epoch_;
  return released;
}

uint64_t OwnerOps::GiveBackHoldsOf(uint32_t target, bool target_is_dead) {
  uint64_t released = 0;
  internal::OwnerRecord& record = OwnerAt(h_, target);
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    if (HoldAt(h_, target, e).load(kRelaxed) == 0 &&
        !(target_is_dead && record.waiting_on.load(kRelaxed) == e + 1)) {
      continue;
    }
    Locked locked = LockEntry(e);
    EntryImage image = Read(e);
    Hold hold = Hold::Unpack(HoldAt(h_, target, e).load(kRelaxed));
    uint32_t waiting_on = record.waiting_on.load(kRelaxed);
    bool was_waiting = target_is_dead && waiting_on == e + 1;
    if (hold.total == 0 && !was_waiting) {
      Unlock(locked);
      continue;
    }
    image.count -= std::min(image.count, hold.total);
    image.forced -= std::min(image.forced, hold.forced);
    image.reserved -= std::min(image.reserved, hold.reserved);
    if (was_waiting) {
      image.waiters -= std::min<uint32_t>(image.waiters, 1);
      waiting_on = 0;
    }
    const bool wake = image.waiters > 0;
    const bool zombie = image.state == kLive && image.count == 0 && !wake;
    if (zombie) image.state = kZombie;
    Commit(locked, image, target, 0, waiting_on);
    Entry& entry = EntryAt(h_, e);
    if (wake) entry.wake_seq.fetch_add(1, kRelease);
    Unlock(locked);
    if (wake) internal::FutexWake(entry.wake_seq, INT_MAX);
    if (zombie) DropIfZombie(e);
    released += hold.total;
  }
  return released;
}

}  // namespace connthrottle
