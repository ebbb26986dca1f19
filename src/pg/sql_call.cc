// sql_call.cc — requiring the table, slot work, interrupts and raising.

extern "C" {
// clang-format off
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/pmsignal.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
// clang-format on
}

#include "pg/sql_call.h"

#include "pg/bridge/backend_state.h"
#include "pg/bridge/table_stats.h"
#include "pg/guc.h"

namespace connthrottle::pg {
namespace {

// Full-table events seen when this backend last looked, and when it last
// warned (0: never).
uint64 full_table_events_seen = 0;
TimestampTz uncounted_warned_at = 0;

}  // namespace

void Raise(const Outcome& o) {
  if (o.sqlstate == 0) return;
  ereport(ERROR, (errcode(o.sqlstate), errmsg("%s", o.message),
                  o.detail[0] != '\0' ? errdetail("%s", o.detail) : 0));
}

void RequireTable() {
  if (!TableReady()) {
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("connthrottle must be loaded via shared_preload_libraries"),
                    errhint("Add connthrottle to shared_preload_libraries in postgresql.conf and "
                            "restart the server.")));
  }
}

void BeginSlotWork() {
  RequireTable();
  EnsureBackendExitCallback();
  full_table_events_seen = FullTableEvents();
}

NodeArgs BeginNodeSlotWork(FunctionCallInfo fcinfo) {
  const NodeArgs node = ReadNodeArgs(fcinfo);
  BeginSlotWork();
  return node;
}

void WarnIfUncounted() {
  const uint64 events = FullTableEvents();
  if (events == full_table_events_seen) return;
  full_table_events_seen = events;
  const TimestampTz now = GetCurrentTimestamp();
  if (uncounted_warned_at != 0 &&
      !TimestampDifferenceExceeds(uncounted_warned_at, now, 60 * 1000)) {
    return;
  }
  TableRow t{};
  if (!TableStatistics(&t).ok() || t.uncounted_in_use == 0) return;
  uncounted_warned_at = now;
  ereport(WARNING,
          (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
           errmsg("connthrottle: %llu connections to worker nodes are not counted",
                  static_cast<unsigned long long>(t.uncounted_in_use)),
           errdetail("All %u entries of the shared table (connthrottle.max_tracked_nodes) are "
                     "busy and connthrottle.full_table_policy is 'admit_uncounted', so these "
                     "connections bypass every limit.",
                     t.capacity),
           errhint("Raise connthrottle.max_tracked_nodes (needs a restart), or set "
                   "connthrottle.full_table_policy to 'refuse'. This warning is repeated at "
                   "most once a minute per session.")));
}

bool InterruptCheck() { return InterruptPending || ConfigReloadPending || !PostmasterIsAlive(); }

void HandleInterrupt(Settings* settings) {
  if (ConfigReloadPending) {
    ConfigReloadPending = false;
    ProcessConfigFile(PGC_SIGHUP);
    *settings = CurrentSettings();
  }
  if (!PostmasterIsAlive()) {
    ereport(FATAL, (errcode(ERRCODE_ADMIN_SHUTDOWN),
                    errmsg("terminating connection due to unexpected postmaster exit")));
  }
  CHECK_FOR_INTERRUPTS();
}

bool ExecutorInterruptCheck() {
  return QueryCancelPending || ProcDiePending || !PostmasterIsAlive();
}

void RaiseExecutorInterrupt(Settings* settings) {
  HandleInterrupt(settings);
  ereport(ERROR,
          (errcode(ERRCODE_QUERY_CANCELED), errmsg("connthrottle: the execution was interrupted")));
}

}  // namespace connthrottle::pg
