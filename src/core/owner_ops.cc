// owner_ops.cc — how owners change the shared counter table.
//
// LOCKING AND ATOMICITY PROTOCOL
// ==============================
// The ledger
//   Every slot is recorded twice: in its entry's count (Entry::word), which
//   is what limits are checked against, and in the cell of the owner that
//   holds it (Cell::hold: total, forced, reserved). The invariant is
//       count == sum over owners of cell.hold.total   (and likewise forced,
//       reserved; and waiters == owners whose waiting_on names the entry)
//   at every moment when no owner is in flight on the entry (see below).
// Hot paths (owner.cc), one compare-and-swap each
//   An optional acquire of a kConnection slot on an entry this owner has
//   cached, and the release of such a slot, change Entry::word with a single
//   compare-and-swap: it fails if the entry is locked, has waiters, is not
//   live, or carries another tag (it took another key). Around it the owner
//   sets OwnerRecord::in_flight to the entry (release), and after it updates
//   its own cell with plain stores, then clears in_flight (release). The
//   acq_rel compare-and-swap already orders the marker before the word's
//   change; the release store says so, costs nothing on x86, and keeps the
//   marker ordered after the owner's earlier cell stores on weaker machines.
// Entry lock (Entry::word's locked bit, and the holder's stamp)
//   Everything else — creating and dropping entries, waiting, forced and
//   reserved slots, refusals, statistics, other owners' cells — happens with
//   the entry locked. The locker sets its in_flight to the entry just before
//   the compare-and-swap that sets the bit (and clears it if that fails).
//   The same compare-and-swap replaces the count bits of the word with the
//   lock's stamp: the holder's owner id and the next value of its record's
//   lock_seq (layout.h, Word); the holder keeps the count meanwhile and
//   writes it back when it unlocks. While locked, hot-path compare-and-swaps
//   fail, so the holder changes the word's flags and the fields beside it
//   with plain stores and unlocks by storing the new word (release), then
//   clears in_flight. An owner holds at most one entry lock and is never in
//   flight on two entries.
// Why the stamp (the takeover ABA)
//   A waiter that judges the holder dead takes the lock over with a
//   compare-and-swap against the locked word it read before judging. Were
//   the word the same under every holder, the holder could unlock and lock
//   again (or another owner lock) during the judgement, and the stale
//   compare-and-swap would then take a lock a live owner holds: lost
//   updates, a slot admitted over the limit, and a deadlock between the two
//   "holders". With the stamp, every acquisition writes a word different
//   from the previous holder's (another id, or the same id with the next
//   sequence), so the compare-and-swap succeeds only against the very lock
//   the waiter judged. And the judgement is of the holder the word names,
//   by its record's identity (a dead process never comes back to life),
//   not of whoever happens to be in flight when the waiter looks. A word
//   naming the waiter's own id was left by the previous process on its
//   adopted record, and is taken over at once. The stamp keeps only a few
//   sequence bits, so one stale judgement is left: the record changes
//   process (the dead holder's record is reclaimed and registered into, or
//   adopted) and the new process locks the entry 16 times, ending with the
//   same stamp, all between the waiter's read and its compare-and-swap. So
//   the waiter publishes whom it judges (OwnerRecord::judging) before it
//   reads that owner's identity, and keeps it published until its
//   compare-and-swap is done; a process registering into a record, after
//   claiming it, waits until no live owner judges it (AwaitJudges). With a
//   sequentially consistent fence on each side, either the judge sees the
//   new process alive, or the new process waits for the judge: during a
//   judgement that found the holder dead, no live process writes a stamp
//   with the holder's id.
// Structure lock (TableHeader::structure_lock: owner id << 32 | seq)
//   Serialises the index and the entry lifecycle changes that touch it:
//   free -> live (insert) and zombie -> free (drop). Order: the structure
//   lock before an entry lock, never the reverse.
// Entry lifecycle: zombies are revived on the word, dropped on demand
//   live -> zombie happens on the word alone, when count and waiters reach
//   zero (the word keeps its tag, loses kLive). The zombie stays indexed and
//   keeps its key. zombie -> live happens on the word alone too: an acquire
//   whose cached (entry, tag) matches a zombie's word (count zero, no flag)
//   revives it with the same one compare-and-swap that takes the slot, and a
//   locked acquire finding the zombie through the index revives it under
//   the lock. So a key whose count keeps falling to zero never touches the
//   structure lock. A zombie is dropped only when its entry is needed: when
//   a new key finds no free entry, it locks a zombie (under the structure
//   lock), checks it is still one, retires it and takes the entry. Retiring
//   changes the tag, so a hint cached for the old key can no longer revive
//   it: the lock makes a racing revive's compare-and-swap fail first, and
//   the tag keeps it failing afterwards. How both promises fit: a zombie
//   counts no slot and is not listed, and any number of them yield to new
//   keys, so a table of capacity C still tracks C busy keys however many
//   keys it has seen; what a zombie keeps is only its place, its key and
//   its statistics, until someone needs the place.
// Lookup
//   Lock-free: probe the index, lock the candidate, and accept it only if it
//   is live and holds the key (entries are re-used, so only a check made
//   under the lock counts). A miss is confirmed under the structure lock,
//   where the index is exact, before an entry is created: there is never more
//   than one entry per key, so a limit is never split. Each owner caches
//   (key -> entry, tag); the tag in the hot path's expected word makes a
//   stale hint fail instead of touching another key.
// Recovery (only with TableOptions::reclaim_dead_owners; see reclaim.cc)
//   Whoever finds an entry locked by a dead owner, or reclaims a dead owner,
//   locks the entry, waits until no live owner is in flight on it, and then
//   recomputes its counters from the cells of live owners alone, clearing the
//   cells of dead ones. Whatever a dead owner was doing — at any instruction,
//   locked or in flight — drops out: its cells were its only claim. The
//   recomputation is a pure function of the live ledger, so doing it twice,
//   or in two processes one after the other, gives the same result.
// Readers
//   Snapshots never lock: they read the word (unlocked), the fields, and the
//   word and Entry::version again, and retry on any change.
// Wake-ups
//   Waiters sleep on Entry::wake_seq (futex). A waiter reads wake_seq before
//   evaluating its condition and sleeps only while wake_seq still holds that
//   value. A release that finds waiters queued increments wake_seq under the
//   entry lock and wakes one sleeper after unlocking; WakeAllWaiters
//   increments it without the lock and wakes all. An increment that lands
//   between a waiter's read and its sleep makes the sleep return at once, so
//   no wake-up is lost.
// Fairness
//   A freed slot goes to a queued waiter: optional acquires and not yet
//   queued waiting acquires are admitted only while count + waiters < limit
//   (the hot path only runs while there are no waiters).

