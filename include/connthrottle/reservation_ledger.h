// connthrottle/reservation_ledger.h — a session's reservations.
//
// COPY-style work reserves one slot per target node up front and opens each
// connection later, only if a row for that node arrives. ReservationLedger is
// the session-local record of those reservations:
//
//   * ReserveAll takes one slot for each target, always in the global order
//     of NodeKey (host, then port, then database; then user), waiting for
//     each. Sessions that reserve in one order can never each hold a slot the
//     other waits for. All or nothing: if any wait fails, the slots taken by
//     that call are given back.
//   * At most one reservation per (node, database, user); a target the session
//     already has a connection to needs none and is skipped. One call names
//     each node (host, port) once: its databases and users share one counter
//     (node_key.h), so a second slot of it would be waited for while holding
//     the first.
//   * Consume hands a reservation's Slot to the connection being opened. The
//     shared counters are not touched again: the slot was counted when it was
//     reserved and stays counted (as SlotKind::kReservation) until the
//     connection gives it back.
//   * EndTransaction gives back every unused reservation and forgets all.
//
// Thread-compatible, like the Owner it draws on; the Owner must outlive it.

#ifndef CONNTHROTTLE_RESERVATION_LEDGER_H_
#define CONNTHROTTLE_RESERVATION_LEDGER_H_

#include <compare>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/slot.h"

namespace connthrottle {

// What a reservation is for: a node's database, as one user.
struct ReservationKey {
  NodeKey node;
  uint32_t user = 0;

  friend bool operator==(const ReservationKey&, const ReservationKey&) = default;
  friend std::strong_ordering operator<=>(const ReservationKey& a, const ReservationKey& b) {
    if (auto c = a.node <=> b.node; c != 0) return c;
    return a.user <=> b.user;
  }
};

class ReservationLedger {
 public:
  explicit ReservationLedger(Owner& owner) : owner_(owner) {}
  ReservationLedger(const ReservationLedger&) = delete;
  ReservationLedger& operator=(const ReservationLedger&) = delete;
  ~ReservationLedger() { EndTransaction(); }

  // Reserves a slot for every target that has none yet and that
  // `has_connection` says the session is not connected to, in global order,
  // waiting for each under `limit(node)`. On DeadlineExceeded or Cancelled
  // (see Owner::AcquireWaiting) or a refusal, every slot this call took is
  // given back and the error names the node. `options` apply to every
  // acquire (its `reservation` is implied): with FullTablePolicy::kRefuse a
  // full table refuses the reservation. InvalidArgument, with nothing taken,
  // when two targets are of one node (host, port). A node the ledger holds
  // a reservation of already (another database or user) is taken only if a
  // slot is free now (ResourceExhausted otherwise): no wait holds a slot of
  // the node it waits for.
  absl::Status ReserveAll(std::vector<ReservationKey> targets,
                          absl::FunctionRef<Limit(const NodeKey&)> limit, absl::Time deadline,
                          absl::FunctionRef<bool()> interrupted,
                          absl::FunctionRef<bool(const ReservationKey&)> has_connection,
                          const AcquireOptions& options = {});

  // Reserves `target` only if a slot is free now. OK when reserved, already
  // reserved, or connected already; ResourceExhausted when refused (or when
  // the table is full under FullTablePolicy::kRefuse).
  absl::Status TryReserve(const ReservationKey& target, Limit limit, bool has_connection = false,
                          const AcquireOptions& options = {});

  // The reservation's slot for a connection being opened to `target`, or
  // nullopt when there is no unused reservation for it.
  std::optional<Slot> Consume(const ReservationKey& target);

  // Whether an unused reservation for `target` exists.
  bool HasUnused(const ReservationKey& target) const;

  // Gives back every unused reservation and forgets the used ones. Returns the
  // number of slots given back.
  int EndTransaction();

  struct Reservation {
    ReservationKey key;
    bool used = false;
  };
  // Every reservation of the current transaction, in global order.
  std::vector<Reservation> List() const;

 private:
  struct Item {
    Slot slot;  // empty once used
    bool used = false;
  };

  Owner& owner_;
  absl::btree_map<ReservationKey, Item> items_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_RESERVATION_LEDGER_H_
