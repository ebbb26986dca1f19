// A backend's session slot as the shared_pool transport (pool_channel.h)
// sees it: functions of the glue (communicator.cc) that never raise a
// PostgreSQL error. Plain C++ without includes beyond the standard library,
// so that both sides of the boundary can include it.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_CHANNEL_OPS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_CHANNEL_OPS_H_

#include <cstddef>

namespace connthrottle::pg {

enum class ChannelState : int {
  kReady = 0,   // done: the response is in the area (await), or the slot is ours (claim)
  kPending,     // nothing yet: ask again after checking for interrupts
  kRestarted,   // the communicator restarted while it had the request (08006)
  kTerminated,  // the communicator was told to stop while it had the request (57P01)
  kNotRunning,  // no communicator runs now
};

struct ChannelOps {
  // The slot's message area: the request is written here, the response read.
  char* (*area)(size_t* capacity);
  // Whether the slot is free for a request: kReady, or kPending while the
  // communicator still drops a cancelled one (waits up to a tick first), or
  // kNotRunning.
  ChannelState (*claim)();
  // Publishes `size` bytes of request and wakes the communicator.
  void (*submit)(size_t size);
  // Waits up to a tick for the response; kReady when it, or its next part,
  // is in the area: `size` bytes of `total` (a response larger than the
  // area crosses it in parts).
  ChannelState (*await)(size_t* size, size_t* total);
  // Asks for the response's next part, once the last one was read.
  void (*more)();
  // Withdraws the request: the communicator drops its queued tasks and
  // cancels its running ones. Does not wait.
  void (*cancel)();
  // Whether the COPY this session has open was lost with a communicator
  // that stopped between two of its steps: kTerminated (told to stop) or
  // kRestarted; kReady when not. Reading it clears it.
  ChannelState (*lost_copy)();
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_CHANNEL_OPS_H_
