// sql_results.cc — records and column values of the SQL functions' results.

extern "C" {
// clang-format off
#include "postgres.h"

#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
// clang-format on
}

#include "pg/sql_results.h"

namespace connthrottle::pg {

TupleDesc RecordResult(FunctionCallInfo fcinfo, const char* function) {
  TupleDesc desc;
  if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE) {
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("connthrottle: %s must return a record", function)));
  }
  return BlessTupleDesc(desc);
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
