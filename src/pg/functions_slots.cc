// functions_slots.cc — the SQL functions of slots held by the session:
// try_acquire, acquire, force_acquire, release, release_all, session_slots.
//
// Every SQL function is written in the same shape (functions.cc): arguments
// read and checked with PostgreSQL calls, one noexcept call into the bridge
// with plain values, then its Outcome raised.

extern "C" {
// clang-format off
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
// clang-format on
}

#include "pg/bridge/slots.h"
#include "pg/guc.h"
#include "pg/sql_args.h"
#include "pg/sql_call.h"
#include "pg/sql_results.h"

namespace pg = connthrottle::pg;

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_try_acquire);
PG_FUNCTION_INFO_V1(connthrottle_acquire);
PG_FUNCTION_INFO_V1(connthrottle_force_acquire);
PG_FUNCTION_INFO_V1(connthrottle_release);
PG_FUNCTION_INFO_V1(connthrottle_release_all);
PG_FUNCTION_INFO_V1(connthrottle_session_slots);

// try_acquire(host text, port int, database name) returns boolean
Datum connthrottle_try_acquire(PG_FUNCTION_ARGS) {
  const pg::NodeArgs node = pg::BeginNodeSlotWork(fcinfo);
  bool acquired = false;
  pg::Raise(pg::TryAcquire(node.host, node.port, node.database, pg::CurrentSettings(),
                           pg::ActiveClientBackends(), &acquired));
  pg::WarnIfUncounted();
  PG_RETURN_BOOL(acquired);
}

// acquire(host text, port int, database name, timeout interval) returns void
Datum connthrottle_acquire(PG_FUNCTION_ARGS) {
  const pg::NodeArgs node = pg::BeginNodeSlotWork(fcinfo);
  pg::Settings settings = pg::CurrentSettings();
  pg::Wait wait = pg::WaitArg(fcinfo, 3, settings);
  pg::WaitInterruptibly(&settings, [&](const pg::Settings& now) {
    return pg::AcquireWaiting(node.host, node.port, node.database, now, pg::ActiveClientBackends(),
                              wait, pg::InterruptCheck);
  });
  pg::WarnIfUncounted();
  PG_RETURN_VOID();
}

// force_acquire(host text, port int, database name) returns void
Datum connthrottle_force_acquire(PG_FUNCTION_ARGS) {
  // A forced slot ignores the limit: not for roles that merely run tasks.
  if (!superuser()) {
    ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                    errmsg("connthrottle: only superusers may force_acquire")));
  }
  const pg::NodeArgs node = pg::BeginNodeSlotWork(fcinfo);
  pg::Raise(pg::AcquireForced(node.host, node.port, node.database, pg::CurrentSettings()));
  pg::WarnIfUncounted();
  PG_RETURN_VOID();
}

// release(host text, port int, database name) returns boolean
Datum connthrottle_release(PG_FUNCTION_ARGS) {
  const pg::NodeArgs node = pg::ReadNodeArgs(fcinfo);
  pg::RequireTable();
  bool released = false;
  pg::Raise(pg::Release(node.host, node.port, node.database, &released));
  PG_RETURN_BOOL(released);
}

// release_all() returns integer
Datum connthrottle_release_all(PG_FUNCTION_ARGS) {
  pg::RequireTable();
  int count = 0;
  pg::Raise(pg::ReleaseAllSlots(&count));
  PG_RETURN_INT32(count);
}

// session_slots() returns setof (host text, port int, database name, kind text)
Datum connthrottle_session_slots(PG_FUNCTION_ARGS) {
  return pg::ReturnSessionRows(
      fcinfo, pg::ListSlots, [](const pg::HeldSlot& row) { return CStringGetTextDatum(row.kind); });
}

}  // extern "C"
