// Futex wait and wake on a 32-bit word, shared between processes when the
// word lives in shared memory. Internal.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_FUTEX_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_FUTEX_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"

namespace connthrottle::internal {

// Sleeps while *word == expected, for at most `timeout` (clamped to >= 0).
// Returns on a wake-up, on a timeout, on a signal, or at once when *word no
// longer holds `expected`; callers re-check their condition in every case.
// Returns true when a FutexWake woke the caller (a wake-up meant for some
// sleeper on the word: a caller that got one must act on it), false
// otherwise.
bool FutexWait(std::atomic<uint32_t>& word, uint32_t expected, absl::Duration timeout);

// Wakes up to `count` sleepers on `word`.
void FutexWake(std::atomic<uint32_t>& word, int count);

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_FUTEX_H_