#include "core/internal/owner_ops.h"

#include <sched.h>

#include <algorithm>
#include <cassert>
#include <climits>

#include "absl/base/optimization.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/internal/backoff.h"
#include "core/internal/futex.h"
#include "core/internal/memory_order.h"
#include "core/internal/test_hooks.h"

namespace connthrottle {

namespace {
constexpr char kTableFullPayload[] = "type.connthrottle/table-full";
}  // namespace

bool IsTableFullError(const absl::Status& status) {
  return absl::IsResourceExhausted(status) && status.GetPayload(kTableFullPayload).has_value();
}

using internal::Backoff;
using internal::Bucket;
using internal::Buckets;
using internal::Cell;
using internal::CellAt;
using internal::Entry;
using internal::Hold;
using internal::LockOwner;
using internal::LockWord;
using internal::OwnerAt;
using internal::Word;

namespace {

void AddTo(std::atomic<uint64_t>& counter, uint64_t delta) {
  if (delta != 0) counter.store(counter.load(kRelaxed) + delta, kRelaxed);
}

}  // namespace

std::string CounterKey::Name() const {
  if (level == CounterLevel::kNode) return absl::StrCat("node ", key.NodeName());
  return absl::StrCat("database ", key.database(), " on node ", key.NodeName());
}

std::string CounterKey::LimitText(const Limit& limit) const {
  if (level == CounterLevel::kNode) return limit.ToString();
  return absl::StrCat(limit.ToString(), " per database");
}

void OwnerOps::Remember(CounterKey key, uint32_t entry) {
  owner_.CacheSlot(key.cache_id()) = {
      key.cache_id(), (Word::Tag(EntryOf(entry).word.load(kRelaxed)) << 24) | entry};
}

// ---------------------------------------------------------------------------
// The entry lock

void OwnerOps::LockEntry(uint32_t e) {
  std::atomic<uint64_t>& word = EntryOf(e).word;
  // This lock's stamp: our id and the next value of our record's lock_seq,
  // so that the word differs from what it was under any earlier holder,
  // including an earlier lock of our own.
  const uint32_t seq = self_.lock_seq.load(kRelaxed) + 1;
  self_.lock_seq.store(seq, kRelaxed);
  const uint64_t stamp = Word::Stamp(owner_.id_, seq);
  Backoff backoff;
  for (;;) {
    uint64_t current = word.load(kAcquire);
    if (!(current & Word::kLocked)) {
      self_.in_flight.store(e + 1, kRelease);
      if (word.compare_exchange_weak(current, (current & ~Word::kStampMask) | Word::kLocked | stamp,
                                     kAcqRel, kRelaxed)) {
        owner_.locked_count_ = Word::Count(current);
        // Readers that see any store made under the lock also see the lock.
        std::atomic_thread_fence(kRelease);
        return;
      }
      self_.in_flight.store(0, kRelease);
      continue;
    }
    // The word names its holder. One naming us was left by the process that
    // held our (adopted) record before: an owner never waits for an entry
    // lock while it holds one. Any other holder is waited for, unless it is
    // dead. The holder is judged by its record's identity, which for a given
    // process never turns from dead to alive; and whatever we judged, the
    // compare-and-swap below succeeds only against the very lock we judged:
    // a lock taken since, even by the same owner, carries another stamp.
    const uint32_t holder = Word::Holder(current);
    if (holder != owner_.id_) {
      if (!backoff.Pause() || !reclaiming()) continue;
      internal::TestPoint("LockEntry.judge_holder");
      if (!HolderIsDead(holder)) continue;
      internal::TestPoint("LockEntry.takeover");
    }
    // Take the lock over by putting our stamp in it: of several live owners
    // that all judged the holder dead, exactly one succeeds.
    self_.in_flight.store(e + 1, kRelease);
    const bool took = word.compare_exchange_strong(current, (current & ~Word::kStampMask) | stamp,
                                                   kAcqRel, kRelaxed);
    EndJudging();
    if (took) {
      std::atomic_thread_fence(kRelease);
      internal::TestPoint("LockEntry.took_over");
      // The dead holder may have left anything half-written under the lock
      // (and its count is lost with it); the live ledger is the truth, for
      // every field.
      uint64_t reclaimed = 0;
      WriteLocked(e, RecomputeLocked(e, /*exclude_self=*/false, &reclaimed));
      h_->slots_reclaimed.fetch_add(reclaimed, kRelaxed);
      // A waiter may be owed a wake-up from whatever the holder was doing.
      Entry& entry = EntryOf(e);
      entry.wake_seq.fetch_add(1, kRelease);
      internal::FutexWake(entry.wake_seq, INT_MAX);
      return;
    }
    self_.in_flight.store(0, kRelease);
  }
}

EntryCounts OwnerOps::ReadLocked(uint32_t e) {
  const Entry& entry = EntryOf(e);
  const uint64_t w = entry.word.load(kRelaxed);
  return {owner_.locked_count_, entry.waiters.load(kRelaxed), entry.forced.load(kRelaxed),
          entry.reserved.load(kRelaxed), (w & Word::kLive) != 0};
}

void OwnerOps::WriteLocked(uint32_t e, const EntryCounts& counts) {
  Entry& entry = EntryOf(e);
  entry.waiters.store(counts.waiters, kRelaxed);
  entry.forced.store(counts.forced, kRelaxed);
  entry.reserved.store(counts.reserved, kRelaxed);
  entry.version.store(entry.version.load(kRelaxed) + 1, kRelaxed);
  // The count goes into the word when we unlock; the stamp stays till then.
  owner_.locked_count_ = counts.count & static_cast<uint32_t>(Word::kCountMask);
  const uint64_t w = entry.word.load(kRelaxed);
  entry.word.store((w & ~(Word::kHasWaiters | Word::kLive)) |
                       (counts.waiters ? Word::kHasWaiters : 0) | (counts.live ? Word::kLive : 0),
                   kRelaxed);
}

void OwnerOps::Unlock(uint32_t e, const EntryCounts& counts) {
  WriteLocked(e, counts);
  UnlockUnchanged(e);
}

void OwnerOps::UnlockUnchanged(uint32_t e) {
  std::atomic<uint64_t>& word = EntryOf(e).word;
  word.store((word.load(kRelaxed) & ~(Word::kLocked | Word::kStampMask)) | owner_.locked_count_,
             kRelease);
  self_.in_flight.store(0, kRelease);
}

void OwnerOps::AddStats(uint32_t e, const StatDelta& stats) {
  // Under the entry lock, so a load and a store suffice.
  internal::EntryKey& cold = internal::KeyAt(h_, e);
  AddTo(EntryOf(e).refused, stats.refused);
  AddTo(cold.waited, stats.waited);
  AddTo(cold.wait_ns, stats.wait_ns);
  AddTo(cold.forced_total, stats.forced_total);
  AddTo(cold.wakeups, stats.wakeups);
}

void OwnerOps::AwaitInFlight(uint32_t e) {
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    if (id == owner_.id_) continue;
    std::atomic<uint32_t>& in_flight = OwnerAt(h_, id).in_flight;
    if (in_flight.load(kAcquire) != e + 1) continue;
    // A live owner in flight here changed the word before we locked it and is
    // a few instructions from updating its cell; a dead one never will, and
    // one that dies while we wait never will either.
    if (reclaiming() && !OwnerIsAlive(id)) continue;
    Backoff backoff;
    while (in_flight.load(kAcquire) == e + 1) {
      if (backoff.Pause() && reclaiming() && !OwnerIsAlive(id)) break;
    }
  }
}

