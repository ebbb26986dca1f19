// lease_manager.h — the worker's lease manager (issue 28, docs/budget.md):
// a background worker, started with the server when connthrottle is
// preloaded, that wakes when the next grant of its lease table ends (at
// least every second), ends the grants whose time is up, and terminates
// (SIGTERM) the ghosts of coordinators whose every grant has ended: a
// coordinator dead, cut off, or paused past its deadline has stopped using
// those connections by then (admission.h).

#ifndef CONNTHROTTLE_SRC_PG_LEASE_MANAGER_H_
#define CONNTHROTTLE_SRC_PG_LEASE_MANAGER_H_

namespace connthrottle::pg {

// Registers the background worker (_PG_init, while preloading).
void RegisterLeaseManager();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_LEASE_MANAGER_H_
