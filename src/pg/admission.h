// admission.h — the worker's side of the budget (issue 28, steps 5 and 6
// of docs/budget.md): a server that runs connthrottle counts the coordinator
// connections it has admitted, from every coordinator together, leases
// parts of connthrottle.worker_budget to coordinators (lease_renew), and
// refuses at authentication (FATAL, 53300) any connection beyond the budget
// or beyond its coordinator's lease. The accounting is core/lease_table.h's.
//
// A coordinator connection is one whose startup options set
// connthrottle.coordinator: "<id>/<incarnation>" names a leasing
// coordinator, any other value ("on", which connthrottle's executor and
// shared pool send until their lease holder exists) an unleased one.
// node_conninfo refuses `options`, so a coordinator cannot drop it. A
// connection is counted from its admission until its process has left
// pg_stat_activity and given back its PGPROC (an on_proc_exit callback,
// which runs after every shared-memory exit callback), so the worker's
// pg_stat_activity never shows more than the budget of them. With the
// budget off (-1) they are still counted, so that turning it on is exact.
// A crash-restart of the server ends every backend and starts from an
// empty table under a new instance number.
//
// The lease manager, a background worker, ends grants when their time is
// up and terminates the ghosts of a coordinator whose every grant has
// ended (dead, cut off, or paused past its deadline).
//
// Process-safety: bridge/leases.h's (one spinlock of its own, which an
// exit callback after ProcKill can take without a PGPROC).

#ifndef CONNTHROTTLE_SRC_PG_ADMISSION_H_
#define CONNTHROTTLE_SRC_PG_ADMISSION_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/leases.h"

namespace connthrottle::pg {

// Shared memory the counter needs (shmem_request_hook).
size_t AdmissionShmemBytes();
// Lays the counter out, or attaches to it (shmem_startup_hook, under
// AddinShmemInitLock).
void AdmissionShmemInit();
// Defines connthrottle.worker_budget and connthrottle.coordinator, and
// installs the ClientAuthentication_hook (_PG_init).
void RegisterAdmission();

// The lease settings of this backend (lease_renew; worker_admission's budget).
LeaseConfig CurrentLeaseConfig();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_ADMISSION_H_
