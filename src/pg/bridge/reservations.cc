// reservations.cc — the reservations a session takes through SQL.

#include "pg/bridge/reservations.h"

#include <optional>
#include <utility>
#include <vector>

#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/local_node.h"
#include "pg/bridge/internal/outcome.h"
#include "pg/bridge/internal/settings.h"

namespace connthrottle::pg {
namespace {

// Whether the session holds a slot taken through SQL for `node`.
bool HoldsSlotFor(const NodeKey& node) {
  for (const Held& h : S().held) {
    if (h.key == node) return true;
  }
  return false;
}

// The targets of Reserve, each checked: a valid key, and a limit (a bad
// local_node setting fails here, before anything is taken).
Outcome ReservationTargets(const NodeRef* nodes, int count, uint32_t database, uint32_t user,
                           const Settings& settings, int active_client_backends,
                           std::vector<ReservationKey>& targets) {
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<NodeKey> key = NodeKey::Create(nodes[i].host, nodes[i].port, database);
    if (!key.ok()) return FromStatus(key.status());
    targets.push_back({*std::move(key), user});
  }
  for (const ReservationKey& t : targets) {
    absl::StatusOr<Limit> limit = LimitFor(t.node, settings, active_client_backends);
    if (!limit.ok()) return FromStatus(limit.status());
  }
  return Outcome{};
}

}  // namespace

Outcome Reserve(const NodeRef* nodes, int count, uint32_t database, uint32_t user,
                const Settings& settings, int active_client_backends, Wait& wait,
                bool (*interrupted)(), int* reserved) {
  return Guard([&] {
    *reserved = 0;
    if (!TableReady()) return NotReady();
    std::vector<ReservationKey> targets;
    if (Outcome o = ReservationTargets(nodes, count, database, user, settings,
                                       active_client_backends, targets);
        !o.ok()) {
      return o;
    }
    absl::StatusOr<Owner*> owner = ProcessOwner();
    if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
    ReservationLedger& ledger = *S().ledger;
    const size_t before = ledger.List().size();
    absl::Status status = ledger.ReserveAll(
        std::move(targets),
        [&](const NodeKey& node) {
          absl::StatusOr<Limit> limit = LimitFor(node, settings, active_client_backends);
          return limit.ok() ? *limit : Limit::AtMost(0);
        },
        Deadline(wait), interrupted,
        [](const ReservationKey& target) { return HoldsSlotFor(target.node); },
        WaitOptions(settings, wait));
    if (absl::IsCancelled(status)) return Resume(wait);
    if (!status.ok()) return WaitTimedOut(status, wait);
    *reserved = static_cast<int>(ledger.List().size() - before);
    return Outcome{};
  });
}

Outcome TryReserve(const char* host, int port, uint32_t database, uint32_t user,
                   const Settings& settings, int active_client_backends, bool* reserved) {
  return Guard([&] {
    *reserved = false;
    NodeCall call;
    if (Outcome o = OpenNodeCall(host, port, database, &settings, active_client_backends, call);
        !o.ok()) {
      return o;
    }
    absl::Status status = S().ledger->TryReserve(
        {*call.key, user}, call.limit, HoldsSlotFor(*call.key), AcquireOptionsOf(settings));
    if (absl::IsResourceExhausted(status) && !IsTableFullError(status)) return Outcome{};
    if (!status.ok()) return FromStatus(status);
    *reserved = true;
    return Outcome{};
  });
}

Outcome UseReservation(const char* host, int port, uint32_t database, uint32_t user, bool* used) {
  return Guard([&] {
    *used = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    if (!S().ledger) return Outcome{};
    std::optional<Slot> slot = S().ledger->Consume({*key, user});
    if (!slot.has_value()) return Outcome{};
    S().held.push_back({*std::move(key), *std::move(slot)});
    *used = true;
    return Outcome{};
  });
}

Outcome ListReservations(ReservationRow* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    if (!S().ledger) return Outcome{};
    for (const ReservationLedger::Reservation& r : S().ledger->List()) {
      if (*count >= max) break;
      ReservationRow& row = out[(*count)++];
      CopyHost(row.host, r.key.node.host());
      row.port = r.key.node.port();
      row.database = r.key.node.database();
      row.user = r.key.user;
      row.used = r.used;
    }
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
