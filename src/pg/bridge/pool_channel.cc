#include "pg/bridge/pool_channel.h"

#include <new>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "executor/libpq_conn.h"
#include "pg/bridge/pool_message.h"

namespace connthrottle::pg {
absl::Status PoolChannel::WithSqlstate(absl::Status status, const std::string& sqlstate) {
  if (sqlstate.size() == 5) status.SetPayload(kSqlstatePayload, absl::Cord(sqlstate));
  return status;
}

absl::Status PoolChannel::Lost(ChannelState state) {
  switch (state) {
    case ChannelState::kTerminated:
      return WithSqlstate(absl::UnavailableError("the connthrottle communicator was terminated "
                                                 "while it ran this execution's tasks"),
                          "57P01");  // admin_shutdown
    case ChannelState::kNotRunning:
      return WithSqlstate(absl::UnavailableError("the connthrottle communicator is not running"),
                          "08006");
    default:
      return WithSqlstate(absl::UnavailableError("the connthrottle communicator restarted "
                                                 "while it ran this execution's tasks"),
                          "08006");  // connection_failure
  }
}

PoolChannel::PoolChannel(ExecutionContext& context, ChannelOps ops, int64_t max_rows_kept,
                         absl::Duration claim_timeout)
    : context_(context), ops_(ops), max_rows_kept_(max_rows_kept), claim_timeout_(claim_timeout) {}

absl::StatusOr<ExecutionResult> PoolChannel::Execute(std::vector<Task> tasks) {
  if (tasks.empty()) return ExecutionResult{};
  const SharedPool::Submission request = RequestFor(tasks);
  const absl::Time submitted = absl::Now();
  absl::StatusOr<PoolResponse> response =
      Call([&](char* area, size_t capacity) { return EncodeRequest(request, area, capacity); });
  if (!response.ok()) return response.status();
  return Settle(tasks, *std::move(response), submitted);
}

absl::StatusOr<PoolResponse> PoolChannel::Call(
    absl::FunctionRef<absl::StatusOr<size_t>(char* area, size_t capacity)> encode) {
  if (absl::Status claimed = Claim(); !claimed.ok()) return claimed;
  size_t capacity = 0;
  char* area = ops_.area(&capacity);
  absl::StatusOr<size_t> size = encode(area, capacity);
  if (!size.ok()) {
    return WithSqlstate(
        absl::ResourceExhaustedError(
            absl::StrCat(size.status().message(), ", more than connthrottle.pool_message_bytes")),
        "54000");
  }
  ops_.submit(*size);
  std::string parts;
  absl::StatusOr<std::string_view> message = AwaitResponse(area, parts);
  if (!message.ok()) return message.status();
  absl::StatusOr<PoolResponse> response = DecodeResponse(message->data(), message->size());
  if (!response.ok()) return response.status();
  if (!response->status.ok()) return WithSqlstate(response->status, response->sqlstate);
  return response;
}

SharedPool::Submission PoolChannel::RequestFor(const std::vector<Task>& tasks) {
  SharedPool::Submission request;
  request.database_id = context_.DatabaseId();
  request.max_rows_kept = max_rows_kept_;
  // The session's connection_wait_timeout decides its tasks' 53300, not
  // the communicator's.
  request.slot_wait_timeout = claim_timeout_;
  for (const Task& task : tasks) {
    request.params.push_back(context_.ParamsFor(task.node));
    request.local.push_back(context_.IsLocal(task.node));
  }
  request.tasks = tasks;
  return request;
}

absl::Status PoolChannel::Claim() {
  // The slot: free unless the communicator still drops a cancelled request,
  // or is restarting (it starts again within a second).
  const absl::Time claim_deadline = absl::Now() + claim_timeout_;
  while (true) {
    ChannelState state = ops_.claim();
    if (state == ChannelState::kReady) return absl::OkStatus();
    if (context_.Interrupted()) return absl::CancelledError("the execution was cancelled");
    if (absl::Now() >= claim_deadline) {
      return state == ChannelState::kNotRunning
                 ? Lost(state)
                 : WithSqlstate(absl::UnavailableError(
                                    "the connthrottle communicator did not take this session's "
                                    "request in time"),
                                "08006");
    }
  }
}

absl::StatusOr<std::string_view> PoolChannel::AwaitResponse(const char* area, std::string& parts) {
  // The response: in the area when it fits, else gathered from its parts
  // (each read before the next is asked for: a slow session holds up only
  // its own answer).
  while (true) {
    size_t size = 0, total = 0;
    ChannelState state = ops_.await(&size, &total);
    if (state == ChannelState::kReady) {
      // Whole (an error may also end a response in parts).
      if (size == total) return std::string_view(area, size);
      try {
        if (parts.empty()) parts.reserve(total);
        parts.append(area, size);
      } catch (const std::bad_alloc&) {
        ops_.cancel();  // the communicator drops the rest
        return WithSqlstate(
            absl::ResourceExhaustedError(absl::StrCat(
                "connthrottle: no memory for this execution's results (", total, " bytes)")),
            "53200");  // out_of_memory
      }
      if (parts.size() >= total) return std::string_view(parts);
      if (context_.Interrupted()) return Withdraw();
      ops_.more();
      continue;
    }
    if (state != ChannelState::kPending) {
      ops_.cancel();  // a communicator that starts later must not run it
      return Lost(state);
    }
    if (context_.Interrupted()) return Withdraw();
  }
}

absl::Status PoolChannel::Withdraw() {
  ops_.cancel();
  return absl::CancelledError("the execution was cancelled");
}

absl::StatusOr<ExecutionResult> PoolChannel::Settle(const std::vector<Task>& tasks,
                                                    PoolResponse response, absl::Time submitted) {
  if (response.tasks.size() != tasks.size()) {
    return absl::DataLossError("connthrottle: the communicator answered for other tasks");
  }
  ExecutionResult out;
  out.tasks = std::move(response.tasks);
  out.stats.tasks_retried = response.tasks_retried;
  // Local failover: tasks the local node's pool could not connect for.
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (!response.run_locally[t]) continue;
    out.tasks[t] = RunHandedBack(context_, tasks[t], submitted);
    ++out.stats.tasks_run_locally;
  }
  return out;
}

}  // namespace connthrottle::pg
