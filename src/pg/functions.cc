// functions.cc — the SQL functions of schema connthrottle that show the
// shared table and the communicator: assert_preloaded, node_stats, holders,
// table_stats, pool_stats, is_local_node, audit. The others are in
// functions_slots.cc, functions_reservations.cc and functions_tasks.cc.
//
// Every function is written in the same shape: read and check the arguments
// with PostgreSQL calls (which may raise errors; sql_args.h), call a noexcept
// function of the bridge with plain values, then raise its Outcome with
// ereport (sql_call.h). Only plain structs and pointers live in these frames,
// so an error raised here unwinds nothing that owns a resource; the C++
// objects live in the bridge (src/pg/bridge/). Functions are not STRICT: a
// NULL argument is an error with SQLSTATE 22004.

extern "C" {
// postgres.h must come first.
// clang-format off
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
// clang-format on
}

#include "pg/admission.h"
#include "pg/bridge/local_node.h"
#include "pg/bridge/reservations.h"
#include "pg/bridge/table_stats.h"
#include "pg/communicator.h"
#include "pg/guc.h"
#include "pg/sql_args.h"
#include "pg/sql_call.h"
#include "pg/sql_results.h"
#include "pg/worker_catalog.h"

namespace {

using connthrottle::pg::DatabaseName;
using connthrottle::pg::HostArg;
using connthrottle::pg::IntArg;
using connthrottle::pg::MicrosecondsInterval;
using connthrottle::pg::Raise;
using connthrottle::pg::RecordResult;
using connthrottle::pg::RequireCatalogNodes;
using connthrottle::pg::RequireTable;
using connthrottle::pg::ReturnRows;

// The database of a database's counter as a `name`; NULL on a node's row
// (and for a database dropped since).
template <typename Row>
void PerDatabase(const Row& r, Datum* value, bool* isnull) {
  if (!r.per_database) {
    *value = static_cast<Datum>(0);
    *isnull = true;
    return;
  }
  DatabaseName(r.database, value, isnull);
}

}  // namespace

extern "C" {

PG_FUNCTION_INFO_V1(connthrottle_assert_preloaded);
PG_FUNCTION_INFO_V1(connthrottle_node_stats);
PG_FUNCTION_INFO_V1(connthrottle_holders);
PG_FUNCTION_INFO_V1(connthrottle_table_stats);
PG_FUNCTION_INFO_V1(connthrottle_pool_stats);
PG_FUNCTION_INFO_V1(connthrottle_worker_admission);
PG_FUNCTION_INFO_V1(connthrottle_is_local_node);
PG_FUNCTION_INFO_V1(connthrottle_audit);

Datum connthrottle_assert_preloaded(PG_FUNCTION_ARGS) {
  RequireTable();
  PG_RETURN_VOID();
}

// node_stats() returns setof (host, port, connections, forced, reserved,
// waiters, acquired, refused, waited, wait_time, forced_total, wakeups, cached,
// database): database is NULL on a node's row, set on a database's counter
// (max_shared_pool_size_per_database)
Datum connthrottle_node_stats(PG_FUNCTION_ARGS) {
  RequireTable();
  const int max = static_cast<int>(connthrottle::pg::Capacity());
  auto* rows = static_cast<connthrottle::pg::NodeRow*>(
      palloc(sizeof(connthrottle::pg::NodeRow) * (max > 0 ? max : 1)));
  int count = 0;
  Raise(connthrottle::pg::NodeStats(rows, max, &count));
  return ReturnRows<14>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const connthrottle::pg::NodeRow& r = rows[i];
    values[0] = CStringGetTextDatum(r.host);
    values[1] = Int32GetDatum(r.port);
    values[2] = Int32GetDatum(static_cast<int32>(r.connections));
    values[3] = Int32GetDatum(static_cast<int32>(r.forced));
    values[4] = Int32GetDatum(static_cast<int32>(r.reserved));
    values[5] = Int32GetDatum(static_cast<int32>(r.waiters));
    values[6] = Int64GetDatum(static_cast<int64>(r.acquired));
    values[7] = Int64GetDatum(static_cast<int64>(r.refused));
    values[8] = Int64GetDatum(static_cast<int64>(r.waited));
    values[9] = MicrosecondsInterval(r.wait_time_us);
    values[10] = Int64GetDatum(static_cast<int64>(r.forced_total));
    values[11] = Int64GetDatum(static_cast<int64>(r.wakeups));
    values[12] = Int32GetDatum(static_cast<int32>(r.cached));
    PerDatabase(r, &values[13], &nulls[13]);
  });
}

// holders() returns setof (pid, host, port, connections, forced, reserved,
// waiting, database), database as in node_stats()
Datum connthrottle_holders(PG_FUNCTION_ARGS) {
  RequireTable();
  const connthrottle::pg::HolderRow* rows = nullptr;
  int count = 0;
  Raise(connthrottle::pg::Holders(&rows, &count));
  return ReturnRows<8>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    const connthrottle::pg::HolderRow& r = rows[i];
    values[0] = Int32GetDatum(r.pid);
    values[1] = CStringGetTextDatum(r.host);
    values[2] = Int32GetDatum(r.port);
    values[3] = Int32GetDatum(static_cast<int32>(r.connections));
    values[4] = Int32GetDatum(static_cast<int32>(r.forced));
    values[5] = Int32GetDatum(static_cast<int32>(r.reserved));
    values[6] = BoolGetDatum(r.waiting);
    PerDatabase(r, &values[7], &nulls[7]);
  });
}

