// The bridge-only half of settings.h: what the settings mean to the core —
// the pool limits (which Limit::ForNode turns into one node's limit), the
// options of an acquire, and the longest wait for a slot.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_SETTINGS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_SETTINGS_H_

#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/limit.h"
#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// max_shared_pool_size, local_shared_pool_size, and max_connections (at
// least 1) as both the coordinator's and the client connections' figure.
PoolLimits PoolLimitsOf(const Settings& settings);
FullTablePolicy FullTablePolicyOf(const Settings& settings);
// The options of an acquire: the full-table policy.
AcquireOptions AcquireOptionsOf(const Settings& settings);
// The options of a waiting acquire: the full-table policy, and whether it
// resumes an interrupted wait (then the wait counts from when it began).
AcquireOptions WaitOptions(const Settings& settings, const Wait& wait);
// connection_wait_timeout as a duration; a year when it is -1 (no limit).
absl::Duration WaitTimeout(const Settings& settings);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_SETTINGS_H_
