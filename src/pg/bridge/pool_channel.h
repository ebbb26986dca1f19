// The shared_pool transport as a backend sees it: Execute() writes the
// execution's tasks into this backend's session slot, wakes the
// communicator (the background worker that holds the pooled connections,
// src/pg/communicator.cc) and waits on the backend's latch for the response.
// Tasks the communicator hands back (local failover) run in-process through
// the context, as with the direct transport.
//
// The slot itself is the glue's: ChannelOps are its functions, which never
// raise a PostgreSQL error. A PoolChannel belongs to one backend (one
// thread); the context must outlive it.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_CHANNEL_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_CHANNEL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/task.h"
#include "connthrottle/executor/transport.h"
#include "pg/bridge/channel_ops.h"

namespace connthrottle::pg {

// The payload key under which an error status carries the SQLSTATE to raise.
inline constexpr absl::string_view kSqlstatePayload = "connthrottle.sqlstate";

class PoolChannel : public Transport {
 public:
  PoolChannel(ExecutionContext& context, ChannelOps ops, int64_t max_rows_kept,
              absl::Duration claim_timeout);

  // Errors: Cancelled when the context was interrupted (the request is
  // withdrawn); Unavailable with a kSqlstatePayload of 08006 or 57P01 when
  // the communicator restarted, stopped or does not run; ResourceExhausted
  // (54000) when the tasks do not fit in the slot.
  absl::StatusOr<ExecutionResult> Execute(std::vector<Task> tasks) override;

 private:
  ExecutionContext& context_;
  ChannelOps ops_;
  int64_t max_rows_kept_;
  absl::Duration claim_timeout_;
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_CHANNEL_H_
