// What the shared counter table shows (node_stats, holders, table_stats,
// audit): copies of its figures in plain rows, read without stopping
// anyone (each key's row is read consistently; rows may be from slightly
// different moments, audit is the exact check). Glue-facing (outcome.h);
// 55000 when the table is not set up.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_TABLE_STATS_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_TABLE_STATS_H_

#include <cstdint>

#include "pg/bridge/outcome.h"

namespace connthrottle::pg {

struct NodeRow {
  char host[256];
  int port;
  uint32_t connections, forced, reserved, waiters;
  uint64_t acquired, refused, waited, forced_total, wakeups;
  uint32_t cached;  // of connections: parked in sessions' caches
  int64_t wait_time_us;
  bool per_database;  // a database's counter on the node (database), not the node's
  uint32_t database;
};
// Copies up to `max` busy nodes into `out`.
Outcome NodeStats(NodeRow* out, int max, int* count);

struct HolderRow {
  int pid;
  char host[256];
  int port;
  uint32_t connections, forced, reserved;
  bool waiting;
  bool per_database;  // as in NodeRow
  uint32_t database;
};
// Who holds and who waits; *rows stay valid until the next call.
Outcome Holders(const HolderRow** rows, int* count);

struct TableRow {
  uint32_t capacity, entries_in_use, owners, max_owners;
  uint64_t uncounted_in_use, full_table_events, entries_created, entries_dropped;
  uint64_t acquired, refused, waited, forced_total;
  int64_t wait_time_us;
  uint64_t wakeups;
};
Outcome TableStatistics(TableRow* out);
// OK, or an error whose message lists every difference (Audit()).
Outcome Audit();
// Acquires that found the table full, since the server started (cheap);
// 0 without a table.
uint64_t FullTableEvents();
// Capacity of the table (the number of rows NodeStats may return); 0
// without a table.
uint32_t Capacity();

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_TABLE_STATS_H_
