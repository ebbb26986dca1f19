#include "connthrottle/reservation_ledger.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace connthrottle {

absl::Status ReservationLedger::ReserveAll(
    std::vector<ReservationKey> targets, absl::FunctionRef<Limit(const NodeKey&)> limit,
    absl::Time deadline, absl::FunctionRef<bool()> interrupted,
    absl::FunctionRef<bool(const ReservationKey&)> has_connection, const AcquireOptions& options) {
  // The global order; duplicates collapse to one reservation.
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  // A node's databases and users share its counter: a second slot of a node
  // would be waited for while holding the first, which two sessions could
  // each do with one slot of the node left. (Sorted: a node's targets are
  // adjacent.)
  for (size_t i = 1; i < targets.size(); ++i) {
    if (targets[i].node.SameNode(targets[i - 1].node)) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", targets[i].node.NodeName(), " is named twice in one reservation (",
                       targets[i - 1].node.ToString(), " and ", targets[i].node.ToString(),
                       "): the databases and roles of a node share its connection slots"));
    }
  }

  std::vector<ReservationKey> taken;
  for (const ReservationKey& target : targets) {
    if (items_.contains(target) || has_connection(target)) continue;
    AcquireOptions reservation = options;
    reservation.reservation = true;
    // A node this session has reserved already (for another database or
    // user, in an earlier call) is not waited for: the wait would hold one of
    // the node's slots while waiting for another.
    const bool holds_node = std::any_of(items_.begin(), items_.end(), [&](const auto& item) {
      return item.first.node.SameNode(target.node);
    });
    absl::StatusOr<Slot> slot =
        holds_node ? owner_.TryAcquire(target.node, limit(target.node), reservation)
                   : owner_.AcquireWaiting(
                         target.node, [&] { return limit(target.node); }, deadline, interrupted,
                         reservation);
    if (!slot.ok()) {
      for (const ReservationKey& undo : taken) items_.erase(undo);  // Slot gives back
      absl::Status error(slot.status().code(),
                         absl::StrCat("could not reserve a connection to ", target.node.ToString(),
                                      ": ", slot.status().message()));
      // Keep the payloads (IsTableFullError reads one).
      slot.status().ForEachPayload([&](absl::string_view url, const absl::Cord& payload) {
        error.SetPayload(url, payload);
      });
      return error;
    }
    items_.emplace(target, Item{std::move(*slot), false});
    taken.push_back(target);
  }
  return absl::OkStatus();
}

absl::Status ReservationLedger::TryReserve(const ReservationKey& target, Limit limit,
                                           bool has_connection, const AcquireOptions& options) {
  if (items_.contains(target) || has_connection) return absl::OkStatus();
  AcquireOptions reservation = options;
  reservation.reservation = true;
  absl::StatusOr<Slot> slot = owner_.TryAcquire(target.node, limit, reservation);
  if (!slot.ok()) return slot.status();
  items_.emplace(target, Item{std::move(*slot), false});
  return absl::OkStatus();
}

std::optional<Slot> ReservationLedger::Consume(const ReservationKey& target) {
  auto it = items_.find(target);
  if (it == items_.end() || it->second.used) return std::nullopt;
  it->second.used = true;
  return std::move(it->second.slot);
}

bool ReservationLedger::HasUnused(const ReservationKey& target) const {
  auto it = items_.find(target);
  return it != items_.end() && !it->second.used;
}

int ReservationLedger::EndTransaction() {
  int given_back = 0;
  for (auto& [key, item] : items_) {
    if (!item.used && item.slot.held()) {
      item.slot.Release();
      ++given_back;
    }
  }
  items_.clear();
  return given_back;
}

std::vector<ReservationLedger::Reservation> ReservationLedger::List() const {
  std::vector<Reservation> out;
  out.reserve(items_.size());
  for (const auto& [key, item] : items_) out.push_back({key, item.used});
  return out;
}

}  // namespace connthrottle
