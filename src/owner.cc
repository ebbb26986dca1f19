// owner.cc — the public faces of Owner and Slot; the work is in owner_ops.cc.

#include "connthrottle/owner.h"

#include "internal/layout.h"
#include "internal/owner_ops.h"

namespace connthrottle {

Owner::Owner(CounterTable table, uint32_t id, uint32_t first_seq)
    : table_(table), id_(id), next_seq_(first_seq), release_epoch_(1) {}

Owner::~Owner() {
  OwnerOps ops(*this);
  ops.ReleaseAll();
  internal::OwnerRecord& record = internal::OwnerAt(table_.header_, id_);
  // Leaving is a moment when a standalone process is sure to be alive and
  // about to stop looking; check for dead peers before going.
  ops.MaybeReclaimDeadOwners();
  record.waiting_on.store(0, std::memory_order_relaxed);
  record.identity.store(0, std::memory_order_release);
}

absl::StatusOr<Slot> Owner::TryAcquire(const NodeKey& key, Limit limit,
                                       const AcquireOptions& options) {
  return OwnerOps(*this).TryAcquire(key, limit, options);
}

absl::StatusOr<Slot> Owner::AcquireWaiting(const NodeKey& key, absl::FunctionRef<Limit()> limit,
                                           absl::Time deadline,
                                           absl::FunctionRef<bool()> interrupted,
                                           const AcquireOptions& options) {
  return OwnerOps(*this).AcquireWaiting(key, limit, deadline, interrupted, options);
}

absl::StatusOr<Slot> Owner::AcquireWaiting(const NodeKey& key, Limit limit, absl::Time deadline,
                                           const AcquireOptions& options) {
  return OwnerOps(*this).AcquireWaiting(
      key, [limit] { return limit; }, deadline, [] { return false; }, options);
}

absl::StatusOr<Slot> Owner::AcquireForced(const NodeKey& key, const AcquireOptions& options) {
  return OwnerOps(*this).AcquireForced(key, options);
}

uint64_t Owner::ReleaseAll() { return OwnerOps(*this).ReleaseAll(); }

uint64_t Owner::SlotsHeld() const {
  internal::TableHeader* h = table_.header_;
  uint64_t held = internal::OwnerAt(h, id_).uncounted.load(std::memory_order_relaxed);
  for (uint32_t e = 0; e < h->capacity; ++e) {
    held +=
        internal::Hold::Unpack(internal::HoldAt(h, id_, e).load(std::memory_order_relaxed)).total;
  }
  return held;
}

int Owner::ReclaimDeadOwners() { return OwnerOps(*this).ReclaimDeadOwners(); }

Slot& Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    entry_ = other.entry_;
    kind_ = other.kind_;
    epoch_ = other.epoch_;
  }
  return *this;
}

bool Slot::held() const { return owner_ != nullptr && epoch_ == owner_->release_epoch_; }

void Slot::Release() {
  Owner* owner = std::exchange(owner_, nullptr);
  if (owner == nullptr || epoch_ != owner->release_epoch_) return;
  OwnerOps(*owner).Release(entry_, kind_);
}

}  // namespace connthrottle
