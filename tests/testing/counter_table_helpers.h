// Helpers shared by the CounterTable unit tests (src/core/counter_table_*_test.cc):
// deadlines and polling options for waits, awaiting a condition without
// sleeping blindly, a status's message, what a key's entry shows, and the
// matchers the tests use.

#ifndef CONNTHROTTLE_TESTS_TESTING_COUNTER_TABLE_HELPERS_H_
#define CONNTHROTTLE_TESTS_TESTING_COUNTER_TABLE_HELPERS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/node_key.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace connthrottle::testing {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;

// Long enough that a test relying on a wake-up fails loudly rather than being
// rescued by a timeout; short enough to end a broken run.
inline absl::Time Deadline() { return absl::Now() + absl::Seconds(30); }

// Polling so rare that only a real wake-up can end a wait before its
// deadline: a lost wake-up fails the test with DeadlineExceeded.
inline AcquireOptions NoPolling() {
  AcquireOptions options;
  options.poll_interval = absl::Hours(1);
  return options;
}

inline std::string Message(const absl::Status& s) { return std::string(s.message()); }

// Waiters in wake-up tests sleep until this deadline unless woken.
inline absl::Time WaiterDeadline() { return absl::Now() + absl::Seconds(60); }

// Waits (without sleeping blindly) until `pred` holds; fails after `bound`.
// For wake-ups the bound is 10 s, well below WaiterDeadline(): a lost wake-up
// leaves the waiter asleep and fails the test instead of being rescued when
// the waiter's deadline passes (a waiter still takes a slot it finds free
// then). This bounds liveness, not speed; speed is in the benchmarks.
template <typename Pred>
void AwaitCondition(Pred pred, absl::Duration bound = absl::Seconds(30)) {
  absl::Time give_up = absl::Now() + bound;
  while (!pred()) {
    ASSERT_LT(absl::Now(), give_up) << "condition never became true (lost wake-up?)";
    std::this_thread::yield();
  }
}

inline std::optional<KeyStats> StatsOf(CounterTable& table, const NodeKey& key) {
  return table.Lookup(key);
}

inline uint32_t WaitersOf(CounterTable& table, const NodeKey& key) {
  std::optional<KeyStats> k = StatsOf(table, key);
  return k ? k->waiters : 0;
}

}  // namespace connthrottle::testing

#endif  // CONNTHROTTLE_TESTS_TESTING_COUNTER_TABLE_HELPERS_H_
