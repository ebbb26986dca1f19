#include "core/internal/futex.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace connthrottle::internal {
namespace {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Not FUTEX_PRIVATE_FLAG: the word may be shared with other processes.
uint32_t* Address(std::atomic<uint32_t>& word) { return reinterpret_cast<uint32_t*>(&word); }

}  // namespace

bool FutexWait(std::atomic<uint32_t>& word, uint32_t expected, absl::Duration timeout) {
  if (timeout < absl::ZeroDuration()) timeout = absl::ZeroDuration();
  timespec ts = absl::ToTimespec(timeout);
  // 0: woken by FutexWake (or, rarely, spuriously). Errors — EAGAIN (the
  // value had changed), EINTR, ETIMEDOUT — are not wake-ups.
  return syscall(SYS_futex, Address(word), FUTEX_WAIT, expected, &ts, nullptr, 0) == 0;
}

void FutexWake(std::atomic<uint32_t>& word, int count) {
  syscall(SYS_futex, Address(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

}  // namespace connthrottle::internal
