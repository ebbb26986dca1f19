// slots.cc — the slots a session takes and gives back through SQL.

#include "pg/bridge/slots.h"

#include <iterator>
#include <utility>
#include <vector>

#include "pg/bridge/internal/backend_state.h"
#include "pg/bridge/internal/outcome.h"
#include "pg/bridge/internal/settings.h"

namespace connthrottle::pg {
namespace {

const char* KindName(SlotKind kind) {
  switch (kind) {
    case SlotKind::kConnection:
      return "connection";
    case SlotKind::kForced:
      return "forced";
    case SlotKind::kReservation:
      return "reservation";
    case SlotKind::kUncounted:
      return "uncounted";
  }
  return "unknown";
}

}  // namespace

Outcome TryAcquire(const char* host, int port, uint32_t database, const Settings& settings,
                   int active_client_backends, bool* acquired) {
  return Guard([&] {
    *acquired = false;
    NodeCall call;
    if (Outcome o = OpenNodeCall(host, port, database, &settings, active_client_backends, call);
        !o.ok()) {
      return o;
    }
    absl::StatusOr<Slot> slot =
        call.owner->TryAcquire(*call.key, call.limit, AcquireOptionsOf(settings));
    if (absl::IsResourceExhausted(slot.status()) && !IsTableFullError(slot.status())) {
      return Outcome{};  // refused: not an error for an optional acquire
    }
    if (!slot.ok()) return FromStatus(slot.status(), kConfigurationLimitExceeded);
    S().held.push_back({*std::move(call.key), *std::move(slot)});
    *acquired = true;
    return Outcome{};
  });
}

Outcome AcquireWaiting(const char* host, int port, uint32_t database, const Settings& settings,
                       int active_client_backends, Wait& wait, bool (*interrupted)()) {
  return Guard([&] {
    NodeCall call;
    if (Outcome o = OpenNodeCall(host, port, database, &settings, active_client_backends, call);
        !o.ok()) {
      return o;
    }
    const Limit fixed = call.limit;
    absl::StatusOr<Slot> slot = call.owner->AcquireWaiting(
        *call.key, [fixed] { return fixed; }, Deadline(wait), interrupted,
        WaitOptions(settings, wait));
    if (absl::IsCancelled(slot.status())) return Resume(wait);
    if (!slot.ok()) return WaitTimedOut(slot.status(), wait);
    S().held.push_back({*std::move(call.key), *std::move(slot)});
    return Outcome{};
  });
}

Outcome AcquireForced(const char* host, int port, uint32_t database, const Settings& settings) {
  return Guard([&] {
    NodeCall call;
    if (Outcome o = OpenNodeCall(host, port, database, nullptr, 0, call); !o.ok()) return o;
    // Counted for its database too when the per-database bound is on.
    absl::StatusOr<Slot> slot = call.owner->AcquireForced(
        *call.key, Limit::ForRemote(PoolLimitsOf(settings)), AcquireOptionsOf(settings));
    if (!slot.ok()) return FromStatus(slot.status(), kConfigurationLimitExceeded);
    S().held.push_back({*std::move(call.key), *std::move(slot)});
    return Outcome{};
  });
}

Outcome Release(const char* host, int port, uint32_t database, bool* released) {
  return Guard([&] {
    *released = false;
    absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
    if (!key.ok()) return FromStatus(key.status());
    std::vector<Held>& held = S().held;
    for (auto it = held.rbegin(); it != held.rend(); ++it) {
      if (it->key == *key) {
        held.erase(std::next(it).base());  // the Slot gives the slot back
        *released = true;
        break;
      }
    }
    return Outcome{};
  });
}

Outcome ReleaseAllSlots(int* count) {
  return Guard([&] {
    *count = static_cast<int>(S().held.size());
    S().held.clear();
    return Outcome{};
  });
}

Outcome ListSlots(HeldSlot* out, int max, int* count) {
  return Guard([&] {
    *count = 0;
    for (const Held& h : S().held) {
      if (*count >= max) break;
      HeldSlot& row = out[(*count)++];
      CopyHost(row.host, h.key.host());
      row.port = h.key.port();
      row.database = h.key.database();
      row.kind = KindName(h.slot.kind());
    }
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
