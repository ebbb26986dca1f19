// owner.cc — Owner and Slot, with the two hot paths inlined here: an optional
// acquire of a connection slot on a cached entry, and its release. Each is
// one compare-and-swap on the entry's word plus plain stores to the owner's
// own cell (protocol: owner_ops.cc). Everything else is in owner_ops.cc.

#include "connthrottle/owner.h"

#include <pthread.h>

#include <algorithm>
#include <bit>
#include <mutex>
#include <optional>

#include "absl/base/optimization.h"
#include "core/internal/layout.h"
#include "core/internal/memory_order.h"
#include "core/internal/owner_ops.h"

namespace connthrottle {

using internal::Word;

namespace {

// Bumped in every forked child: an Owner registered before the fork belongs
// to the parent, and the child must neither use nor release it.
std::atomic<uint32_t> fork_generation{0};
std::once_flag fork_handler_once;

uint32_t CurrentForkGeneration() {
  std::call_once(fork_handler_once, [] {
    pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1, kRelaxed); });
  });
  return fork_generation.load(kRelaxed);
}

absl::Status ForeignOwner() {
  return absl::FailedPreconditionError(
      "this Owner was registered by the parent of this forked process; register a new one");
}

// The hot paths below (Owner::TryAcquire, Slot::Release) leave everything
// else to these and to Owner::TryAcquireSlow: out of line, and called last,
// so that the hot paths save (almost) no registers. Every store on the way
// to a locked instruction is one more for the store buffer to drain first;
// with the slow paths inlined, an acquire + release pair cost 17% more
// (README, "Benchmarks").
ABSL_ATTRIBUTE_NOINLINE void ReleaseSlowPath(Owner& owner, uint32_t e, SlotKind kind) {
  if (kind == SlotKind::kUncounted) return OwnerOps(owner).ReleaseUncounted();
  OwnerOps(owner).ReleaseSlow(e, kind);
}
ABSL_ATTRIBUTE_NOINLINE void AfterReleasePath(Owner& owner) { OwnerOps(owner).AfterRelease(); }
}  // namespace

Owner::Owner(CounterTable table, uint32_t id)
    : table_(table),
      entries_(&internal::EntryAt(table.header_, 0)),
      cells_(internal::CellRow(table.header_, id)),
      record_(&internal::OwnerAt(table.header_, id)),
      id_(id),
      release_epoch_(1),
      fork_generation_(CurrentForkGeneration()) {
  // Twice the table's entries: node counters' ids are even, database
  // counters' odd (NodeKey::cache_id), so each kind has one slot per entry.
  const size_t slots =
      std::clamp<size_t>(2 * std::bit_ceil(size_t{table.header_->capacity}), 128, 65536);
  cache_ = std::make_unique<CachedEntry[]>(slots);
  cache_mask_ = slots - 1;
}

Owner::~Owner() {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return;  // the parent's
  UnparkAll();
  OwnerOps ops(*this);
  ops.ReleaseAll(/*fold_acquired=*/true);
  // Leaving is a moment when a standalone process is sure to be alive and
  // about to stop looking; check for dead peers before going.
  ops.MaybeReclaimDeadOwners();
  record_->waiting_on.store(0, kRelaxed);
  record_->in_flight.store(0, kRelaxed);
  record_->identity.store(0, kRelease);
}

ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool Owner::TryFast(uint64_t cache_id, Limit limit,
                                                        uint32_t* entry) {
  const CachedEntry& cached = CacheSlot(cache_id);
  if (ABSL_PREDICT_FALSE(cached.key_id != cache_id ||
                         fork_generation_ != fork_generation.load(kRelaxed))) {
    return false;
  }
  const uint32_t e = cached.entry();
  std::atomic<uint64_t>& word = entries_[e].word;
  uint64_t w = word.load(kRelaxed);
  // Unlocked, nobody queued, still the cached key's tag, and live — or a
  // zombie of that key (count zero, no flag at all), which the same
  // compare-and-swap revives: a key whose count keeps falling to zero
  // costs what a busy key does (issue 14; owner_ops.cc, "Entry lifecycle").
  constexpr uint64_t kState = ~Word::kCountMask;
  const uint64_t tag = Word::WithTag(cached.tag());
  const uint32_t count = Word::Count(w);
  if (ABSL_PREDICT_TRUE(((w & kState) == (Word::kLive | tag) || w == tag) &&
                        limit.Admits(count, 0) && count < static_cast<uint32_t>(kMaxSlotsPerKey))) {
    record_->in_flight.store(e + 1, kRelease);
    if (ABSL_PREDICT_TRUE(
            word.compare_exchange_strong(w, (w + 1) | Word::kLive, kAcqRel, kRelaxed))) {
      internal::Cell& cell = cells_[e];
      cell.hold.store(cell.hold.load(kRelaxed) + 1, kRelaxed);
      cell.acquired.store(cell.acquired.load(kRelaxed) + 1, kRelaxed);
      record_->in_flight.store(0, kRelease);
      *entry = e;
      return true;
    }
    record_->in_flight.store(0, kRelaxed);
  }
  return false;
}

