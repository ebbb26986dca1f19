// lease_manager.cc — the worker's lease manager: see lease_manager.h.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
// clang-format on

PGDLLEXPORT void connthrottle_lease_manager_main(Datum);
}

#include "pg/lease_manager.h"

#include <algorithm>
#include <cstdint>

#include "pg/bridge/leases.h"

namespace connthrottle::pg {

void RegisterLeaseManager() {
  BackgroundWorker worker;
  memset(&worker, 0, sizeof(worker));
  worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
  worker.bgw_start_time = BgWorkerStart_PostmasterStart;
  worker.bgw_restart_time = 1;
  snprintf(worker.bgw_library_name, BGW_MAXLEN, "connthrottle");
  snprintf(worker.bgw_function_name, BGW_MAXLEN, "connthrottle_lease_manager_main");
  snprintf(worker.bgw_name, BGW_MAXLEN, "connthrottle lease manager");
  snprintf(worker.bgw_type, BGW_MAXLEN, "connthrottle lease manager");
  RegisterBackgroundWorker(&worker);
}

}  // namespace connthrottle::pg

void connthrottle_lease_manager_main(Datum) {
  pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
  pqsignal(SIGHUP, SIG_IGN);  // it reads no setting
  BackgroundWorkerUnblockSignals();
  constexpr int64_t kMs = 1'000'000;
  while (!ShutdownRequestPending) {
    const int64_t next = connthrottle::pg::EndExpiredLeases();
    const int64_t now = connthrottle::pg::LeaseClockNow();
    // Wake just after the next grant ends; at least every second.
    const int64_t wait = next == INT64_MAX ? 1000 : std::clamp((next - now) / kMs + 1, 1L, 1000L);
    (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait,
                    PG_WAIT_EXTENSION);
    ResetLatch(MyLatch);
  }
  proc_exit(0);
}
