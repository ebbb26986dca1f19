// Short names for the memory orders the core's lock-free code spells out at
// every atomic access, in namespace connthrottle itself so that the files
// need no using-declarations (the protocol blocks at the top of owner_ops.cc and
// reclaim.cc say which access needs which). Internal to src/core.

#ifndef CONNTHROTTLE_SRC_CORE_INTERNAL_MEMORY_ORDER_H_
#define CONNTHROTTLE_SRC_CORE_INTERNAL_MEMORY_ORDER_H_

#include <atomic>

namespace connthrottle {

inline constexpr auto kRelaxed = std::memory_order_relaxed;
inline constexpr auto kAcquire = std::memory_order_acquire;
inline constexpr auto kRelease = std::memory_order_release;
inline constexpr auto kAcqRel = std::memory_order_acq_rel;

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_CORE_INTERNAL_MEMORY_ORDER_H_