absl::StatusOr<Slot> Owner::TryAcquire(const NodeKey& key, Limit limit,
                                       const AcquireOptions& options) {
  if (ABSL_PREDICT_FALSE(limit.per_database())) return TryAcquireTwoLevel(key, limit, options);
  uint32_t e;
  if (ABSL_PREDICT_TRUE(!options.reservation &&
                        TryFast(key.cache_id(CounterLevel::kNode), limit, &e))) {
    return Slot(this, e, SlotKind::kConnection, release_epoch_);
  }
  return TryAcquireSlow(key, limit, options);
}

ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<Slot> Owner::TryAcquireTwoLevel(
    const NodeKey& key, Limit limit, const AcquireOptions& options) {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  // Refused at the node whatever its count (the local node never connected
  // to, say): refused as a one-level acquire, touching no database counter.
  if (!limit.Admits(0, 0)) return OwnerOps(*this).TryAcquireSlow(CounterKey{key}, limit, options);
  const Limit db_limit = limit.DatabaseLevel();
  // The fast path at both levels: two compare-and-swaps, no Status.
  uint32_t db_entry, node_entry;
  const bool fast = !options.reservation;
  std::optional<Slot> db;
  if (fast && TryFast(key.cache_id(CounterLevel::kDatabase), db_limit, &db_entry)) {
    if (TryFast(key.cache_id(CounterLevel::kNode), limit, &node_entry)) {
      return Slot::Join(Slot(this, node_entry, SlotKind::kConnection, release_epoch_),
                        Slot(this, db_entry, SlotKind::kConnection, release_epoch_));
    }
    db = Slot(this, db_entry, SlotKind::kConnection, release_epoch_);
  } else {
    absl::StatusOr<Slot> taken =
        OwnerOps(*this).TryAcquireSlow(CounterKey{key, CounterLevel::kDatabase}, db_limit, options);
    if (!taken.ok()) return taken;
    db.emplace(*std::move(taken));
  }
  absl::StatusOr<Slot> node;
  if (fast && TryFast(key.cache_id(CounterLevel::kNode), limit, &node_entry)) {
    node = Slot(this, node_entry, SlotKind::kConnection, release_epoch_);
  } else {
    node = OwnerOps(*this).TryAcquireSlow(CounterKey{key}, limit, options);
  }
  if (!node.ok()) return node;  // the database's slot is given back with `db`
  return Slot::Join(*std::move(node), *std::move(db));
}

ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<Slot> Owner::TryAcquireSlow(const NodeKey& key, Limit limit,
                                                                   const AcquireOptions& options) {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  return OwnerOps(*this).TryAcquireSlow(CounterKey{key}, limit, options);
}

void Slot::Release() {
  Owner* owner = owner_;
  if (owner == nullptr) return;
  if (ABSL_PREDICT_FALSE(parked_ | two_level_)) return ReleaseParkedOrTwoLevel();
  owner_ = nullptr;
  if (epoch_ != owner->release_epoch_ ||
      owner->fork_generation_ != fork_generation.load(kRelaxed)) {
    return;
  }
  const uint32_t e = entry_;
  if (ABSL_PREDICT_FALSE(kind_ != SlotKind::kConnection)) return ReleaseSlowPath(*owner, e, kind_);
  std::atomic<uint64_t>& word = owner->entries_[e].word;
  internal::Cell& cell = owner->cells_[e];
  const uint64_t hold = cell.hold.load(kRelaxed);
  uint64_t w = word.load(kRelaxed);
  const uint32_t count = Word::Count(w);
  // Unlocked, nobody queued to wake, and this owner's hold recorded.
  if (ABSL_PREDICT_TRUE(!(w & (Word::kLocked | Word::kHasWaiters)) && count > 0 &&
                        (hold & internal::Hold::kMask) > 0)) {
    // The last slot of a key with no waiter makes the entry a zombie; it
    // stays indexed, for its key's next acquire to revive.
    const bool zombie = count == 1;
    const uint64_t next = (w - 1) & ~(zombie ? Word::kLive : 0);
    owner->record_->in_flight.store(e + 1, kRelease);
    if (ABSL_PREDICT_TRUE(word.compare_exchange_strong(w, next, kAcqRel, kRelaxed))) {
      cell.hold.store(hold - 1, kRelaxed);
      owner->record_->in_flight.store(0, kRelease);
      if (ABSL_PREDICT_FALSE((++owner->ops_since_check_ & 1023) == 0)) {
        return AfterReleasePath(*owner);
      }
      return;
    }
    owner->record_->in_flight.store(0, kRelaxed);
  }
  return ReleaseSlowPath(*owner, e, SlotKind::kConnection);
}

