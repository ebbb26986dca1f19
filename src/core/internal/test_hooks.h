// Test-only pause points in the shared-memory protocol. Internal.
//
// A deterministic test of a race needs to stop one thread at an exact step
// (say, between reading an entry's word and the compare-and-swap that relies
// on it) while another thread runs. The protocol code calls TestPoint("name")
// at such steps; a test installs a hook that blocks the calling thread there
// until the test lets it go. Without a hook, TestPoint is one relaxed load of
// a null pointer, and it is only ever called on slow paths.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_TEST_HOOKS_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_TEST_HOOKS_H_

#include <atomic>

namespace connthrottle::internal {

using TestHook = void (*)(const char* point);

// The installed hook, or null. Set it only while no table operation runs.
inline std::atomic<TestHook> test_hook{nullptr};

inline void TestPoint(const char* point) {
  if (TestHook hook = test_hook.load(std::memory_order_acquire)) hook(point);
}

}  // namespace connthrottle::internal

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_TEST_HOOKS_H_
