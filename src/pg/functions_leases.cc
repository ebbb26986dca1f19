// functions_leases.cc — the SQL functions of a worker's leases (issue 28,
// docs/budget.md): lease_renew, called by a coordinator's lease holder over
// its lease connection, and leases(), which shows the table. The
// accounting is admission.h's (core/lease_table.h). Written in the shape
// of functions.cc: arguments read and checked here, the bridge called with
// plain values, its result raised or returned.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/async.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
// clang-format on
}

#include <algorithm>
#include <cstring>

#include "pg/admission.h"
#include "pg/bridge/lease_board.h"
#include "pg/bridge/lease_service.h"
#include "pg/sql_args.h"
#include "pg/sql_call.h"
#include "pg/sql_results.h"

namespace {

using connthrottle::pg::IntArg;
using connthrottle::pg::RequireNotNull;

// A bigint argument that must be at least `min` (22023 otherwise).
uint64_t CountArg(FunctionCallInfo fcinfo, int n, const char* name, int64 min) {
  RequireNotNull(fcinfo, n, name);
  const int64 v = PG_GETARG_INT64(n);
  if (v < min) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: %s must be at least " INT64_FORMAT ", not " INT64_FORMAT,
                           name, min, v)));
  }
  return static_cast<uint64_t>(v);
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_lease_renew);
PG_FUNCTION_INFO_V1(connthrottle_leases);
PG_FUNCTION_INFO_V1(connthrottle_lease_status);

// lease_renew(coordinator_id, incarnation, instance_seen, seq, acked, open,
// demand, cap, release) returns (worker_instance, reply_seq, granted,
// duration_ms, others_want_more, budget_off). The coordinators a shrink
// needs are notified on channel connthrottle_lease (payload: their id)
// when the call's transaction commits.
Datum connthrottle_lease_renew(PG_FUNCTION_ARGS) {
  connthrottle::pg::RequireTable();
  connthrottle::pg::RenewArgs args{};
  const char* id = connthrottle::pg::TextArg(fcinfo, 0, "coordinator_id");
  if (!connthrottle::pg::IsValidCoordinatorId(id)) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: a coordinator id has 1 to %d printable bytes and no "
                           "space, '/' or '\\'",
                           static_cast<int>(sizeof(args.id) - 1))));
  }
  memcpy(args.id, id, strlen(id));
  args.incarnation = CountArg(fcinfo, 1, "incarnation", 1);
  args.instance_seen = CountArg(fcinfo, 2, "instance_seen", 0);
  args.seq = CountArg(fcinfo, 3, "seq", 1);
  args.acked = CountArg(fcinfo, 4, "acked", 0);
  args.open = IntArg(fcinfo, 5, "open");
  args.demand = IntArg(fcinfo, 6, "demand");
  args.cap = IntArg(fcinfo, 7, "cap");
  RequireNotNull(fcinfo, 8, "release");
  args.release = PG_GETARG_BOOL(8);
  TupleDesc desc = connthrottle::pg::RecordResult(fcinfo, "lease_renew", 6);

  const connthrottle::pg::RenewResult r =
      connthrottle::pg::RenewLease(args, connthrottle::pg::CurrentLeaseConfig());
  if (!r.ok) {
    // A request not newer than the last is a bad argument too (22023): 55000
    // means "connthrottle is not preloaded here" to a lease holder.
    ereport(ERROR, (errcode(r.invalid || r.stale ? ERRCODE_INVALID_PARAMETER_VALUE
                                                 : ERRCODE_TOO_MANY_CONNECTIONS),
                    errmsg("connthrottle: %s", r.message)));
  }
  for (int i = 0; i < r.notify_count; ++i) Async_Notify("connthrottle_lease", r.notify[i]);
  Datum values[6] = {
      Int64GetDatum(static_cast<int64>(r.instance)),
      Int64GetDatum(static_cast<int64>(r.seq)),
      Int32GetDatum(r.grant),
      Int32GetDatum(r.duration_ms),
      BoolGetDatum(r.others_want_more),
      BoolGetDatum(r.budget_off),
  };
  bool nulls[6] = {false};
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// leases() returns setof (coordinator_id, incarnation, held, pending, live,
// demand, cap, fair_share, ends_in, renewals, refusals, ghosts_ended)
Datum connthrottle_leases(PG_FUNCTION_ARGS) {
  connthrottle::pg::RequireTable();
  constexpr int kMax = 1024;
  auto* rows = static_cast<connthrottle::pg::LeaseRowPlain*>(
      palloc(sizeof(connthrottle::pg::LeaseRowPlain) * kMax));
  const int count = std::min(connthrottle::pg::ListLeases(rows, kMax), kMax);
  return connthrottle::pg::ReturnRows<12>(fcinfo, count, [&](int i, Datum* v, bool*) {
    const connthrottle::pg::LeaseRowPlain& r = rows[i];
    v[0] = CStringGetTextDatum(r.id);
    v[1] = Int64GetDatum(static_cast<int64>(r.incarnation));
    v[2] = Int32GetDatum(r.held);
    v[3] = Int32GetDatum(r.pending);
    v[4] = Int32GetDatum(r.live);
    v[5] = Int32GetDatum(r.demand);
    v[6] = Int32GetDatum(r.cap);
    v[7] = Int32GetDatum(r.fair_share);
    v[8] = connthrottle::pg::MicrosecondsInterval(r.ends_in_ms * 1000);
    v[9] = Int64GetDatum(static_cast<int64>(r.renewals));
    v[10] = Int64GetDatum(static_cast<int64>(r.refusals));
    v[11] = Int64GetDatum(static_cast<int64>(r.ghosts_ended));
  });
}