EntryCounts OwnerOps::RecomputeLocked(uint32_t e, bool exclude_self, uint64_t* reclaimed) {
  AwaitInFlight(e);
  Entry& entry = EntryOf(e);
  EntryCounts counts;
  uint64_t folded = 0;
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    Cell& cell = CellAt(h_, id, e);
    internal::OwnerRecord& record = OwnerAt(h_, id);
    const uint64_t hold_word = cell.hold.load(kAcquire);
    const uint64_t acquired = cell.acquired.load(kRelaxed);
    const bool queued = record.waiting_on.load(kRelaxed) == e + 1;
    const bool in_flight = record.in_flight.load(kRelaxed) == e + 1 && id != owner_.id_;
    if (hold_word == 0 && acquired == 0 && !queued && !in_flight) continue;
    const bool alive = id == owner_.id_ ? !exclude_self : OwnerIsAlive(id);
    if (alive) {
      Hold hold = Hold::Unpack(hold_word);
      counts.count += hold.total;
      counts.forced += hold.forced;
      counts.reserved += hold.reserved;
      if (queued) ++counts.waiters;
      continue;
    }
    // A dead owner's claims on this entry end here. (Its in_flight is left
    // alone: judged by liveness, it is harmless, and the record may already
    // belong to an adopter whose own marker must not be cleared; the
    // reclaimer clears it before freeing the record.)
    folded += acquired;
    if (reclaimed != nullptr) *reclaimed += Hold::Unpack(hold_word).total;
    cell.hold.store(0, kRelaxed);
    cell.acquired.store(0, kRelaxed);
    if (queued) record.waiting_on.store(0, kRelaxed);
  }
  AddTo(entry.acquired_base, folded);
  // In use with nothing held or awaited is a zombie, to be dropped.
  counts.live = entry.in_use.load(kRelaxed) != 0 && (counts.count > 0 || counts.waiters > 0);
  return counts;
}

// ---------------------------------------------------------------------------
// The structure lock

uint64_t OwnerOps::NextStructureLockWord() {
  return LockWord(owner_.id_, h_->structure_seq.fetch_add(1, kRelaxed) + 1);
}

