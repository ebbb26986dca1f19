// The messages a backend and the communicator exchange through a session
// slot's message area (src/pg/communicator.cc): a request (one execution's
// tasks and how to reach their nodes) and its response (a result per task,
// or "run it locally", or one error for the whole execution).
//
// A flat, length-prefixed byte format, written and read by the same build of
// the extension, so it has no versioning beyond a magic number. Decoding
// checks every length against the area: a torn or foreign message is an
// error, never an out-of-bounds read. Plain C++, no PostgreSQL header.
//
// What a response keeps of a task's rows is what run_tasks shows: the single
// value when the last result set was one row of one column, the command tag
// and the row count.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_MESSAGE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_MESSAGE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/task.h"

namespace connthrottle::pg {

// Writes the request into `out`; ResourceExhausted (and nothing usable in
// `out`) when it needs more than `capacity` bytes.
absl::StatusOr<size_t> EncodeRequest(const SharedPool::Submission& request, char* out,
                                     size_t capacity);
absl::StatusOr<SharedPool::Submission> DecodeRequest(const char* in, size_t size);

struct PoolResponse {
  // When not OK, the execution as a whole failed (the communicator stopped,
  // the request could not be read) with `sqlstate`; `tasks` is empty.
  absl::Status status;
  std::string sqlstate;
  std::vector<TaskResult> tasks;  // in task order
  std::vector<bool> run_locally;  // per task: handed back, to run in-process
  int tasks_retried = 0;
};

// The bytes EncodeResponse needs to write `response` whole (with nothing
// cut to fit): a response larger than the message area crosses it in parts.
size_t ResponseBytes(const PoolResponse& response);
// Writes the response into `out`, which must hold at least 256 bytes. It
// always fits: a task whose value or message would not is reported as
// failed with 54000 (program_limit_exceeded) naming `setting`, and when even
// that does not fit the whole response becomes one 54000 error.
size_t EncodeResponse(const PoolResponse& response, char* out, size_t capacity,
                      const char* setting);
absl::StatusOr<PoolResponse> DecodeResponse(const char* in, size_t size);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_MESSAGE_H_
