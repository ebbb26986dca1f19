// What the communicator's pool (pool_service.cc) shares with the backend
// side of the bridge: this process's Owner of the shared counter table
// (backend_state.cc), and how the settings turn into limits and a
// full-table policy (internal/settings.h). Plain C++, no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_

#include "absl/status/statusor.h"
#include "connthrottle/owner.h"
#include "pg/bridge/internal/settings.h"

namespace connthrottle::pg {

// This process's Owner: registered on first use (FailedPrecondition when
// the table is not set up, the registration's error when every owner place
// is taken); given back by BackendExit().
absl::StatusOr<Owner*> ProcessOwner();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_PROCESS_OWNER_H_
