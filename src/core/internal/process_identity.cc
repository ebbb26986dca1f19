#include "core/internal/process_identity.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace connthrottle::internal {
namespace {

enum class Stat { kRunning, kZombie, kGone, kUnknown };

struct StatResult {
  Stat stat = Stat::kUnknown;
  uint64_t start_time = 0;
};

// Reads /proc/<pid>/stat. The second field (comm) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last
// ')'. Field 3 is the state, field 22 the start time. ENOENT/ESRCH give
// kGone, which the caller must confirm (hidepid=2 hides other users'
// processes the same way); any other failure (EMFILE, EACCES, ...) is
// kUnknown.
StatResult ReadStat(pid_t pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {errno == ENOENT || errno == ESRCH ? Stat::kGone : Stat::kUnknown, 0};
  char buf[1024];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf) - 1);
  } while (n < 0 && errno == EINTR);
  const int read_errno = errno;
  close(fd);
  if (n < 0) return {read_errno == ESRCH ? Stat::kGone : Stat::kUnknown, 0};
  if (n == 0) return {Stat::kGone, 0};
  absl::string_view stat(buf, static_cast<size_t>(n));
  size_t close_paren = stat.rfind(')');
  if (close_paren == absl::string_view::npos) return {};
  StatResult result;
  int field = 2;  // the ')' ends field 2
  for (absl::string_view token :
       absl::StrSplit(stat.substr(close_paren + 1), ' ', absl::SkipEmpty())) {
    ++field;
    if (field == 3) result.stat = (token == "Z" || token == "X") ? Stat::kZombie : Stat::kRunning;
    if (field == 22) {
      if (!absl::SimpleAtoi(token, &result.start_time)) return {};
      return result;
    }
  }
  return {};
}

// A thread-group leader that exited shows as a zombie while the process's
// other threads still run; the process is dead only when no thread is left
// but the leader.
bool OtherThreadsRun(pid_t pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/task", static_cast<int>(pid));
  DIR* dir = opendir(path);
  if (dir == nullptr) return errno != ENOENT && errno != ESRCH;  // unknown: assume alive
  int tasks = 0;
  while (dirent* d = readdir(dir)) {
    if (d->d_name[0] != '.') ++tasks;
  }
  closedir(dir);
  return tasks > 1;
}

}  // namespace

ProcessIdentity SelfIdentity() {
  pid_t pid = getpid();
  // We are running, whatever the state says: a process whose main thread
  // has exited shows state Z while its other threads (the caller) run.
  auto known = [](const StatResult& s) {
    return s.stat == Stat::kRunning || s.stat == Stat::kZombie;
  };
  StatResult stat = ReadStat(pid);
  if (!known(stat)) stat = ReadStat(pid);  // one retry (e.g. EMFILE)
  return {static_cast<uint32_t>(pid), known(stat) ? stat.start_time : 0};
}

uint64_t PidNamespace() {
  struct stat st;
  if (stat("/proc/self/ns/pid", &st) != 0) return 0;
  return st.st_ino;
}

absl::StatusOr<ProcessIdentity> JudgeableSelfIdentity(uint64_t table_namespace) {
  const uint64_t pid_namespace = PidNamespace();
  if (pid_namespace == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read /proc/self/ns/pid (", strerror(errno),
                     "): dead owners are found by their pid, so every owner must be in the "
                     "table's PID namespace, and this process cannot tell which it is in"));
  }
  if (pid_namespace != table_namespace) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this process is in PID namespace pid:[", pid_namespace, "], the table's owners in pid:[",
        table_namespace,
        "]: dead owners are found by their pid, and a pid names another process (or none) in "
        "another namespace; share a table across PID namespaces only without "
        "reclaim_dead_owners"));
  }
  // /proc must be of our namespace: /proc/self then names our own pid.
  const pid_t pid = getpid();
  char link[32] = {};
  const ssize_t n = readlink("/proc/self", link, sizeof(link) - 1);
  int64_t shown = 0;
  if (n <= 0 || !absl::SimpleAtoi(absl::string_view(link, static_cast<size_t>(n)), &shown) ||
      shown != pid) {
    return absl::FailedPreconditionError(absl::StrCat(
        "/proc does not show this process as pid ", pid,
        " (it is missing or mounted from another PID namespace): the liveness of owners cannot "
        "be checked, which reclaim_dead_owners needs"));
  }
  ProcessIdentity self = SelfIdentity();
  if (self.start_time == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read this process's start time from /proc/", pid,
        "/stat: without it a dead owner whose pid was reused would look alive for ever"));
  }
  return self;
}

std::optional<uint64_t> StartTimeOf(pid_t pid) {
  StatResult stat = ReadStat(pid);
  if (stat.stat != Stat::kRunning) return std::nullopt;
  return stat.start_time;
}

bool IsAlive(uint32_t pid, uint64_t start_time) {
  constexpr uint64_t kMask = 0xffffffffffULL;  // start times are stored in 40 bits
  const pid_t p = static_cast<pid_t>(pid);
  StatResult stat = ReadStat(p);
  switch (stat.stat) {
    case Stat::kRunning:
      return start_time == 0 || (stat.start_time & kMask) == (start_time & kMask);
    case Stat::kZombie:
      return OtherThreadsRun(p) &&
             (start_time == 0 || (stat.start_time & kMask) == (start_time & kMask));
    case Stat::kGone:     // or hidden from us (hidepid)
    case Stat::kUnknown:  // /proc could not tell
      break;
  }
  // Only kill(pid, 0) failing with ESRCH proves that no process has the pid.
  // A pid that exists but /proc will not show us is taken as the owner's:
  // whether it was reused cannot be told, and a guess must never reclaim.
  return !(kill(p, 0) != 0 && errno == ESRCH);
}

}  // namespace connthrottle::internal
