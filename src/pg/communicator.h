// The shared pool's PostgreSQL side (communicator.cc), as the rest of the
// glue uses it: shared memory for the session slots, the background
// worker's registration, a backend's channel to the communicator and the
// figures the communicator publishes. Plain C++: no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_
#define CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_

#include <cstddef>
#include <cstdint>

#include "pg/bridge/channel_ops.h"
#include "pg/bridge/pool_stats.h"

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
  PoolStatValues figures;
};
CommunicatorStats ReadCommunicatorStats();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_COMMUNICATOR_H_
