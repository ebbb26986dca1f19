#include "internal/process_identity.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
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
// ')'. Field 3 is the state, field 22 the start time. Only ENOENT/ESRCH mean
// the process is gone; any other failure (EMFILE, EACCES under hidepid, ...)
// is kUnknown, never a death.
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
  StatResult stat = ReadStat(pid);
  if (stat.stat != Stat::kRunning) stat = ReadStat(pid);  // one retry (e.g. EMFILE)
  // A start time of 0 means "unknown": liveness is then judged by pid alone.
  return {static_cast<uint32_t>(pid), stat.stat == Stat::kRunning ? stat.start_time : 0};
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
    case Stat::kGone:
      return false;
    case Stat::kRunning:
      return start_time == 0 || (stat.start_time & kMask) == (start_time & kMask);
    case Stat::kZombie:
      return OtherThreadsRun(p) &&
             (start_time == 0 || (stat.start_time & kMask) == (start_time & kMask));
    case Stat::kUnknown:
      break;
  }
  // /proc could not tell: kill(pid, 0) can only prove that no such pid exists.
  return !(kill(p, 0) != 0 && errno == ESRCH);
}

}  // namespace connthrottle::internal
