// functions_reservations.cc — the SQL functions of reservations: reserve,
// try_reserve, use_reservation, reservations. Written in the shape of
// functions.cc.

extern "C" {
// clang-format off
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
// clang-format on
}

#include "pg/bridge/reservations.h"
#include "pg/guc.h"
#include "pg/sql_args.h"
#include "pg/sql_call.h"
#include "pg/sql_results.h"

namespace pg = connthrottle::pg;

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_reserve);
PG_FUNCTION_INFO_V1(connthrottle_try_reserve);
PG_FUNCTION_INFO_V1(connthrottle_use_reservation);
PG_FUNCTION_INFO_V1(connthrottle_reservations);

// reserve(hosts text[], ports int[], database name, timeout interval) returns integer
Datum connthrottle_reserve(PG_FUNCTION_ARGS) {
  Oid database = pg::DatabaseArg(fcinfo, 2);
  pg::NodeRef* nodes = nullptr;
  const int nhosts = pg::NodeArrays(fcinfo, 0, 1, -1, &nodes, nullptr);
  pg::BeginSlotWork();
  pg::Settings settings = pg::CurrentSettings();
  pg::Wait wait = pg::WaitArg(fcinfo, 3, settings);
  int reserved = 0;
  pg::WaitInterruptibly(&settings, [&](const pg::Settings& now) {
    return pg::Reserve(nodes, nhosts, database, GetUserId(), now, pg::ActiveClientBackends(), wait,
                       pg::InterruptCheck, &reserved);
  });
  pg::WarnIfUncounted();
  PG_RETURN_INT32(reserved);
}

// try_reserve(host text, port int, database name) returns boolean
Datum connthrottle_try_reserve(PG_FUNCTION_ARGS) {
  const pg::NodeArgs node = pg::BeginNodeSlotWork(fcinfo);
  bool reserved = false;
  pg::Raise(pg::TryReserve(node.host, node.port, node.database, GetUserId(), pg::CurrentSettings(),
                           pg::ActiveClientBackends(), &reserved));
  pg::WarnIfUncounted();
  PG_RETURN_BOOL(reserved);
}

// use_reservation(host text, port int, database name) returns boolean
Datum connthrottle_use_reservation(PG_FUNCTION_ARGS) {
  const pg::NodeArgs node = pg::ReadNodeArgs(fcinfo);
  pg::RequireTable();
  bool used = false;
  pg::Raise(pg::UseReservation(node.host, node.port, node.database, GetUserId(), &used));
  PG_RETURN_BOOL(used);
}

// reservations() returns setof (host text, port int, database name, used boolean)
Datum connthrottle_reservations(PG_FUNCTION_ARGS) {
  return pg::ReturnSessionRows(fcinfo, pg::ListReservations, [](const pg::ReservationRow& row) {
    return BoolGetDatum(row.used);
  });
}

}  // extern "C"
