// lease_limit.h — a node's limit with its lease applied (issue 28): the
// smaller of what max_shared_pool_size allows (Limit::ForNode) and what the
// worker has leased this coordinator (lease_board.h). The local node keeps
// its own limit: its connections are this server's backends.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LEASE_LIMIT_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LEASE_LIMIT_H_

#include <cstdint>
#include <string>

#include "connthrottle/limit.h"
#include "pg/bridge/lease_board.h"

namespace connthrottle::pg {

inline Limit WithLease(Limit limit, const std::string& host, int port, bool local) {
  if (local) return limit;
  const int lease = LeaseLimit(host.c_str(), port);
  if (lease < 0) return limit;
  return limit.CappedAt(static_cast<uint32_t>(lease));
}

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LEASE_LIMIT_H_
