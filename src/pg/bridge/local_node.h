// Which worker node is this server: tasks for the local node may run
// in-process, and its slots have a limit of their own
// (local_shared_pool_size). connthrottle.local_node says which node it is:
// '' detects it (this server's port, on a host that resolves to this
// machine), 'none' makes no node local, 'host:port' names it.
// Glue-facing (outcome.h); the bridge's own questions are in
// internal/local_node.h.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_LOCAL_NODE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_LOCAL_NODE_H_

#include "pg/bridge/outcome.h"
#include "pg/bridge/settings.h"

namespace connthrottle::pg {

// Whether (host, port) is this server under `settings`. Detecting it may
// resolve `host` (a DNS query); the answer is cached per host for the life
// of the backend. 22023 for an invalid node or connthrottle.local_node.
Outcome IsLocalNode(const char* host, int port, const Settings& settings, bool* local);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_LOCAL_NODE_H_