absl::StatusOr<Slot> Owner::AcquireWaiting(const NodeKey& key, absl::FunctionRef<Limit()> limit,
                                           absl::Time deadline,
                                           absl::FunctionRef<bool()> interrupted,
                                           const AcquireOptions& options) {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  return OwnerOps(*this).AcquireWaiting(key, limit, deadline, interrupted, options);
}

absl::StatusOr<Slot> Owner::AcquireWaiting(const NodeKey& key, Limit limit, absl::Time deadline,
                                           const AcquireOptions& options) {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  return OwnerOps(*this).AcquireWaiting(
      key, [limit] { return limit; }, deadline, [] { return false; }, options);
}

absl::StatusOr<Slot> Owner::AcquireForced(const NodeKey& key, const AcquireOptions& options) {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  return OwnerOps(*this).AcquireForced(CounterKey{key}, options);
}

absl::StatusOr<Slot> Owner::AcquireForced(const NodeKey& key, Limit limit,
                                          const AcquireOptions& options) {
  if (!limit.per_database()) return AcquireForced(key, options);
  if (fork_generation_ != fork_generation.load(kRelaxed)) return ForeignOwner();
  absl::StatusOr<Slot> db =
      OwnerOps(*this).AcquireForced(CounterKey{key, CounterLevel::kDatabase}, options);
  if (!db.ok()) return db;
  absl::StatusOr<Slot> node = OwnerOps(*this).AcquireForced(CounterKey{key}, options);
  if (!node.ok()) return node;
  return Slot::Join(std::move(*node), std::move(*db));
}

bool Owner::CountForDatabase(Slot& slot, const NodeKey& key, Limit limit,
                             const AcquireOptions& options) {
  if (!slot.held() || slot.owner_ != this || fork_generation_ != fork_generation.load(kRelaxed)) {
    return false;
  }
  if (slot.two_level_) return true;
  if (!limit.per_database() || slot.parked_ || slot.kind_ == SlotKind::kUncounted) return false;
  AcquireOptions at_database = options;
  at_database.reservation = slot.kind_ == SlotKind::kReservation;
  absl::StatusOr<Slot> db =
      slot.kind_ == SlotKind::kForced
          ? OwnerOps(*this).AcquireForced(CounterKey{key, CounterLevel::kDatabase}, at_database)
          : OwnerOps(*this).TryAcquireSlow(CounterKey{key, CounterLevel::kDatabase},
                                           limit.DatabaseLevel(), at_database);
  if (!db.ok()) return false;
  // A full table under kAdmitUncounted: admitted uncounted at that level,
  // as a new acquire would be; the slot stays one-level.
  if (db->kind() == SlotKind::kUncounted) return true;
  slot = Slot::Join(std::move(slot), *std::move(db));
  return true;
}

bool Owner::MoveToDatabase(Slot& slot, const NodeKey& key, Limit limit,
                           const AcquireOptions& options) {
  if (!slot.held() || slot.parked_ || slot.owner_ != this ||
      fork_generation_ != fork_generation.load(kRelaxed)) {
    return false;
  }
  if (!slot.two_level_) return !limit.per_database() || CountForDatabase(slot, key, limit, options);
  if (limit.per_database()) {
    // The new database's slot first (a forced one as forced); only once it
    // is held is the old one given back, so a refusal, or an exception from
    // the acquire, leaves the slot as it was.
    AcquireOptions at_database = options;
    at_database.reservation = slot.db_kind_ == SlotKind::kReservation;
    const CounterKey db_key{key, CounterLevel::kDatabase};
    absl::StatusOr<Slot> db =
        slot.db_kind_ == SlotKind::kForced
            ? OwnerOps(*this).AcquireForced(db_key, at_database)
            : OwnerOps(*this).TryAcquireSlow(db_key, limit.DatabaseLevel(), at_database);
    if (!db.ok()) return false;
    Slot old(this, slot.db_entry_, slot.db_kind_, slot.epoch_);
    slot.db_entry_ = db->entry_;
    slot.db_kind_ = db->kind_;
    db->owner_ = nullptr;
    old.Release();
    return true;
  }
  // The bound is off now: the old database's slot goes.
  Slot old(this, slot.db_entry_, slot.db_kind_, slot.epoch_);
  slot.two_level_ = false;
  old.Release();
  return true;
}

