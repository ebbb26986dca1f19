// Test helpers for talking to forked children: whole reads and writes on a
// pipe, a pipe that closes its ends, and waiting for a child's exit.
//
// WriteAll, ReadAll and WaitForExit make no gtest calls, so a forked child
// may use them; Pipe reports a failed pipe() to gtest and belongs to the
// parent.

#ifndef CONNTHROTTLE_TESTS_TESTING_CHILD_PROCESS_H_
#define CONNTHROTTLE_TESTS_TESTING_CHILD_PROCESS_H_

#include <sys/types.h>

#include <cstddef>

namespace connthrottle::testing {

// Writes exactly `size` bytes, retrying on EINTR; false on error.
bool WriteAll(int fd, const void* data, size_t size);
// Reads exactly `size` bytes, retrying on EINTR; false on end of file or error.
bool ReadAll(int fd, void* data, size_t size);

// Waits for `pid`: its exit code, or -signal when it was killed, or a value
// below -999 when waitpid failed or the status is neither.
int WaitForExit(pid_t pid);

// A pipe whose ends are closed on destruction (or earlier, one by one).
class Pipe {
 public:
  Pipe();
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe();

  void CloseRead();
  void CloseWrite();
  int read_fd() const { return fds_[0]; }
  int write_fd() const { return fds_[1]; }

 private:
  int fds_[2] = {-1, -1};
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_CHILD_PROCESS_H_
