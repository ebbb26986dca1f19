// What connthrottle's SQL functions return: sets of rows (materialize
// mode), one record, and the Datums of their columns. May raise
// PostgreSQL errors (out of memory, invalid encoding, a caller that does
// not take a record).

#ifndef CONNTHROTTLE_SRC_PG_SQL_RESULTS_H_
#define CONNTHROTTLE_SRC_PG_SQL_RESULTS_H_

extern "C" {
// clang-format off
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"
// clang-format on
}

#include "pg/bridge/outcome.h"
#include "pg/sql_call.h"

namespace connthrottle::pg {

// 55000 unless `desc` has `columns` columns: the function's SQL declaration
// is from another version of the extension than this library, which would
// otherwise read or write past its values.
void RequireColumns(FunctionCallInfo fcinfo, TupleDesc desc, int columns);

// Returns `count` rows from a set-returning function in materialize mode:
// fill(i, values, nulls) sets row i's N columns (nulls start false).
// The function's declared columns must be N (55000 otherwise: its SQL
// objects are from another version of the extension than this library).
template <int N, typename Fill>
Datum ReturnRows(FunctionCallInfo fcinfo, int count, Fill fill) {
  InitMaterializedSRF(fcinfo, 0);
  ReturnSetInfo* rsinfo = reinterpret_cast<ReturnSetInfo*>(fcinfo->resultinfo);
  RequireColumns(fcinfo, rsinfo->setDesc, N);
  for (int i = 0; i < count; ++i) {
    Datum values[N];
    bool nulls[N] = {};
    fill(i, values, nulls);
    tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
  }
  return static_cast<Datum>(0);
}

// The name of database `db` as a `name` Datum, or NULL when it is gone.
void DatabaseName(Oid db, Datum* value, bool* isnull);

// Returns what this session holds, slots or reservations, copied by `list`
// (at most 4096 of them), as rows (host, port, database, last(row)).
// Requires the table.
template <typename Row, typename Last>
Datum ReturnSessionRows(FunctionCallInfo fcinfo, Outcome (*list)(Row*, int, int*), Last last) {
  RequireTable();
  const int max = 4096;
  auto* rows = static_cast<Row*>(palloc(sizeof(Row) * max));
  int count = 0;
  Raise(list(rows, max, &count));
  return ReturnRows<4>(fcinfo, count, [&](int i, Datum* values, bool* nulls) {
    values[0] = CStringGetTextDatum(rows[i].host);
    values[1] = Int32GetDatum(rows[i].port);
    DatabaseName(rows[i].database, &values[2], &nulls[2]);
    values[3] = last(rows[i]);
  });
}

// The tuple descriptor of `function`, which returns one record (0A000 when
// the caller does not take one).
// With `columns` >= 0, the record must have that many (see RequireColumns).
TupleDesc RecordResult(FunctionCallInfo fcinfo, const char* function, int columns = -1);

// Text, or NULL for a null pointer.
void TextOrNull(const char* text, Datum* value, bool* isnull);
// Text from a worker, checked to be valid in this database's encoding before
// it becomes a datum (workers are asked for it in that encoding).
void VerifiedTextOrNull(const char* text, Datum* value, bool* isnull);
// An interval of `us` microseconds.
Datum MicrosecondsInterval(int64 us);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_SQL_RESULTS_H_
