// What session.cc shares with the communicator's pool (pool_service.cc):
// this process's Owner of the shared counter table, and how the settings
// turn into limits and a full-table policy. Plain C++, no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_

#include "absl/status/statusor.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"
#include "pg/bridge/session.h"

namespace connthrottle::pg {

// Registered on first use; given back by BackendExit().
absl::StatusOr<Owner*> ProcessOwner();
PoolLimits PoolLimitsOf(const Settings& settings);
FullTablePolicy FullTablePolicyOf(const Settings& settings);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_