uint64_t OwnerOps::LockStructure() {
  const uint64_t mine = NextStructureLockWord();
  std::atomic<uint64_t>& lock = h_->structure_lock;
  Backoff backoff;
  for (;;) {
    uint64_t current = lock.load(kRelaxed);
    if (current == 0) {
      if (lock.compare_exchange_weak(current, mine, kAcquire, kRelaxed)) {
        internal::TestPoint("LockStructure.locked");
        return mine;
      }
      continue;
    }
    // Owners hold at most one structure lock and never wait for it while
    // holding it, so a word naming our own id was left by the previous
    // process on our (adopted) record: take it over at once.
    // Anyone else is waited for unless it is dead. Whatever we judged, the
    // compare-and-swap succeeds only against the very acquisition we judged:
    // every acquisition writes a word of its own (NextStructureLockWord).
    const bool ours = LockOwner(current) == owner_.id_;
    if (!ours) {
      if (!backoff.Pause() || !reclaiming() || !HolderIsDead(LockOwner(current))) continue;
      internal::TestPoint("LockStructure.takeover");
    }
    const bool took = lock.compare_exchange_strong(current, mine, kAcquire, kRelaxed);
    EndJudging();
    if (took) {
      internal::TestPoint("LockStructure.took_over");
      // The holder died between any two of its steps; the entries are the
      // truth and the index is rebuilt from them.
      RepairIndexLocked();
      return mine;
    }
    if (!ours) internal::TestPoint("LockStructure.takeover_lost");
  }
}

void OwnerOps::UnlockStructure() { h_->structure_lock.store(0, kRelease); }

// ---------------------------------------------------------------------------
// Index and lifecycle

bool OwnerOps::KeyMatches(uint32_t e, CounterKey key) const {
  const Entry& entry = owner_.entries_[e];
  if (entry.hash.load(kRelaxed) != key.hash() || entry.meta.load(kRelaxed) != key.meta()) {
    return false;
  }
  const internal::EntryKey& stored = internal::KeyAt(h_, e);
  const size_t words = key.key.host_words();
  for (size_t i = 0; i < words; ++i) {
    if (stored.host[i].load(kRelaxed) != key.key.host_word(i)) return false;
  }
  return true;
}

std::optional<uint32_t> OwnerOps::FindLive(CounterKey key) {
  const uint32_t mask = h_->index_buckets - 1;
  const uint32_t tag = static_cast<uint32_t>(key.hash());
  Bucket* buckets = Buckets(h_);
  uint32_t i = tag & mask;
  for (uint32_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    uint64_t value = buckets[i].load(kAcquire);
    if (value == 0) return std::nullopt;
    if (static_cast<uint32_t>(value >> 32) != tag) continue;
    const uint32_t e = static_cast<uint32_t>(value) - 1;
    LockEntry(e);
    if (ReadLocked(e).live && KeyMatches(e, key)) return e;
    UnlockUnchanged(e);
  }
  return std::nullopt;
}

std::optional<uint32_t> OwnerOps::FindOrInsert(CounterKey key) {
  if (std::optional<uint32_t> found = FindLive(key)) return found;

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
    const uint32_t e = static_cast<uint32_t>(value) - 1;
    LockEntry(e);
    if (EntryOf(e).in_use.load(kRelaxed) && KeyMatches(e, key)) {
      // A zombie is revived before anyone dropped it: same key, same tag
      // (the hot path revives zombies without us; this is the locked way).
      std::atomic<uint64_t>& word = EntryOf(e).word;
      word.store(word.load(kRelaxed) | Word::kLive, kRelaxed);
      UnlockStructure();
      return e;
    }
    UnlockUnchanged(e);
  }

  std::optional<uint32_t> free_entry = AllocateEntryLocked();
  if (!free_entry) {
    h_->full_table_events.fetch_add(1, kRelaxed);
    UnlockStructure();
    return std::nullopt;
  }
  const uint32_t e = *free_entry;
  LockEntry(e);
  Entry& entry = EntryOf(e);
  // The entry is not in use, so no reader looks at its key until the unlock
  // below publishes it live with a new tag.
  internal::EntryKey& cold = internal::KeyAt(h_, e);
  entry.hash.store(key.hash(), kRelaxed);
  entry.meta.store(key.meta(), kRelaxed);
  for (size_t w = 0; w < internal::kHostWords; ++w) {
    cold.host[w].store(w < key.key.host_words() ? key.key.host_word(w) : 0, kRelaxed);
  }
  for (auto* counter : {&entry.acquired_base, &entry.refused, &cold.waited, &cold.wait_ns,
                        &cold.forced_total, &cold.wakeups}) {
    counter->store(0, kRelaxed);
  }
  entry.waiters.store(0, kRelaxed);
  entry.forced.store(0, kRelaxed);
  entry.reserved.store(0, kRelaxed);
  cold.parked.store(0, kRelaxed);
  entry.in_use.store(1, kRelaxed);
  // A new tag: cached hints for the key this entry held before now fail.
  const uint64_t w = entry.word.load(kRelaxed);
  entry.word.store(
      Word::WithTag(Word::Tag(w) + 1) | Word::kLive | Word::kLocked | (w & Word::kStampMask),
      kRelaxed);
  owner_.locked_count_ = 0;
  InsertBucketLocked(e, key.hash());
  h_->live_entries.fetch_add(1, kRelaxed);
  h_->entries_created.fetch_add(1, kRelaxed);
  UnlockStructure();
  return e;
}