bool Owner::ParkEntry(uint32_t e, Limit limit) {
  if (entries_[e].word.load(kAcquire) & Word::kHasWaiters) return false;
  std::atomic<uint32_t>& parked = internal::KeyAt(table_.header_, e).parked;
  uint32_t n = parked.load(kRelaxed);
  do {
    if (!limit.unlimited() && n + 1 >= limit.max()) return false;
  } while (!parked.compare_exchange_weak(n, n + 1, kRelaxed, kRelaxed));
  parked_entries_.push_back(e);
  return true;
}

void Owner::UnparkEntry(uint32_t e) {
  auto it = std::find(parked_entries_.begin(), parked_entries_.end(), e);
  if (it == parked_entries_.end()) return;
  parked_entries_.erase(it);
  std::atomic<uint32_t>& parked = internal::KeyAt(table_.header_, e).parked;
  uint32_t n = parked.load(kRelaxed);
  while (n > 0 && !parked.compare_exchange_weak(n, n - 1, kRelaxed, kRelaxed)) {
  }
}

bool Owner::Park(Slot& slot, Limit limit) {
  if (slot.parked_) return true;
  if (!slot.held() || fork_generation_ != fork_generation.load(kRelaxed)) return false;
  // Each counted level must admit the park; an uncounted one parks freely.
  const bool db = slot.two_level_ && slot.db_kind_ != SlotKind::kUncounted;
  const bool node = slot.kind_ != SlotKind::kUncounted;
  const Limit db_limit = limit.per_database() ? limit.DatabaseLevel() : Limit::Unlimited();
  if (db && !ParkEntry(slot.db_entry_, db_limit)) return false;
  if (node && !ParkEntry(slot.entry_, limit)) {
    if (db) UnparkEntry(slot.db_entry_);
    return false;
  }
  return slot.parked_ = true;
}

void Owner::Unpark(Slot& slot) {
  if (!slot.parked_) return;
  slot.parked_ = false;
  if (!slot.held() || fork_generation_ != fork_generation.load(kRelaxed)) return;
  if (slot.kind_ != SlotKind::kUncounted) UnparkEntry(slot.entry_);
  if (slot.two_level_ && slot.db_kind_ != SlotKind::kUncounted) UnparkEntry(slot.db_entry_);
}

uint64_t Owner::ReleaseAll() {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return 0;
  UnparkAll();
  return OwnerOps(*this).ReleaseAll(/*fold_acquired=*/false);
}

void Owner::UnparkAll() {
  // Parked slots are about to be given back with the rest: uncount them.
  for (uint32_t e : parked_entries_) {
    std::atomic<uint32_t>& parked = internal::KeyAt(table_.header_, e).parked;
    uint32_t n = parked.load(kRelaxed);
    while (n > 0 && !parked.compare_exchange_weak(n, n - 1, kRelaxed, kRelaxed)) {
    }
  }
  parked_entries_.clear();
}

uint64_t Owner::SlotsHeld() const {
  uint64_t held = record_->uncounted.load(kRelaxed);
  for (uint32_t e = 0; e < table_.header_->capacity; ++e) {
    held += internal::Hold::Unpack(cells_[e].hold.load(kRelaxed)).total;
  }
  return held;
}

int Owner::ReclaimDeadOwners() {
  if (fork_generation_ != fork_generation.load(kRelaxed)) return 0;
  return OwnerOps(*this).ReclaimDeadOwners();
}

Slot& Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    epoch_ = other.epoch_;
    entry_ = other.entry_;
    db_entry_ = other.db_entry_;
    kind_ = other.kind_;
    db_kind_ = other.db_kind_;
    two_level_ = other.two_level_;
    parked_ = std::exchange(other.parked_, false);
  }
  return *this;
}

ABSL_ATTRIBUTE_NOINLINE void Slot::ReleaseParkedOrTwoLevel() {
  if (parked_) owner_->Unpark(*this);
  if (two_level_) {
    // The node's counter first, then the database's (owner.h, "Two levels").
    Slot db(owner_, db_entry_, db_kind_, epoch_);
    two_level_ = false;
    Release();
    db.Release();
    return;
  }
  Release();
}

bool Slot::held() const { return owner_ != nullptr && epoch_ == owner_->release_epoch_; }

}  // namespace connthrottle
