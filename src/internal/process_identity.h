// Who a process is, robustly against pid reuse: its pid and its start time
// (clock ticks since boot, /proc/<pid>/stat field 22). Internal, Linux-only.

#ifndef CONNTHROTTLE_SRC_INTERNAL_PROCESS_IDENTITY_H_
#define CONNTHROTTLE_SRC_INTERNAL_PROCESS_IDENTITY_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

namespace connthrottle::internal {

struct ProcessIdentity {
  uint32_t pid = 0;
  uint64_t start_time = 0;
};

// The calling process's identity (re-read after fork).
ProcessIdentity SelfIdentity();

// The start time of `pid`, or nullopt when no such process exists or it is a
// zombie (it has exited and holds nothing any more).
std::optional<uint64_t> StartTimeOf(pid_t pid);

// Whether the process that had `identity` is still running: a process with
// that pid exists, is not a zombie, and started at that time.
bool IsAlive(uint32_t pid, uint64_t start_time);

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_INTERNAL_PROCESS_IDENTITY_H_
