// The bridge-only half of backend_state.h: the process's State — the table,
// this backend's Owner, the slots it holds through SQL, its reservation
// ledger, its executor and the rows of the last call — and the opening
// every call about one node's slot shares.
//
// The State is allocated once and never destroyed by a static destructor:
// BackendExit() gives everything back while shared memory is still attached.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_BACKEND_STATE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_BACKEND_STATE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "connthrottle/counter_table.h"
#include "connthrottle/executor/copy_stream.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/limit.h"
#include "connthrottle/node_key.h"
#include "connthrottle/owner.h"
#include "connthrottle/reservation_ledger.h"
#include "connthrottle/slot.h"
#include "pg/bridge/backend_state.h"
#include "pg/bridge/distribute.h"
#include "pg/bridge/pool_copy_channel.h"
#include "pg/bridge/process_owner.h"
#include "pg/bridge/settings.h"
#include "pg/bridge/table_stats.h"
#include "pg/bridge/tasks.h"

namespace connthrottle::pg {

class PgExecutionContext;  // internal/execution_context.h

// A slot taken through SQL, with the key it was taken for.
struct Held {
  NodeKey key;
  Slot slot;
};

struct State {
  std::optional<CounterTable> table;          // set in the postmaster, inherited by fork
  std::unique_ptr<Owner> owner;               // ProcessOwner()
  std::vector<Held> held;                     // slots taken through SQL, oldest first
  std::unique_ptr<ReservationLedger> ledger;  // made with the owner
  std::unique_ptr<PgExecutionContext> context;
  std::unique_ptr<AdaptiveExecutor> executor;  // its cached connections hold slots
  std::unique_ptr<CopyStream> copy;            // the open distribution, if any (direct)
  std::unique_ptr<PoolCopyChannel> pool_copy;  // the open distribution, if any (shared pool)
  // Strings behind the rows handed to the glue, valid until the next call.
  std::deque<std::string> strings;
  std::vector<TaskRow> task_rows;
  std::vector<DistributeRow> distribute_rows;
  std::vector<HolderRow> holder_rows;
};

// This process's State.
State& S();

// The Outcome of a call that needs the table in a process without it.
Outcome NotReady();

// Keeps `text` until ForgetResults() and returns it as a C string.
const char* Keep(std::string text);
// Forgets the strings and rows handed to the glue by the last call.
void ForgetResults();

// Copies `host` into a row's host buffer, cut to fit.
void CopyHost(char (&out)[256], std::string_view host);

// What a call about one node's slot starts from, once checked.
struct NodeCall {
  std::optional<NodeKey> key;
  Owner* owner = nullptr;
  Limit limit = Limit::AtMost(0);  // set when settings were given
};
// The opening of every call that takes a slot for (host, port, database):
// the table set up (NotReady), a valid key, this backend registered as an
// owner (53400 when it cannot be), and, when `settings` is given, the
// node's limit under them (22023 for a bad connthrottle.local_node).
Outcome OpenNodeCall(const char* host, int port, uint32_t database, const Settings* settings,
                     int active_client_backends, NodeCall& call);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_BACKEND_STATE_H_
