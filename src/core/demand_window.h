// demand_window.h — the highest of a node's demand samples over the last
// half second to second (issue 28, docs/budget.md): what the lease service
// tells a lease holder, so that a pool between two tasks (its connections
// idle for a moment) does not give back a share it needs again at once,
// while a coordinator gone idle shows no demand within two buckets.
//
// Two buckets of `bucket_ns` each: Max() is the highest sample of the
// current bucket and of the one before it. A bucket starts at the first
// sample after the previous one ended; a sample two buckets or more after
// the current one began clears both.
// Not thread-safe; times are the caller's (any monotonic nanoseconds).

#ifndef CONNTHROTTLE_SRC_CORE_DEMAND_WINDOW_H_
#define CONNTHROTTLE_SRC_CORE_DEMAND_WINDOW_H_

#include <algorithm>
#include <cstdint>

namespace connthrottle {

class DemandWindow {
 public:
  explicit DemandWindow(int64_t bucket_ns) : bucket_(bucket_ns) {}

  void Add(int64_t now, int demand) {
    if (!started_ || now - start_ >= bucket_) {
      previous_ = started_ && now - start_ < 2 * bucket_ ? current_ : 0;
      current_ = 0;
      start_ = now;
      started_ = true;
    }
    current_ = std::max(current_, demand);
  }
  int Max() const { return std::max(current_, previous_); }

 private:
  int64_t bucket_;
  bool started_ = false;
  int64_t start_ = 0;
  int current_ = 0;
  int previous_ = 0;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_CORE_DEMAND_WINDOW_H_
