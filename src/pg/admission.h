// admission.h — the worker's side of the budget (issue 28, step 5 of
// docs/budget.md): a server that runs connthrottle counts the coordinator
// connections it has admitted, from every coordinator together, and refuses
// at authentication (FATAL, 53300) any beyond connthrottle.worker_budget.
//
// A coordinator connection is one whose startup options set
// connthrottle.coordinator (every connection connthrottle's executor and
// shared pool open carries it; node_conninfo cannot remove it, as it
// refuses `options`). A connection is counted from its admission until its
// process has left pg_stat_activity and given back its PGPROC (an
// on_proc_exit callback, which runs after every shared-memory exit
// callback), so the workers' pg_stat_activity never shows more than the
// budget of them. With the budget off (-1) they are still counted, so that
// turning it on is exact. A crash-restart of the server ends every backend
// and starts the count again from zero.
//
// Process-safety: one atomic counter in shared memory; admission is a
// compare-and-swap below the budget, so concurrent admissions never pass it.

#ifndef CONNTHROTTLE_SRC_PG_ADMISSION_H_
#define CONNTHROTTLE_SRC_PG_ADMISSION_H_

#include <cstddef>
#include <cstdint>

namespace connthrottle::pg {

// Shared memory the counter needs (shmem_request_hook).
size_t AdmissionShmemBytes();
// Lays the counter out, or attaches to it (shmem_startup_hook, under
// AddinShmemInitLock).
void AdmissionShmemInit();
// Defines connthrottle.worker_budget and connthrottle.coordinator, and
// installs the ClientAuthentication_hook (_PG_init).
void RegisterAdmission();

struct AdmissionFigures {
  int budget = -1;           // connthrottle.worker_budget in this backend
  uint32_t connections = 0;  // coordinator connections admitted and not gone
  uint64_t admitted = 0;     // since the server (re)started
  uint64_t refused = 0;      // refused for the budget, since then
};
// The counter's figures (zeros before shared memory is set up).
AdmissionFigures ReadAdmission();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_ADMISSION_H_
