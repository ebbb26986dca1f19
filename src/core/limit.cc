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
  if (auto s = CheckSetting("max_client_connections", max_client_connections, 1); !s.ok()) {
    return s;
  }
  if (max_shared_pool_size_per_database == 0) {
    return absl::InvalidArgumentError(
        "max_shared_pool_size_per_database = 0 would refuse every connection; "
        "-1 turns the per-database bound off");
  }
  return CheckSetting("max_shared_pool_size_per_database", max_shared_pool_size_per_database,
                      kPerDatabaseOff);
}

namespace {

// `limit` with the per-database bound of `limits`, if any.
Limit PerDatabase(Limit limit, const PoolLimits& limits) {
  if (limits.max_shared_pool_size_per_database == kPerDatabaseOff) return limit;
  return limit.WithPerDatabase(static_cast<uint32_t>(limits.max_shared_pool_size_per_database));
}

}  // namespace

Limit Limit::ForRemote(const PoolLimits& limits) {
  switch (limits.max_shared_pool_size) {
    case kThrottlingOff:
      return Unlimited();
    case kDeriveFromMaxConnections:
      return PerDatabase(AtMost(static_cast<uint32_t>(std::max(limits.max_connections, 1))),
                         limits);
    default:
      return PerDatabase(AtMost(static_cast<uint32_t>(limits.max_shared_pool_size)), limits);
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
  return PerDatabase(Limit(max, static_cast<uint32_t>(std::max(active_client_backends, 0)), true),
                     limits);
}

Limit Limit::CappedAt(uint32_t n) const {
  Limit l = *this;
  l.max_ = unlimited() ? n : std::min(max_, n);
  return l;
}

Limit Limit::ForNode(const PoolLimits& limits, bool local, int active_client_backends) {
  return local ? ForLocal(limits, active_client_backends) : ForRemote(limits);
}

std::string Limit::ToString() const {
  if (unlimited()) return "unlimited";
  std::string s = absl::StrCat("at most ", max_);
  if (never_waits_) absl::StrAppend(&s, " (local node, ", external_, " client backends active)");
  if (per_database()) absl::StrAppend(&s, ", at most ", database_max_, " per database");
  return s;
}

}  // namespace connthrottle
