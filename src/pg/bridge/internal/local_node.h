// The bridge-only half of local_node.h: whether a key's node is this
// server, and so which limit applies to it (Limit::ForNode).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LOCAL_NODE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LOCAL_NODE_H_

#include "absl/status/statusor.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "pg/bridge/local_node.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// Whether `key`'s node is this server under `settings`; InvalidArgument
// when connthrottle.local_node is not '', 'none' or 'host:port'.
absl::StatusOr<bool> IsLocal(const NodeKey& key, const Settings& settings);
// The limit for `key`'s node under `settings`: the local node's when it is
// this server, with `active_client_backends` counted against it.
absl::StatusOr<Limit> LimitFor(const NodeKey& key, const Settings& settings,
                               int active_client_backends);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_LOCAL_NODE_H_
