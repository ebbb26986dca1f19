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
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/task.h"
#include "connthrottle/executor/transport.h"
#include "pg/bridge/channel_ops.h"
#include "pg/bridge/pool_message.h"

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

  // One request through the slot, of any kind: claims the slot, `encode`
  // writes the request into the area (its size; an error stops the call),
  // submits it and waits for the response, decoded. A response that is an
  // error comes back as that error, with its SQLSTATE. Errors as Execute's.
  absl::StatusOr<PoolResponse> Call(
      absl::FunctionRef<absl::StatusOr<size_t>(char* area, size_t capacity)> encode);

  // `status` with `sqlstate` as its kSqlstatePayload.
  static absl::Status WithSqlstate(absl::Status status, const std::string& sqlstate);
  // The error of a communicator lost in `state` (restarted, terminated, not running).
  static absl::Status Lost(ChannelState state);

 private:
  // The request for `tasks`: their connection parameters and which are local.
  SharedPool::Submission RequestFor(const std::vector<Task>& tasks);
  // Waits until the session slot is free for a request, up to claim_timeout.
  absl::Status Claim();
  // The submitted request's response: in `area` when it came whole, else in
  // `parts`, gathered from the area part by part.
  absl::StatusOr<std::string_view> AwaitResponse(const char* area, std::string& parts);
  // Withdraws the request (the context was interrupted): Cancelled.
  absl::Status Withdraw();
  // The execution's result from `response`; tasks handed back run here,
  // through the context.
  absl::StatusOr<ExecutionResult> Settle(const std::vector<Task>& tasks, PoolResponse response,
                                         absl::Time submitted);

  ExecutionContext& context_;
  ChannelOps ops_;
  int64_t max_rows_kept_;
  absl::Duration claim_timeout_;
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_CHANNEL_H_