std::optional<uint32_t> OwnerOps::AllocateEntryLocked() {
  const uint32_t capacity = h_->capacity;
  if (h_->live_entries.load(kRelaxed) < capacity) {
    // in_use changes only under the structure lock, which we hold.
    uint32_t start = h_->alloc_hint.load(kRelaxed);
    for (uint32_t n = 0; n < capacity; ++n) {
      uint32_t e = (start + n) % capacity;
      if (!EntryOf(e).in_use.load(kRelaxed)) {
        h_->alloc_hint.store((e + 1) % capacity, kRelaxed);
        return e;
      }
    }
  }
  // Every entry in use: drop a zombie, if there is one, and take its place.
  // Start where the last allocation ended, so that the zombies dropped are
  // spread over the table rather than always the first ones.
  //
  // A scan sees each entry at another moment, and keys keep falling to zero
  // and reviving on the hot path meanwhile: an owner seen holding entry A can
  // release it and revive zombie B before the scan reaches B, so one slot can
  // make two entries look busy and a scan find no zombie although there was
  // always one (tests/multiprocess_test, FallingKeysStayExact, under load).
  // A few passes, yielding between them, make that unlikely; they do not
  // make it impossible — an exact answer needs a snapshot of every word at
  // once (open work, issue 13's note).
  constexpr int kPasses = 4;
  for (int pass = 0; pass < kPasses; ++pass) {
    if (pass > 0) sched_yield();
    const uint32_t start = h_->alloc_hint.load(kRelaxed);
    for (uint32_t n = 0; n < capacity; ++n) {
      const uint32_t e = (start + n) % capacity;
      if (EntryOf(e).word.load(kRelaxed) & Word::kLive) continue;
      LockEntry(e);
      EntryCounts counts = ReadLocked(e);
      if (EntryOf(e).in_use.load(kRelaxed) && !counts.live && counts.count == 0 &&
          counts.waiters == 0) {
        RemoveBucketLocked(e);
        RetireLocked(e);
        h_->live_entries.fetch_sub(1, kRelaxed);
        h_->alloc_hint.store((e + 1) % capacity, kRelaxed);
        UnlockUnchanged(e);
        return e;
      }
      UnlockUnchanged(e);
    }
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
  uint32_t i = static_cast<uint32_t>(EntryOf(entry).hash.load(kRelaxed)) & mask;
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

void OwnerOps::RetireLocked(uint32_t e) {
  // The hot-path release that made this entry a zombie may still be writing
  // its cell; after this no one can be in flight here (the entry is not live).
  AwaitInFlight(e);
  Entry& entry = EntryOf(e);
  // Fold the entry's statistics into the table totals. Stats() reads both
  // inside the retire_seq window, so a dropped key is counted exactly once.
  uint32_t seq = h_->retire_seq.load(kRelaxed) | 1;
  h_->retire_seq.store(seq, kRelaxed);
  std::atomic_thread_fence(kRelease);
  uint64_t acquired = entry.acquired_base.load(kRelaxed);
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    Cell& cell = CellAt(h_, id, e);
    acquired += cell.acquired.load(kRelaxed);
    cell.acquired.store(0, kRelaxed);
    // With no slot counted and no one in flight, a hold left here can only be
    // a dead owner's, cut short between its release and its cell update.
    cell.hold.store(0, kRelaxed);
  }
  AddTo(h_->retired_acquired, acquired);
  const internal::EntryKey& cold = internal::KeyAt(h_, e);
  AddTo(h_->retired_refused, entry.refused.load(kRelaxed));
  AddTo(h_->retired_waited, cold.waited.load(kRelaxed));
  AddTo(h_->retired_wait_ns, cold.wait_ns.load(kRelaxed));
  AddTo(h_->retired_forced_total, cold.forced_total.load(kRelaxed));
  AddTo(h_->retired_wakeups, cold.wakeups.load(kRelaxed));
  entry.acquired_base.store(0, kRelaxed);
  entry.in_use.store(0, kRelaxed);
  // A new tag: cached hints for the dropped key fail from now on, instead of
  // reviving a free entry (the hot path revives zombies by their tag).
  const uint64_t w = entry.word.load(kRelaxed);
  entry.word.store((w & ~(Word::kTagMask << Word::kTagShift)) | Word::WithTag(Word::Tag(w) + 1),
                   kRelaxed);
  entry.version.store(entry.version.load(kRelaxed) + 1, kRelaxed);
  h_->retire_seq.store(seq + 1, kRelease);
  h_->entries_dropped.fetch_add(1, kRelaxed);
}

absl::Status OwnerOps::Audit() {
  ReclaimDeadOwners();  // what dead owners hold is not theirs to account for
  std::vector<std::string> problems;
  auto problem = [&](std::string text) {
    if (problems.size() < 20) problems.push_back(std::move(text));
  };
  LockStructure();  // the index and entry lifecycle hold still
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    LockEntry(e);
    AwaitInFlight(e);  // hot paths that changed the word before we locked it
    const Entry& entry = EntryOf(e);
    const EntryCounts counts = ReadLocked(e);
    const bool in_use = entry.in_use.load(kRelaxed) != 0;
    const uint64_t word = entry.word.load(kRelaxed);
    uint64_t held = 0, forced = 0, reserved = 0, queued = 0;
    for (uint32_t id = 1; id <= h_->max_owners; ++id) {
      Hold hold = Hold::Unpack(CellAt(h_, id, e).hold.load(kAcquire));
      held += hold.total;
      forced += hold.forced;
      reserved += hold.reserved;
      if (OwnerAt(h_, id).waiting_on.load(kRelaxed) == e + 1) ++queued;
    }
    if (counts.count != held || counts.forced != forced || counts.reserved != reserved ||
        counts.waiters != queued) {
      problem(absl::StrCat("entry ", e, ": count ", counts.count, " vs held ", held, ", forced ",
                           counts.forced, " vs ", forced, ", reserved ", counts.reserved, " vs ",
                           reserved, ", waiters ", counts.waiters, " vs queued ", queued));
    }
    if (!in_use && (counts.count != 0 || counts.waiters != 0 || counts.live)) {
      problem(absl::StrCat("free entry ", e, " has count ", counts.count, ", waiters ",
                           counts.waiters));
    }
    if (((word & Word::kHasWaiters) != 0) != (counts.waiters != 0)) {
      problem(
          absl::StrCat("entry ", e, ": has_waiters disagrees with ", counts.waiters, " waiters"));
    }
    if (in_use && counts.live != (counts.count > 0 || counts.waiters > 0) && counts.live) {
      problem(absl::StrCat("entry ", e, " is live with nothing held or awaited"));
    }
    if (in_use) {
      // Reachable through the index: between its home bucket and an empty one.
      const uint32_t mask = h_->index_buckets - 1;
      uint32_t i = static_cast<uint32_t>(entry.hash.load(kRelaxed)) & mask;
      bool found = false;
      for (uint32_t probes = 0; probes <= mask && !found; ++probes, i = (i + 1) & mask) {
        uint64_t value = Buckets(h_)[i].load(kAcquire);
        if (value == 0) break;
        found = static_cast<uint32_t>(value) == e + 1;
      }
      if (!found) problem(absl::StrCat("entry ", e, " in use is not reachable through the index"));
    }
    UnlockUnchanged(e);
  }
  for (uint32_t id = 1; id <= h_->max_owners; ++id) {
    if (OwnerAt(h_, id).identity.load(kAcquire) != 0) continue;
    for (uint32_t e = 0; e < h_->capacity; ++e) {
      if (CellAt(h_, id, e).hold.load(kRelaxed) != 0) {
        problem(absl::StrCat("free owner record ", id, " still holds slots on entry ", e));
        break;
      }
    }
  }
  UnlockStructure();
  if (problems.empty()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("counter table audit found ", problems.size(),
                                          " problem(s): ", absl::StrJoin(problems, "; ")));
}

