// The settings and backend state module.cc keeps, as the rest of the glue
// reads them (the SQL functions, sql_call.cc, communicator.cc). Plain C++:
// no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_GUC_H_
#define CONNTHROTTLE_SRC_PG_GUC_H_

#include <cstddef>

#include "pg/bridge/lease_service.h"
#include "pg/bridge/pool_settings.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// The connthrottle.* settings as they are now in this backend.
Settings CurrentSettings();
// The executor's settings (database and user are filled in by the caller).
ExecutorSettings CurrentExecutorSettings();

// Client backends connected now (the local node's limit counts them).
int ActiveClientBackends();

// connthrottle.executor_transport is 'shared_pool'.
bool UseSharedPool();
// The settings shared_pool_settings.def declares, as they are now.
PoolSettings CurrentPoolSettings();
// The lease service's settings (connthrottle.worker_leases and the rest).
LeaseServiceSettings CurrentLeaseServiceSettings();

// Registers the before_shmem_exit callback that gives back what this backend
// holds; called before its first slot or reservation.
void EnsureBackendExitCallback();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_GUC_H_
