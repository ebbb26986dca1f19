// Who a process is, robustly against pid reuse: its pid and its start time
// (clock ticks since boot, /proc/<pid>/stat field 22). Internal, Linux-only.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_PROCESS_IDENTITY_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_PROCESS_IDENTITY_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"

namespace connthrottle::internal {

struct ProcessIdentity {
  uint32_t pid = 0;
  uint64_t start_time = 0;  // 0: unknown
};

// The calling process's identity (re-read after fork). start_time is 0 when
// /proc/self/stat could not be read.
ProcessIdentity SelfIdentity();

// The calling process's PID namespace: the inode of /proc/self/ns/pid, or 0
// when it cannot be read.
uint64_t PidNamespace();

// The calling process's identity when its peers can tell whether it is
// alive, i.e. when both hold: it is in PID namespace `table_namespace` (a
// pid names the same process for every owner), and /proc shows that
// namespace and this process's start time. Otherwise FailedPrecondition,
// saying which does not hold: an owner whose death could not be told from
// its life must not hold slots that only its death would give back.
absl::StatusOr<ProcessIdentity> JudgeableSelfIdentity(uint64_t table_namespace);

// The start time of `pid`, or nullopt when no such process exists or it is a
// zombie (it has exited and holds nothing any more).
std::optional<uint64_t> StartTimeOf(pid_t pid);

// Whether the process that had `identity` may still be running, judged in
// the caller's PID namespace. False only when its death is certain: no
// process has that pid (/proc has no entry and kill(pid, 0) fails with
// ESRCH), or the process with that pid started at another time, or it is a
// zombie with no other thread. A process /proc hides (hidepid) or cannot
// show is alive unless kill(pid, 0) proves the pid unused.
bool IsAlive(uint32_t pid, uint64_t start_time);

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_PROCESS_IDENTITY_H_
