#include "internal/process_identity.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace connthrottle::internal {
namespace {

// Reads /proc/<pid>/stat. The second field (comm) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last
// ')'. Field 3 is the state, field 22 the start time.
std::optional<uint64_t> ReadStartTime(pid_t pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf) - 1);
  } while (n < 0 && errno == EINTR);
  close(fd);
  if (n <= 0) return std::nullopt;
  absl::string_view stat(buf, static_cast<size_t>(n));
  size_t close_paren = stat.rfind(')');
  if (close_paren == absl::string_view::npos) return std::nullopt;
  absl::string_view rest = stat.substr(close_paren + 1);
  int field = 2;  // the ')' ends field 2
  for (absl::string_view token : absl::StrSplit(rest, ' ', absl::SkipEmpty())) {
    ++field;
    if (field == 3 && (token == "Z" || token == "X")) return std::nullopt;
    if (field == 22) {
      uint64_t start = 0;
      if (!absl::SimpleAtoi(token, &start)) return std::nullopt;
      return start;
    }
  }
  return std::nullopt;
}

}  // namespace

ProcessIdentity SelfIdentity() {
  pid_t pid = getpid();
  std::optional<uint64_t> start = ReadStartTime(pid);
  return {static_cast<uint32_t>(pid), start.value_or(0)};
}

std::optional<uint64_t> StartTimeOf(pid_t pid) { return ReadStartTime(pid); }

bool IsAlive(uint32_t pid, uint64_t start_time) {
  std::optional<uint64_t> start = ReadStartTime(static_cast<pid_t>(pid));
  // Start times are stored truncated to 40 bits (layout.h).
  return start.has_value() && (*start & 0xffffffffffULL) == (start_time & 0xffffffffffULL);
}

}  // namespace connthrottle::internal
