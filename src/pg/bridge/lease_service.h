// lease_service.h — the coordinator's lease service (issue 28, step 7 of
// docs/budget.md): a thread of the communicator that holds a lease
// (executor/lease_holder.h) from every worker this coordinator is using,
// and publishes them on the lease board (lease_board.h), whose limits every
// acquire of a slot applies.
//
// A worker is used while its node has slots or waiters in the counter
// table, or tasks queued in the pool; its demand is the connections in use
// (not those idle in sessions' caches or in the pool), the waiters and the
// queued tasks, at most the node's limit under max_shared_pool_size, and
// the highest of the last half second to second counts (demand_window.h). A lease is given back
// after the node has been idle for `idle_release_ms`. When a node's limit rises, the table's
// waiters are woken to see it. worker_leases = off holds no lease and clears the board.
//
// Called by the communicator's main thread (noexcept, plain values; the
// thread runs with every signal blocked and calls no PostgreSQL function).

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_SERVICE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_SERVICE_H_

namespace connthrottle::pg {

enum class LeaseMode : int { kOff = 0, kAuto = 1, kOn = 2 };

struct LeaseServiceSettings {
  LeaseMode mode = LeaseMode::kAuto;
  int cap = 100;  // a node's limit under max_shared_pool_size (what a lease may reach)
  char database[64] = "postgres";  // connthrottle.lease_database
  char user[64] = "";              // connthrottle.lease_user ("" libpq's default)
  int idle_release_ms = 10000;
  int connect_timeout_ms = 5000;
};

void StartLeaseService(const LeaseServiceSettings& settings) noexcept;
void UpdateLeaseService(const LeaseServiceSettings& settings) noexcept;
// Gives every lease back (waiting at most a second in all) and stops.
void StopLeaseService() noexcept;

// The name of a lease state as lease_status() shows it (BoardLease::state:
// "probing", "leased", "verify", "lapsed", "unmanaged", "unknown").
const char* LeaseStateText(int state) noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_LEASE_SERVICE_H_
