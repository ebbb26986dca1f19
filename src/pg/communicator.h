// The shared pool's PostgreSQL side (communicator.cc), as the rest of the
// glue uses it: shared memory for the session slots, the background
// worker's registration, a backend's channel to the communicator and the
// figures the communicator publishes. Plain C++: no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_
#define CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/channel_ops.h"

namespace connthrottle::pg {

// connthrottle.pool_message_bytes, before the shared memory is sized.
void SetPoolMessageBytes(int bytes);
size_t CommunicatorShmemBytes();
// In shmem_startup_hook, under AddinShmemInitLock.
void CommunicatorShmemInit();
// In _PG_init, while shared_preload_libraries are loaded.
void RegisterCommunicator();

// Whether this process has a session slot (a backend connected to a database).
bool ChannelAvailable();
// This backend's half of its slot; only when ChannelAvailable(). May raise
// a PostgreSQL error: call it before any C++ frame is entered.
ChannelOps BackendChannelOps();
// Raises the error a wait on the latch raised during the call, if any
// (the channel reported the communicator lost meanwhile).
void RethrowChannelError();

// What the communicator published last (about every 100 ms).
struct CommunicatorStats {
  int pid;         // 0: not running
  uint32_t epoch;  // how many times it started
  int64_t connections, tasks_queued, connections_started, connections_opened, connections_failed,
      closed_idle, closed_dead, closed_in_transaction, closed_for_waiters, optional_refused,
      tasks_run, tasks_retried, tasks_cancelled, tasks_handed_back, closed_over_limit, reloads,
      resets, closed_reset_failed, closed_for_pools, notifications_dropped, tasks_over_memory,
      out_of_memory;
};
CommunicatorStats ReadCommunicatorStats();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_
