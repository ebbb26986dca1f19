#include "connthrottle/limit.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace connthrottle {
namespace {

absl::Status CheckSetting(const char* name, int value, int lowest) {
  if (value < lowest || value > kMaxSlotsPerKey) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " = ", value, " is outside ", lowest, "..", kMaxSlotsPerKey));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PoolLimits::Validate() const {
  if (auto s = CheckSetting("max_shared_pool_size", max_shared_pool_size, kThrottlingOff);
      !s.ok()) {
    return s;
  }
  if (auto s = CheckSetting("max_connections", max_connections, 1); !s.ok()) return s;
  if (auto s = CheckSetting("local_shared_pool_size", local_shared_pool_size, kNeverConnectToSelf);
      !s.ok()) {
    return s;
  }
  return CheckSetting("max_client_connections", max_client_connections, 1);
}

Limit Limit::ForRemote(const PoolLimits& limits) {
  switch (limits.max_shared_pool_size) {
    case kThrottlingOff:
      return Unlimited();
    case kDeriveFromMaxConnections:
      return AtMost(static_cast<uint32_t>(std::max(limits.max_connections, 1)));
    default:
      return AtMost(static_cast<uint32_t>(limits.max_shared_pool_size));
  }
}

Limit Limit::ForLocal(const PoolLimits& limits, int active_client_backends) {
  uint32_t max = 0;
  switch (limits.local_shared_pool_size) {
    case kNeverConnectToSelf:
      max = 0;
      break;
    case kHalfOfMaxClientConnections:
      // At least one: only -1 means "never connect to self".
      max = static_cast<uint32_t>(std::max(limits.max_client_connections / 2, 1));
      break;
    default:
      max = static_cast<uint32_t>(limits.local_shared_pool_size);
  }
  return Limit(max, static_cast<uint32_t>(std::max(active_client_backends, 0)), true);
}

Limit Limit::ForNode(const PoolLimits& limits, bool local, int active_client_backends) {
  return local ? ForLocal(limits, active_client_backends) : ForRemote(limits);
}

std::string Limit::ToString() const {
  if (unlimited()) return "unlimited";
  std::string s = absl::StrCat("at most ", max_);
  if (never_waits_) absl::StrAppend(&s, " (local node, ", external_, " client backends active)");
  return s;
}

}  // namespace connthrottle