void OwnerOps::RepairIndexLocked() {
  Bucket* buckets = Buckets(h_);
  for (uint32_t i = 0; i < h_->index_buckets; ++i) buckets[i].store(0, kRelease);
  uint32_t live = 0;
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    LockEntry(e);  // also takes over entry locks of dead holders
    EntryCounts counts = ReadLocked(e);
    if (EntryOf(e).in_use.load(kRelaxed)) {
      if (counts.count == 0 && counts.waiters == 0) {
        // A zombie, or an entry whose inserter died before using it.
        RetireLocked(e);
        counts.live = false;
        Unlock(e, counts);
        continue;
      }
      InsertBucketLocked(e, EntryOf(e).hash.load(kRelaxed));
      ++live;
    }
    UnlockUnchanged(e);
  }
  h_->live_entries.store(live, kRelaxed);
}

// ---------------------------------------------------------------------------
// Acquire and release

absl::Status OwnerOps::Refusal(CounterKey key, Limit limit, const EntryCounts& counts) const {
  return absl::ResourceExhaustedError(absl::StrCat("no free connection slot for ", key.Name(), ": ",
                                                   counts.count, " in use, ", counts.waiters,
                                                   " waiting, limit ", key.LimitText(limit)));
}

absl::StatusOr<Slot> OwnerOps::TableFull(CounterKey key, const AcquireOptions& options) {
  if (options.when_full == FullTablePolicy::kRefuse) {
    absl::Status full = absl::ResourceExhaustedError(
        key.level == CounterLevel::kNode
            ? absl::StrCat("the connection counter table is full (", h_->capacity,
                           " busy nodes); cannot count a connection to ", key.key.NodeName())
            : absl::StrCat("the connection counter table is full (", h_->capacity,
                           " busy counters); cannot count a connection to ", key.Name()));
    full.SetPayload(kTableFullPayload, absl::Cord("full"));
    return full;
  }
  self_.uncounted.store(self_.uncounted.load(kRelaxed) + 1, kRelaxed);
  return Slot(&owner_, 0, SlotKind::kUncounted, owner_.release_epoch_);
}

absl::StatusOr<Slot> OwnerOps::Grant(uint32_t e, SlotKind kind, bool dequeue,
                                     const StatDelta& stats) {
  EntryCounts counts = ReadLocked(e);
  if (counts.count >= static_cast<uint32_t>(kMaxSlotsPerKey)) {
    if (dequeue) {  // leave the queue even though no slot could be given
      --counts.waiters;
      self_.waiting_on.store(0, kRelaxed);
      AddStats(e, stats);
      Unlock(e, counts);
    } else {
      UnlockUnchanged(e);
    }
    return absl::ResourceExhaustedError(
        absl::StrCat("node already has the maximum of ", kMaxSlotsPerKey, " slots counted"));
  }
  Cell& cell = MyCell(e);
  Hold hold = Hold::Unpack(cell.hold.load(kRelaxed));
  ++counts.count;
  ++hold.total;
  if (kind == SlotKind::kForced) {
    ++counts.forced;
    ++hold.forced;
  } else if (kind == SlotKind::kReservation) {
    ++counts.reserved;
    ++hold.reserved;
  }
  if (dequeue) {
    --counts.waiters;
    self_.waiting_on.store(0, kRelaxed);
  }
  counts.live = true;
  cell.hold.store(hold.Pack(), kRelaxed);
  cell.acquired.store(cell.acquired.load(kRelaxed) + 1, kRelaxed);
  AddStats(e, stats);
  Unlock(e, counts);
  return Slot(&owner_, e, kind, owner_.release_epoch_);
}

