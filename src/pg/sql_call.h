// The life of one call of a connthrottle SQL function around the bridge:
// the table required, slot work begun, waits that the glue resumes after
// handling an interrupt, and the bridge's Outcome raised as a PostgreSQL
// error. Everything here may raise: call it only from the SQL functions'
// own frames, never from a C++ frame that owns something.

#ifndef CONNTHROTTLE_SRC_PG_SQL_CALL_H_
#define CONNTHROTTLE_SRC_PG_SQL_CALL_H_

extern "C" {
// clang-format off
#include "postgres.h"

#include "fmgr.h"
#include "pgstat.h"
#include "utils/wait_event.h"
// clang-format on
}

#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"
#include "pg/sql_args.h"

namespace connthrottle::pg {

// Raises `o` with its SQLSTATE, message and detail; returns when it is ok
// (or only interrupted: the caller handles that first).
void Raise(const Outcome& o);
// Raises 55000 unless the library was loaded through shared_preload_libraries.
void RequireTable();

// Before a call that may take slots: RequireTable, the backend-exit callback
// registered, and the full-table events noted for WarnIfUncounted.
void BeginSlotWork();
// The opening of every function that may take a slot for one node:
// ReadNodeArgs, then BeginSlotWork.
NodeArgs BeginNodeSlotWork(FunctionCallInfo fcinfo);
// After a call that may have taken slots: when the table was full meanwhile
// and connections went through uncounted (full_table_policy
// admit_uncounted), says so with a WARNING, at most once a minute per
// backend. The common case costs one atomic load.
void WarnIfUncounted();

// The interrupt check the core polls while waiting for a slot: it only
// reads whether something is pending (an interrupt, a reload, postmaster
// death). The error, if any, is raised after the bridge returned.
bool InterruptCheck();
// Handles what made a wait stop: reloads the configuration into *settings
// if asked, raises FATAL when the postmaster died, and the query-cancel,
// statement-timeout or termination error if one is pending; otherwise
// returns so that the caller waits again with its remaining time.
void HandleInterrupt(Settings* settings);

// Runs `attempt`, a bridge call that may wait, showing the Extension wait
// event, until it ends other than by an interrupt. An interrupt (reload,
// cancel, terminate) is handled here, after the bridge has returned, and the
// call resumed with the settings as they are now. Raises the final error.
template <typename Attempt>
void WaitInterruptibly(Settings* settings, Attempt attempt) {
  for (;;) {
    pgstat_report_wait_start(PG_WAIT_EXTENSION);
    Outcome o = attempt(*settings);
    pgstat_report_wait_end();
    if (!o.interrupted) return Raise(o);
    HandleInterrupt(settings);
  }
}

// The executor's interrupt check: only what will raise an error (cancel,
// statement timeout, termination, postmaster death).
bool ExecutorInterruptCheck();
// After an execution stopped on an interrupt: raises it (57014 when the
// interrupt itself raised nothing).
void RaiseExecutorInterrupt(Settings* settings);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_SQL_CALL_H_
