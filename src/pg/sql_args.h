// The arguments of connthrottle's SQL functions, read and checked before
// anything is called in the bridge. Functions are not STRICT: a NULL
// argument is an error with SQLSTATE 22004, raised here. Every function may
// raise a PostgreSQL error, so they are called only from the SQL functions'
// own frames, where no C++ object owns anything.

#ifndef CONNTHROTTLE_SRC_PG_SQL_ARGS_H_
#define CONNTHROTTLE_SRC_PG_SQL_ARGS_H_

extern "C" {
// clang-format off
#include "postgres.h"

#include "fmgr.h"
// clang-format on
}

#include "pg/bridge/outcome.h"
#include "pg/bridge/reservations.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// Argument `n`, which is called `name` in messages.
void RequireNotNull(FunctionCallInfo fcinfo, int n, const char* name);
const char* TextArg(FunctionCallInfo fcinfo, int n, const char* name);
int32 IntArg(FunctionCallInfo fcinfo, int n, const char* name);
// A `name` argument naming a database: its OID (an error when there is none).
Oid DatabaseArg(FunctionCallInfo fcinfo, int n);

// A node's host (argument `n`) as counters and connections use it: host
// names and addresses in lower case without trailing dots, so that "W1",
// "w1." and "w1" share one counter; a Unix-socket directory (starting with
// '/') as given. A libpq host list ("a,b") would let one node's slot cover
// connections to several, so it is refused (22023).
const char* HostArg(FunctionCallInfo fcinfo, int n);

// (host text, port int, database name): the arguments that open every
// function about one node's slot or reservation, the host as HostArg's.
struct NodeArgs {
  const char* host;
  int32 port;
  Oid database;
};
NodeArgs ReadNodeArgs(FunctionCallInfo fcinfo);

// Reads parallel arrays hosts (argument `hosts_arg`), ports and, when
// `commands_arg` >= 0, commands: one-dimensional, without NULLs, of one
// length, which it returns. *nodes (hosts canonical, as HostArg's) and
// *commands are palloc'd.
int NodeArrays(FunctionCallInfo fcinfo, int hosts_arg, int ports_arg, int commands_arg,
               NodeRef** nodes, const char*** commands);

// The wait of a call with a timeout argument `n` (an interval): NULL means
// connthrottle.connection_wait_timeout; a negative one is refused (22023); a
// timeout of a thousand years or more means no limit.
Wait WaitArg(FunctionCallInfo fcinfo, int n, const Settings& settings);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_SQL_ARGS_H_
