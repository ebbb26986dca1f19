// sql_results.cc — records and column values of the SQL functions' results.

extern "C" {
// clang-format off
#include "postgres.h"

#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
// clang-format on
}

#include "pg/sql_results.h"

namespace connthrottle::pg {

TupleDesc RecordResult(FunctionCallInfo fcinfo, const char* function, int columns) {
  TupleDesc desc;
  if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE) {
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("connthrottle: %s must return a record", function)));
  }
  if (columns >= 0) RequireColumns(fcinfo, desc, columns);
  return BlessTupleDesc(desc);
}

void RequireColumns(FunctionCallInfo fcinfo, TupleDesc desc, int columns) {
  if (desc->natts == columns) return;
  const char* name = get_func_name(fcinfo->flinfo->fn_oid);
  ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                  errmsg("connthrottle: %s returns %d columns where this library fills %d",
                         name != nullptr ? name : "the function", desc->natts, columns),
                  errhint("The extension's SQL objects are from another version of connthrottle: "
                          "DROP EXTENSION connthrottle and CREATE EXTENSION connthrottle again.")));
}

void DatabaseName(Oid db, Datum* value, bool* isnull) {
  char* name = get_database_name(db);
  *isnull = name == nullptr;
  *value = name != nullptr ? DirectFunctionCall1(namein, CStringGetDatum(name)) : Datum{0};
}

void TextOrNull(const char* text, Datum* value, bool* isnull) {
  *isnull = text == nullptr;
  *value = text != nullptr ? CStringGetTextDatum(text) : Datum{0};
}

void VerifiedTextOrNull(const char* text, Datum* value, bool* isnull) {
  if (text != nullptr) pg_verifymbstr(text, static_cast<int>(strlen(text)), false);
  TextOrNull(text, value, isnull);
}

Datum MicrosecondsInterval(int64 us) {
  Interval* interval = static_cast<Interval*>(palloc0(sizeof(Interval)));
  interval->time = us;
  return IntervalPGetDatum(interval);
}

}  // namespace connthrottle::pg
