// settings.cc — the settings as the core takes them.

#include "pg/bridge/internal/settings.h"

#include <algorithm>

#include "pg/bridge/internal/outcome.h"

namespace connthrottle::pg {

PoolLimits PoolLimitsOf(const Settings& settings) {
  PoolLimits limits;
  limits.max_shared_pool_size = settings.max_shared_pool_size;
  limits.max_connections = std::max(settings.max_connections, 1);
  limits.local_shared_pool_size = settings.local_shared_pool_size;
  limits.max_client_connections = std::max(settings.max_connections, 1);
  limits.max_shared_pool_size_per_database = settings.max_shared_pool_size_per_database;
  return limits;
}

FullTablePolicy FullTablePolicyOf(const Settings& settings) {
  return settings.full_table == FullTable::kRefuse ? FullTablePolicy::kRefuse
                                                   : FullTablePolicy::kAdmitUncounted;
}

AcquireOptions AcquireOptionsOf(const Settings& settings) {
  AcquireOptions options;
  options.when_full = FullTablePolicyOf(settings);
  return options;
}

AcquireOptions WaitOptions(const Settings& settings, const Wait& wait) {
  AcquireOptions options = AcquireOptionsOf(settings);
  if (wait.resumed) options.wait_began = Began(wait);
  return options;
}

absl::Duration WaitTimeout(const Settings& settings) {
  return settings.connection_wait_timeout_ms < 0
             ? absl::Hours(24 * 365)
             : absl::Milliseconds(settings.connection_wait_timeout_ms);
}

}  // namespace connthrottle::pg
