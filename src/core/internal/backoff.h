// Backoff for the table's spin-waits (entry lock, structure lock, owners in
// flight, judges of a record being registered into). Internal.
//
// Spins briefly, then yields the processor. Pause() returns true every so
// often once yielding, which is when a waiter asks whether the owner it
// waits for has died. One per wait, on the waiting thread's stack.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_BACKOFF_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_BACKOFF_H_

#include <sched.h>

#include <algorithm>
#include <cstdint>

namespace connthrottle::internal {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class Backoff {
 public:
  bool Pause() {
    if (spins_ < 32) {
      for (int i = 0; i < (1 << std::min(spins_ / 8, 3)); ++i) CpuRelax();
      ++spins_;
      return false;
    }
    sched_yield();
    return (++yields_ % 64) == 0;
  }

 private:
  int spins_ = 0;
  uint32_t yields_ = 0;
};

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_BACKOFF_H_
