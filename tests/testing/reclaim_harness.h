// The harness of reclaim_test (tests/reclaim_*_test.cc): a standalone
// segment survives the death of its processes exactly. Forked processes
// attach a named segment, take slots of every kind, queue, reserve, register
// and adopt, and are SIGKILLed at chosen or random moments; live owners in
// the parent (and in the survivors) must give back exactly what the dead
// held — no more, no less — and never let a key exceed its limit.
//
// Children never use gtest: they report through pipes, exit codes and an
// anonymous MAP_SHARED account, and always leave through _exit.

#ifndef CONNTHROTTLE_TESTS_TESTING_RECLAIM_HARNESS_H_
#define CONNTHROTTLE_TESTS_TESTING_RECLAIM_HARNESS_H_

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"

namespace connthrottle::testing {

// ---- Small POSIX helpers (usable in forked children: no gtest calls) --------

inline bool WriteU32(int fd, uint32_t v) { return WriteAll(fd, &v, sizeof(v)); }
inline bool ReadU32(int fd, uint32_t* v) { return ReadAll(fd, v, sizeof(*v)); }

// Blocks until a byte or end of file arrives on `fd`.
inline void BlockOn(int fd) {
  char c;
  ReadAll(fd, &c, 1);
}

// Calls `condition` until it holds or `timeout` passes; the last answer.
template <typename F>
bool PollUntil(F condition, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() >= give_up) return condition();
    std::this_thread::yield();
  }
  return true;
}

inline NodeKey Key(const std::string& host) { return *NodeKey::Create(host, 5432, 1); }

// The KeyStats of `host`, or all zeros when the key is not busy.
inline KeyStats StatsOf(const CounterTable& table, const std::string& host) {
  for (KeyStats& k : table.Snapshot()) {
    if (k.host == host) return k;
  }
  return KeyStats{};
}

// Child exit codes.
inline constexpr int kChildOk = 0;
inline constexpr int kChildAttachFailed = 2;
inline constexpr int kChildRegisterFailed = 3;
inline constexpr int kChildAcquireFailed = 4;
inline constexpr int kChildPipeFailed = 5;
inline constexpr int kChildWaitReturned = 6;

// ---- Fixture --------------------------------------------------------------

// A segment named for this process and test, removed at the end; children
// forked through Fork() that are still running at the end are killed.
class SegmentHarness {
 protected:
  void Open(const TableOptions& options) {
    std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : test) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    name_ = absl::StrCat("connthrottle-reclaim-", getpid(), "-", test);
    (void)SharedSegment::Remove(name_);
    absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
        SharedSegment::CreateOrAttach(name_, options);
    ASSERT_TRUE(segment.ok()) << segment.status();
    segment_ = std::move(*segment);
  }

  void Close() {
    for (pid_t pid : children_) {
      kill(pid, SIGKILL);
      WaitForExit(pid);
    }
    children_.clear();
    segment_.reset();
    if (!name_.empty()) (void)SharedSegment::Remove(name_);
  }

  CounterTable table() const { return segment_->table(); }

  std::unique_ptr<Owner> MustRegister() {
    absl::StatusOr<std::unique_ptr<Owner>> owner = table().RegisterOwner();
    EXPECT_TRUE(owner.ok()) << owner.status();
    return owner.ok() ? std::move(*owner) : nullptr;
  }

  // Forks; the child runs `body`, which must end in _exit.
  template <typename F>
  pid_t Fork(F body) {
    pid_t pid = fork();
    if (pid == 0) {
      body();
      _exit(120);  // not reached: bodies _exit themselves
    }
    if (pid > 0) children_.push_back(pid);
    return pid;
  }

  // SIGKILLs a child forked by Fork() and reaps it; its exit as WaitForExit.
  int KillAndReap(pid_t pid) {
    std::erase(children_, pid);
    if (kill(pid, SIGKILL) != 0) return -2000;
    return WaitForExit(pid);
  }

  int Reap(pid_t pid) {
    std::erase(children_, pid);
    return WaitForExit(pid);
  }

  std::string name_;
  std::unique_ptr<SharedSegment> segment_;
  std::vector<pid_t> children_;
};

class ReclaimTest : public ::testing::Test, protected SegmentHarness {
 protected:
  void TearDown() override { Close(); }
};

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_RECLAIM_HARNESS_H_
