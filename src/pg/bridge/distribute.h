// distribute: COPY with reservations. A slot is reserved per node up front
// (global order, waiting), rows are then sent one by one, a node being
// connected when its first row arrives, and FinishDistribute reports each
// node. One distribution at a time per backend; the end of the transaction
// (EndTransaction) abandons an unfinished one, cancelling the workers' COPY.
// Glue-facing (outcome.h).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_DISTRIBUTE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_DISTRIBUTE_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/channel_ops.h"
#include "pg/bridge/outcome.h"
#include "pg/bridge/reservations.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

struct DistributeRow {
  const char* host;
  int port;
  int64_t rows;
  bool success;
  const char* error;  // nullptr on success
};

// Opens a distribution of `copy_sql` (COPY ... FROM STDIN) to `nodes`,
// reserving their slots within `wait`; interrupted as AcquireWaiting
// (slots.h), checking `interrupted`.
Outcome BeginDistribute(const NodeRef* nodes, int count, const char* copy_sql, uint32_t database,
                        const Settings& settings, const ExecutorSettings& executor,
                        int active_client_backends, Wait& wait, bool (*interrupted)(),
                        bool (*stream_interrupted)());
// The same through the communicator's shared pool (`channel`: this
// backend's slot). Nothing is asked of the communicator yet: the open goes
// with the first chunk (DistributeOne when an area's worth is gathered, or
// FinishDistribute), and the communicator pins a pooled connection per
// node, in the global order, waiting up to connection_wait_timeout (53300),
// before it sends any row. DistributeOne and FinishDistribute return with
// interrupted set when `interrupted` fired (the step withdrawn).
Outcome BeginPooledDistribute(const NodeRef* nodes, int count, const char* copy_sql,
                              uint32_t database, const Settings& settings,
                              const ExecutorSettings& executor, int active_client_backends,
                              bool (*interrupted)(), const ChannelOps& channel);
// DistributeOne and FinishDistribute wait on the workers' sockets looking at
// `stream_interrupted` (given to BeginDistribute) every 10 ms; when it fires
// they return with interrupted set (for DistributeOne the stream stays, to
// be abandoned by the transaction's end). 55000 when no distribution is open.
// Sends one row (COPY text, with its newline) to node number `node`.
Outcome DistributeOne(int node, const char* row, size_t length);
// Ends the COPY on every node; *rows (one per node, valid until the next
// call into the bridge) say how many rows each took and whether it succeeded.
Outcome FinishDistribute(const DistributeRow** rows, int* count);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_DISTRIBUTE_H_