// table_stats() returns one row of table-wide figures
Datum connthrottle_table_stats(PG_FUNCTION_ARGS) {
  RequireTable();
  TupleDesc desc = RecordResult(fcinfo, "table_stats", 14);
  connthrottle::pg::TableRow t{};
  Raise(connthrottle::pg::TableStatistics(&t));
  Datum values[14] = {
      Int32GetDatum(static_cast<int32>(t.capacity)),
      Int32GetDatum(static_cast<int32>(t.entries_in_use)),
      Int32GetDatum(static_cast<int32>(t.owners)),
      Int32GetDatum(static_cast<int32>(t.max_owners)),
      Int64GetDatum(static_cast<int64>(t.uncounted_in_use)),
      Int64GetDatum(static_cast<int64>(t.full_table_events)),
      Int64GetDatum(static_cast<int64>(t.entries_created)),
      Int64GetDatum(static_cast<int64>(t.entries_dropped)),
      Int64GetDatum(static_cast<int64>(t.acquired)),
      Int64GetDatum(static_cast<int64>(t.refused)),
      Int64GetDatum(static_cast<int64>(t.waited)),
      MicrosecondsInterval(t.wait_time_us),
      Int64GetDatum(static_cast<int64>(t.forced_total)),
      Int64GetDatum(static_cast<int64>(t.wakeups)),
  };
  bool nulls[14] = {false};
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// worker_admission() returns one row: this server's budget of coordinator
// connections (NULL when off), the coordinator connections open now, those
// admitted and refused since the server started, and its leases' figures
// (admission.h)
Datum connthrottle_worker_admission(PG_FUNCTION_ARGS) {
  RequireTable();
  TupleDesc desc = RecordResult(fcinfo, "worker_admission", 10);
  const int budget = connthrottle::pg::CurrentLeaseConfig().budget;
  const connthrottle::pg::LeaseFiguresPlain f = connthrottle::pg::ReadLeaseFigures();
  Datum values[10] = {
      Int32GetDatum(budget),
      Int32GetDatum(static_cast<int32>(f.connections)),
      Int64GetDatum(static_cast<int64>(f.admitted)),
      Int64GetDatum(static_cast<int64>(f.refused)),
      Int32GetDatum(static_cast<int32>(f.unleased)),
      Int32GetDatum(static_cast<int32>(f.reserved)),
      Int32GetDatum(static_cast<int32>(f.coordinators)),
      Int64GetDatum(static_cast<int64>(f.refused_lease)),
      Int64GetDatum(static_cast<int64>(f.refused_unleased)),
      Int64GetDatum(static_cast<int64>(f.instance)),
  };
  bool nulls[10] = {budget < 0};
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// pool_stats() returns one row: the communicator (pid, starts) and the
// figures it published, in the order of pool_stats.h (the SQL script's
// columns come from the same list)
Datum connthrottle_pool_stats(PG_FUNCTION_ARGS) {
  constexpr int kColumns = 2 + connthrottle::pg::kPoolStatCount;
  RequireTable();
  TupleDesc desc = RecordResult(fcinfo, "pool_stats");
  // A script older than the library shows the columns it has; a newer one
  // would read past the values.
  if (desc->natts > kColumns) {
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("connthrottle: pool_stats has %d columns, this library fills %d",
                           desc->natts, kColumns)));
  }
  const connthrottle::pg::CommunicatorStats c = connthrottle::pg::ReadCommunicatorStats();
  Datum values[kColumns];
  bool nulls[kColumns] = {false};
  values[0] = Int32GetDatum(c.pid);
  nulls[0] = c.pid == 0;
  values[1] = Int64GetDatum(static_cast<int64>(c.epoch));
  for (int k = 0; k < connthrottle::pg::kPoolStatCount; ++k) {
    values[2 + k] = Int64GetDatum(c.figures.values[k]);
  }
  PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

// is_local_node(host text, port int) returns boolean
Datum connthrottle_is_local_node(PG_FUNCTION_ARGS) {
  const char* host = HostArg(fcinfo, 0);
  int32 port = IntArg(fcinfo, 1, "port");
  // Resolving a name may send it to a DNS server: only catalog nodes, unless
  // a superuser asks.
  connthrottle::pg::NodeRef node{host, port};
  RequireCatalogNodes(&node, 1, "call is_local_node");
  bool local = false;
  Raise(connthrottle::pg::IsLocalNode(host, port, connthrottle::pg::CurrentSettings(), &local));
  PG_RETURN_BOOL(local);
}

// audit() returns void; raises when the counters disagree with their owners
Datum connthrottle_audit(PG_FUNCTION_ARGS) {
  RequireTable();
  Raise(connthrottle::pg::Audit());
  PG_RETURN_VOID();
}

}  // extern "C"
