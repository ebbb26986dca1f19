// Local execution of run_tasks's tasks: the glue's LocalRunner (tasks.h),
// which runs a task's SQL in this backend through SPI when the local node's
// pool got no connection. It never raises: errors are contained in a
// subtransaction and described in the LocalTaskOutcome, and an error that
// cannot be contained is kept, to be raised once the bridge has returned.

#ifndef CONNTHROTTLE_SRC_PG_LOCAL_TASK_H_
#define CONNTHROTTLE_SRC_PG_LOCAL_TASK_H_

#include "pg/bridge/tasks.h"

namespace connthrottle::pg {

// Runs one task in this backend inside an internal subtransaction, as
// PL/pgSQL's exception blocks do: every error is caught, the subtransaction
// rolled back, and the error described in `out`, so that nothing ever
// unwinds through the C++ executor that called this. When the
// subtransaction itself cannot be started, the error is kept and the
// execution stopped (out->abort_call). Keeps no more than the first row.
void RunLocalTask(const char* sql, LocalTaskOutcome* out);

// Before an execution: forgets any error kept by an earlier one.
void ForgetLocalTaskError();
// After the execution returned: raises the error RunLocalTask kept, if any.
void RethrowLocalTaskError();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_LOCAL_TASK_H_
