// The figures pool_stats() shows after pid and starts, as
// connthrottle/executor/shared_pool_stats.def declares them: the pool's own
// counters and the communicator's figures, in the order of pool_stats()'s
// columns. The communicator publishes them in shared memory in this order.
// Plain C++: no PostgreSQL header.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_STATS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_STATS_H_

#include <cstdint>

namespace connthrottle::pg {

// One figure of pool_stats(): PoolStat::tasks_run and so on.
enum class PoolStat : int {
#define CONNTHROTTLE_POOL_STAT(name) name,
#define CONNTHROTTLE_COMMUNICATOR_STAT(name) name,
#include "connthrottle/executor/shared_pool_stats.def"
  kCount  // not a figure: how many there are
};
inline constexpr int kPoolStatCount = static_cast<int>(PoolStat::kCount);

// A value for every figure, in column order.
struct PoolStatValues {
  int64_t values[kPoolStatCount] = {};

  int64_t& operator[](PoolStat stat) { return values[static_cast<int>(stat)]; }
  int64_t operator[](PoolStat stat) const { return values[static_cast<int>(stat)]; }
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_STATS_H_
