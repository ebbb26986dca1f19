// connthrottle/slot.h — the right to hold one open connection to a node.
//
// A Slot is what every acquire of an Owner (owner.h) returns. It is move-only
// and gives the slot back exactly once: on Release() or on destruction, and
// never again after its Owner's ReleaseAll(). A Slot must not outlive the
// Owner that took it, and it is released through that Owner, so it shares the
// Owner's thread-compatibility: release it on the thread that uses the Owner.

#ifndef CONNTHROTTLE_SLOT_H_
#define CONNTHROTTLE_SLOT_H_

#include <cstdint>
#include <utility>

namespace connthrottle {

class Owner;

enum class SlotKind : uint8_t {
  kConnection,   // optional or waiting acquire
  kForced,       // forced acquire, may exceed the limit
  kReservation,  // taken up front for a connection that may come later
  kUncounted,    // admitted uncounted because the table was full
};

// The right to hold one open connection to a key's node. Move-only; gives the
// slot back on Release() or destruction, exactly once. Must not outlive the
// Owner that took it.
class Slot {
 public:
  Slot() = default;
  Slot(Slot&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)),
        epoch_(other.epoch_),
        entry_(other.entry_),
        db_entry_(other.db_entry_),
        kind_(other.kind_),
        db_kind_(other.db_kind_),
        two_level_(other.two_level_),
        parked_(std::exchange(other.parked_, false)) {}
  Slot& operator=(Slot&& other) noexcept;
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot() {
    if (owner_ != nullptr) Release();
  }

  // Gives the slot back and wakes one waiter of its key. No-op when empty.
  // A slot taken under a per-database bound is given back at both levels:
  // the node's counter first, then the database's.
  void Release();

  // Whether this Slot still holds its slot: false once released, moved from,
  // or given back by its Owner's ReleaseAll().
  bool held() const;
  SlotKind kind() const { return kind_; }
  // Whether the slot is also counted for its database (a per-database bound
  // was in force when it was taken; limit.h).
  bool two_level() const { return two_level_; }
  // Whether the slot is parked (Owner::Park): its connection sits idle.
  bool parked() const { return parked_; }

 private:
  friend class Owner;
  friend class OwnerOps;
  Slot(Owner* owner, uint32_t entry, SlotKind kind, uint64_t epoch)
      : owner_(owner), epoch_(epoch), entry_(entry), kind_(kind) {}
  // Release()'s slow path: unparks, and gives back both levels.
  void ReleaseParkedOrTwoLevel();
  // One slot of both levels: `node`, which also gives back `db` (both taken
  // by one Owner, unparked).
  static Slot Join(Slot node, Slot db) {
    node.db_entry_ = db.entry_;
    node.db_kind_ = db.kind_;
    node.two_level_ = true;
    db.owner_ = nullptr;
    return node;
  }

  Owner* owner_ = nullptr;
  uint64_t epoch_ = 0;
  uint32_t entry_ = 0;     // the node's counter
  uint32_t db_entry_ = 0;  // with two_level_: the database's counter
  SlotKind kind_ = SlotKind::kConnection;
  SlotKind db_kind_ = SlotKind::kConnection;
  bool two_level_ = false;
  bool parked_ = false;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SLOT_H_