absl::StatusOr<Slot> OwnerOps::TryAcquireSlow(CounterKey key, Limit limit,
                                              const AcquireOptions& options) {
  if (!limit.Admits(0, 0)) {
    // Refused whatever the key's count: do not create an entry for it.
    h_->refused_without_entry.fetch_add(1, kRelaxed);
    return Refusal(key, limit, EntryCounts{});
  }
  std::optional<uint32_t> e = FindOrInsert(key);
  if (!e) return TableFull(key, options);
  Remember(key, *e);
  EntryCounts counts = ReadLocked(*e);
  if (!limit.Admits(counts.count, counts.waiters)) {
    AddStats(*e, StatDelta{.refused = 1});
    internal::TestPoint("TryAcquireSlow.refusing");
    UnlockUnchanged(*e);
    MaybeReclaimDeadOwners();
    return Refusal(key, limit, counts);
  }
  return Grant(*e, options.reservation ? SlotKind::kReservation : SlotKind::kConnection, false, {});
}

absl::StatusOr<Slot> OwnerOps::AcquireForced(CounterKey key, const AcquireOptions& options) {
  std::optional<uint32_t> e = FindOrInsert(key);
  if (!e) return TableFull(key, options);
  return Grant(*e, SlotKind::kForced, false, StatDelta{.forced_total = 1});
}

absl::StatusOr<Slot> OwnerOps::AcquireWaiting(const NodeKey& key,
                                              absl::FunctionRef<Limit()> limit_now,
                                              absl::Time deadline,
                                              absl::FunctionRef<bool()> interrupted,
                                              const AcquireOptions& options) {
  // The limit is the caller's code: it is evaluated with no lock held, so a
  // callback that is slow, blocks or throws delays only its caller.
  const Limit first = limit_now();
  if (first.never_waits()) return owner_.TryAcquire(key, first, options);
  if (!first.per_database()) {
    return AcquireWaitingAt(CounterKey{key}, limit_now, deadline, interrupted, options);
  }
  // Two levels (owner.h): the database's slot first, then the node's while
  // holding it. A holder of a node slot never waits for a database slot;
  // the other order cannot deadlock either (model/twolevel.pml), but it
  // would hold a node slot, usable by any database, idle while its holder
  // waits for one database's quota. A wait at either level is woken by a
  // release at that level, the only kind that can make room for it. A bound
  // turned off during the wait admits at once.
  absl::StatusOr<Slot> db = AcquireWaitingAt(
      CounterKey{key, CounterLevel::kDatabase},
      [&] {
        const Limit l = limit_now();
        return l.per_database() ? l.DatabaseLevel() : Limit::Unlimited();
      },
      deadline, interrupted, options);
  if (!db.ok()) return db;
  absl::StatusOr<Slot> node =
      AcquireWaitingAt(CounterKey{key}, limit_now, deadline, interrupted, options);
  if (!node.ok()) return node;  // the database's slot is given back with `db`
  return Slot::Join(std::move(*node), std::move(*db));
}

absl::StatusOr<Slot> OwnerOps::AcquireWaitingAt(CounterKey key,
                                                absl::FunctionRef<Limit()> limit_now,
                                                absl::Time deadline,
                                                absl::FunctionRef<bool()> interrupted,
                                                const AcquireOptions& options) {
  const SlotKind kind = options.reservation ? SlotKind::kReservation : SlotKind::kConnection;
  Limit limit = limit_now();
  if (limit.never_waits()) return TryAcquireSlow(key, limit, options);

  std::optional<uint32_t> found = FindOrInsert(key);
  if (!found) return TableFull(key, options);
  const uint32_t e = *found;
  Entry& entry = EntryOf(e);
  // Waiters read wake_seq before evaluating the limit (see "Wake-ups"
  // above). This first decision evaluated it before; a change in between is
  // caught by evaluating it again once queued, below.
  uint32_t seen = entry.wake_seq.load(kAcquire);
  EntryCounts counts = ReadLocked(e);
  const bool resumed = options.wait_began.has_value();
  const absl::Time start = options.wait_began.value_or(absl::Now());
  auto waited_ns = [&] {
    return static_cast<uint64_t>(absl::ToInt64Nanoseconds(absl::Now() - start));
  };
  if (limit.Admits(counts.count, counts.waiters)) {
    return Grant(e, kind, false, resumed ? StatDelta{.wait_ns = waited_ns()} : StatDelta{});
  }

  // Queue behind the waiters already there.
  ++counts.waiters;
  self_.waiting_on.store(e + 1, kRelaxed);
  AddStats(e, StatDelta{.waited = resumed ? 0u : 1u});
  Unlock(e, counts);

  const absl::Duration poll =
      std::clamp(options.poll_interval, absl::Milliseconds(1), absl::Hours(1));
  absl::Status gave_up;
  try {  // the callbacks are the caller's code: if one throws, leave the queue
    const Limit fresh = limit_now();
    bool recheck = !(fresh == limit);  // then decide again before sleeping
    limit = fresh;
    for (;;) {
      absl::Time now = absl::Now();
      if (interrupted()) {
        gave_up = absl::CancelledError(
            absl::StrCat("wait for a connection slot to ", key.Name(), " was interrupted"));
        break;
      }
      if (now >= deadline) {
        gave_up = absl::DeadlineExceededError(
            absl::StrCat("no connection slot to ", key.Name(), " became free within ",
                         absl::FormatDuration(now - start), " (limit ", key.LimitText(limit), ")"));
        break;
      }
      if (!recheck) {
        const bool woken =
            internal::FutexWait(entry.wake_seq, seen, std::min(poll, deadline - now));
        const uint32_t after = entry.wake_seq.load(kAcquire);
        const Limit fresh = limit_now();  // after reading wake_seq, before locking
        if (!woken && after == seen && fresh == limit) {
          // A poll tick: no release, reclamation or departure has bumped
          // wake_seq, and the limit is what it was, so the entry has nothing
          // for us; locking it to look would only add traffic. It is a good
          // moment to look for dead owners (a real wake-up is not: the slot
          // is waiting). A FutexWake is acted on even when wake_seq looks
          // unchanged: the bump it announces may be one we read before
          // queueing, and FutexWake(1) chose us to take the freed slot.
          MaybeReclaimDeadOwners();
          continue;
        }
        seen = after;
        limit = fresh;
        // Something changed, but a wake-up reaches every waiter that looks,
        // and the slot a release freed may be taken already (by the waiter
        // FutexWake woke, or by one that looked first). When the word,
        // unlocked, shows no room, sleep again without locking: a slot
        // freed after this bumps wake_seq again (under the entry lock, which
        // the releaser took before the bump we have seen).
        const uint64_t w = entry.word.load(kAcquire);
        if (!(w & Word::kLocked) && !limit.Admits(Word::Count(w), 0)) continue;
      }
      recheck = false;
      LockEntry(e);
      counts = ReadLocked(e);
      // Woken waiters compete only with each other: no one queued is ahead.
      if (limit.Admits(counts.count, 0)) {
        return Grant(e, kind, /*dequeue=*/true, StatDelta{.wait_ns = waited_ns(), .wakeups = 1});
      }
      AddStats(e, StatDelta{.wakeups = 1});
      UnlockUnchanged(e);
    }
  } catch (...) {
    LeaveQueue(e, StatDelta{});
    throw;
  }
  // A cancelled wait may be resumed: it is not counted as refused yet.
  LeaveQueue(e, absl::IsCancelled(gave_up) ? StatDelta{}
                                           : StatDelta{.refused = 1, .wait_ns = waited_ns()});
  return gave_up;
}

