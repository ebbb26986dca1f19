// sql_args.cc — reading and checking the SQL functions' arguments.

extern "C" {
// clang-format off
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
// clang-format on
}

#include "pg/sql_args.h"

namespace connthrottle::pg {
namespace {

// A node's host as counters and connections use it (HostArg).
char* CanonicalHost(char* host) {
  if (strchr(host, ',') != nullptr) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: host \"%s\" is a list of hosts", host),
                    errhint("Give one host per node.")));
  }
  if (host[0] == '/') return host;
  for (char* p = host; *p != '\0'; ++p) *p = pg_ascii_tolower(static_cast<unsigned char>(*p));
  size_t n = strlen(host);
  while (n > 1 && host[n - 1] == '.') host[--n] = '\0';
  return host;
}

// The arrays of NodeArrays, checked: one-dimensional and without NULLs.
void CheckNodeArrays(ArrayType* hosts, ArrayType* ports, ArrayType* cmds, const char* names) {
  if (ARR_NDIM(hosts) > 1 || ARR_NDIM(ports) > 1 || (cmds != nullptr && ARR_NDIM(cmds) > 1)) {
    ereport(ERROR, (errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
                    errmsg("connthrottle: %s must be one-dimensional arrays", names)));
  }
  if (array_contains_nulls(hosts) || array_contains_nulls(ports) ||
      (cmds != nullptr && array_contains_nulls(cmds))) {
    ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                    errmsg("connthrottle: %s must not contain NULL", names)));
  }
}

}  // namespace

void RequireNotNull(FunctionCallInfo fcinfo, int n, const char* name) {
  if (PG_ARGISNULL(n)) {
    ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                    errmsg("connthrottle: argument \"%s\" must not be NULL", name)));
  }
}

const char* TextArg(FunctionCallInfo fcinfo, int n, const char* name) {
  RequireNotNull(fcinfo, n, name);
  return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

int32 IntArg(FunctionCallInfo fcinfo, int n, const char* name) {
  RequireNotNull(fcinfo, n, name);
  return PG_GETARG_INT32(n);
}

const char* HostArg(FunctionCallInfo fcinfo, int n) {
  RequireNotNull(fcinfo, n, "host");
  return CanonicalHost(text_to_cstring(PG_GETARG_TEXT_PP(n)));
}

Oid DatabaseArg(FunctionCallInfo fcinfo, int n) {
  RequireNotNull(fcinfo, n, "database");
  return get_database_oid(NameStr(*PG_GETARG_NAME(n)), false);
}

NodeArgs ReadNodeArgs(FunctionCallInfo fcinfo) {
  // In argument order: the braces evaluate left to right.
  return NodeArgs{HostArg(fcinfo, 0), IntArg(fcinfo, 1, "port"), DatabaseArg(fcinfo, 2)};
}

int NodeArrays(FunctionCallInfo fcinfo, int hosts_arg, int ports_arg, int commands_arg,
               NodeRef** nodes, const char*** commands) {
  RequireNotNull(fcinfo, hosts_arg, "hosts");
  RequireNotNull(fcinfo, ports_arg, "ports");
  if (commands_arg >= 0) RequireNotNull(fcinfo, commands_arg, "commands");
  ArrayType* hosts = PG_GETARG_ARRAYTYPE_P(hosts_arg);
  ArrayType* ports = PG_GETARG_ARRAYTYPE_P(ports_arg);
  ArrayType* cmds = commands_arg >= 0 ? PG_GETARG_ARRAYTYPE_P(commands_arg) : nullptr;
  const char* names = cmds != nullptr ? "hosts, ports and commands" : "hosts and ports";
  CheckNodeArrays(hosts, ports, cmds, names);
  Datum* host_values = nullptr;
  Datum* port_values = nullptr;
  Datum* cmd_values = nullptr;
  int nhosts = 0, nports = 0, ncmds = 0;
  deconstruct_array(hosts, TEXTOID, -1, false, TYPALIGN_INT, &host_values, nullptr, &nhosts);
  deconstruct_array(ports, INT4OID, 4, true, TYPALIGN_INT, &port_values, nullptr, &nports);
  if (cmds != nullptr) {
    deconstruct_array(cmds, TEXTOID, -1, false, TYPALIGN_INT, &cmd_values, nullptr, &ncmds);
  }
  if (nhosts != nports || (cmds != nullptr && ncmds != nhosts)) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    cmds != nullptr ? errmsg("connthrottle: %s differ in length (%d, %d and %d)",
                                             names, nhosts, nports, ncmds)
                                    : errmsg("connthrottle: %s differ in length (%d and %d)", names,
                                             nhosts, nports)));
  }
  *nodes = static_cast<NodeRef*>(palloc(sizeof(NodeRef) * (nhosts > 0 ? nhosts : 1)));
  if (commands != nullptr) {
    *commands = static_cast<const char**>(palloc(sizeof(char*) * (nhosts > 0 ? nhosts : 1)));
  }
  for (int i = 0; i < nhosts; ++i) {
    (*nodes)[i].host = CanonicalHost(TextDatumGetCString(host_values[i]));
    (*nodes)[i].port = DatumGetInt32(port_values[i]);
    if (commands != nullptr) (*commands)[i] = TextDatumGetCString(cmd_values[i]);
  }
  return nhosts;
}

Wait WaitArg(FunctionCallInfo fcinfo, int n, const Settings& settings) {
  if (PG_ARGISNULL(n)) return BeginWait(settings.connection_wait_timeout_ms, true);
  Interval* interval = PG_GETARG_INTERVAL_P(n);
  // Months count as 30 days, as interval comparison does.
  __int128 us = static_cast<__int128>(interval->time) +
                (static_cast<__int128>(interval->day) +
                 static_cast<__int128>(interval->month) * DAYS_PER_MONTH) *
                    USECS_PER_DAY;
  if (us < 0) {
    ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                    errmsg("connthrottle: timeout must not be negative")));
  }
  // Beyond a thousand years is no limit at all.
  constexpr __int128 kNoLimitUs = static_cast<__int128>(1000) * 366 * USECS_PER_DAY;
  return BeginWait(us >= kNoLimitUs ? -1 : static_cast<int64>(us / 1000), false);
}

}  // namespace connthrottle::pg
