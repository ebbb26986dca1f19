// connthrottle/transport.h — how a session's remote tasks reach the workers.
//
// Two transports run the same tasks with the same results and the same
// limit:
//
//   * AdaptiveExecutor (executor.h), the direct transport: the session opens
//     its own connections, holding a slot of the shared table for each, and
//     keeps a few cached for its next execution.
//   * SharedPoolTransport (shared_pool.h): the session hands its tasks to a
//     SharedPool, which runs them on long-lived connections it shares among
//     all sessions; the session waits for its tasks' turn, never for a slot.
//
// A Transport belongs to one session and is used by one thread.

#ifndef CONNTHROTTLE_EXECUTOR_TRANSPORT_H_
#define CONNTHROTTLE_EXECUTOR_TRANSPORT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "connthrottle/executor/task.h"

namespace connthrottle {

class Transport {
 public:
  virtual ~Transport() = default;
  // Runs `tasks`. A failing task fails alone (its TaskResult says why); the
  // whole execution fails only when the session's ExecutionContext interrupts
  // it (Cancelled: every running remote query of it has been cancelled), or
  // when the transport itself is gone (Unavailable).
  virtual absl::StatusOr<ExecutionResult> Execute(std::vector<Task> tasks) = 0;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_TRANSPORT_H_