// lease_status() returns setof (host, port, state, lease_limit, ends_in,
// error): this coordinator's lease of each worker it uses, as its lease
// service last published it. lease_limit is what the lease allows now (NULL:
// leases do not limit the node); ends_in the time left of a usable lease.
Datum connthrottle_lease_status(PG_FUNCTION_ARGS) {
  constexpr int kMax = connthrottle::pg::kLeaseBoardNodes;
  auto* rows = static_cast<connthrottle::pg::LeaseBoardRow*>(
      palloc(sizeof(connthrottle::pg::LeaseBoardRow) * kMax));
  const int count = std::min(connthrottle::pg::ReadLeaseBoard(rows, kMax), kMax);
  return connthrottle::pg::ReturnRows<6>(fcinfo, count, [&](int i, Datum* v, bool* nulls) {
    const connthrottle::pg::LeaseBoardRow& r = rows[i];
    const bool leased = r.lease.kind == connthrottle::pg::BoardKind::kLeased;
    const bool usable = leased && r.left_ns > 0;
    v[0] = CStringGetTextDatum(r.host);
    v[1] = Int32GetDatum(r.port);
    v[2] = CStringGetTextDatum(leased && !usable ? "lapsed"
                                                 : connthrottle::pg::LeaseStateText(r.lease.state));
    switch (r.lease.kind) {
      case connthrottle::pg::BoardKind::kNone:
        nulls[3] = true;
        break;
      case connthrottle::pg::BoardKind::kZero:
        v[3] = Int32GetDatum(0);
        break;
      case connthrottle::pg::BoardKind::kLeased:
        v[3] = Int32GetDatum(usable ? r.lease.limit : 0);
        break;
    }
    if (usable) {
      v[4] = connthrottle::pg::MicrosecondsInterval(r.left_ns / 1000);
    } else {
      nulls[4] = true;
    }
    if (r.lease.error[0] != '\0') {
      v[5] = CStringGetTextDatum(r.lease.error);
    } else {
      nulls[5] = true;
    }
  });
}

}  // extern "C"
