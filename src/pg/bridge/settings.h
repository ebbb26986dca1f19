// The configuration a call into the bridge applies: the connthrottle.*
// GUC values, read by the glue (guc.h: CurrentSettings,
// CurrentExecutorSettings) and passed by value to every call, so that a
// reload applies at the next decision. Plain structs; no PostgreSQL or
// Abseil header (outcome.h says why).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_SETTINGS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_SETTINGS_H_

namespace connthrottle::pg {

enum class FullTable : int { kAdmitUncounted = 0, kRefuse = 1 };

// The configuration one call applies: GUC values read by the glue.
struct Settings {
  int max_shared_pool_size = 0;
  int max_shared_pool_size_per_database = -1;  // -1: off
  int local_shared_pool_size = 0;
  int max_connections = 100;  // the server's max_connections
  FullTable full_table = FullTable::kAdmitUncounted;
  int connection_wait_timeout_ms = 60000;  // -1: no limit
  int server_port = 5432;                  // PostPortNumber
  const char* local_node = "";             // "" detect, "none", or "host:port"
};

struct ExecutorSettings {
  int max_pool_size = 16;                  // connthrottle.max_adaptive_executor_pool_size
  int max_cached_per_node = 1;             // connthrottle.max_cached_conns_per_worker
  int max_cached_lifetime_ms = 600000;     // connthrottle.max_cached_connection_lifetime
  int node_connection_timeout_ms = 30000;  // connthrottle.node_connection_timeout
  int slow_start_interval_ms = 10;         // connthrottle.executor_slow_start_interval
  const char* node_conninfo = "";          // connthrottle.node_conninfo (checked keywords)
  const char* client_encoding = "";        // the coordinator database's encoding
  const char* database = "";               // libpq dbname of worker connections
  const char* user = "";                   // libpq user of worker connections
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_SETTINGS_H_