void OwnerOps::LeaveQueue(uint32_t e, const StatDelta& stats) {
  // The wake-up this waiter may have consumed is passed on to the next one
  // whenever others are queued: their limits may differ from ours, so only
  // they can tell whether a slot is free for them.
  Entry& entry = EntryOf(e);
  LockEntry(e);
  EntryCounts counts = ReadLocked(e);
  --counts.waiters;
  self_.waiting_on.store(0, kRelaxed);
  const bool pass_on = counts.waiters > 0;
  if (counts.count == 0 && counts.waiters == 0) counts.live = false;  // a zombie now
  AddStats(e, stats);
  if (pass_on) entry.wake_seq.fetch_add(1, kRelease);
  Unlock(e, counts);
  if (pass_on) internal::FutexWake(entry.wake_seq, 1);
}

void OwnerOps::ReleaseSlow(uint32_t e, SlotKind kind) {
  LockEntry(e);
  EntryCounts counts = ReadLocked(e);
  Cell& cell = MyCell(e);
  Hold hold = Hold::Unpack(cell.hold.load(kRelaxed));
  // One hold of this kind must be recorded. Epochs make it so; the check
  // keeps a bookkeeping error from turning into a wrong count.
  bool recorded = hold.total > 0 && counts.count > 0;
  if (kind == SlotKind::kForced) recorded = recorded && hold.forced > 0 && counts.forced > 0;
  if (kind == SlotKind::kReservation) {
    recorded = recorded && hold.reserved > 0 && counts.reserved > 0;
  }
  assert(recorded);
  if (ABSL_PREDICT_FALSE(!recorded)) return UnlockUnchanged(e);
  --counts.count;
  --hold.total;
  if (kind == SlotKind::kForced) {
    --counts.forced;
    --hold.forced;
  } else if (kind == SlotKind::kReservation) {
    --counts.reserved;
    --hold.reserved;
  }
  const bool wake = counts.waiters > 0;
  const bool zombie = counts.count == 0 && !wake;
  if (zombie) counts.live = false;
  cell.hold.store(hold.Pack(), kRelaxed);
  Entry& entry = EntryOf(e);
  if (wake) entry.wake_seq.fetch_add(1, kRelease);
  Unlock(e, counts);
  if (wake) internal::FutexWake(entry.wake_seq, 1);
}

void OwnerOps::ReleaseUncounted() {
  uint32_t uncounted = self_.uncounted.load(kRelaxed);
  if (uncounted > 0) self_.uncounted.store(uncounted - 1, kRelaxed);
}

void OwnerOps::AfterRelease() { MaybeReclaimDeadOwners(); }

uint64_t OwnerOps::ReleaseAll(bool fold_acquired) {
  uint64_t released = 0;
  for (uint32_t e = 0; e < h_->capacity; ++e) {
    Cell& cell = MyCell(e);
    if (cell.hold.load(kRelaxed) == 0 && !(fold_acquired && cell.acquired.load(kRelaxed))) {
      continue;
    }
    LockEntry(e);
    EntryCounts counts = ReadLocked(e);
    Hold hold = Hold::Unpack(cell.hold.load(kRelaxed));
    counts.count -= std::min(counts.count, hold.total);
    counts.forced -= std::min(counts.forced, hold.forced);
    counts.reserved -= std::min(counts.reserved, hold.reserved);
    cell.hold.store(0, kRelaxed);
    if (fold_acquired) {
      AddTo(EntryOf(e).acquired_base, cell.acquired.load(kRelaxed));
      cell.acquired.store(0, kRelaxed);
    }
    const bool wake = counts.waiters > 0 && hold.total > 0;
    const bool zombie = counts.live && counts.count == 0 && counts.waiters == 0;
    if (zombie) counts.live = false;
    Entry& entry = EntryOf(e);
    if (wake) entry.wake_seq.fetch_add(1, kRelease);
    Unlock(e, counts);
    if (wake) internal::FutexWake(entry.wake_seq, INT_MAX);
    released += hold.total;
  }
  released += self_.uncounted.load(kRelaxed);
  self_.uncounted.store(0, kRelaxed);
  ++owner_.release_epoch_;
  return released;
}

}  // namespace connthrottle
