// backend_state.cc — the process's State: the table, this backend's Owner,
// and what it gives back at transaction end and exit.

#include "pg/bridge/internal/backend_state.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "pg/bridge/internal/execution_context.h"
#include "pg/bridge/internal/local_node.h"
#include "pg/bridge/internal/outcome.h"

namespace connthrottle::pg {

State& S() {
  static State* state = new State();
  return *state;
}

Outcome NotReady() {
  return Fail(kObjectNotInPrerequisiteState,
              "connthrottle: the shared counter table is not set up in this server",
              "connthrottle must be loaded through shared_preload_libraries.");
}

const char* Keep(std::string text) {
  State& s = S();
  s.strings.push_back(std::move(text));
  return s.strings.back().c_str();
}

void ForgetResults() {
  State& s = S();
  s.strings.clear();
  s.task_rows.clear();
  s.distribute_rows.clear();
}

void CopyHost(char (&out)[256], std::string_view host) {
  size_t n = std::min(host.size(), sizeof(out) - 1);
  std::memcpy(out, host.data(), n);
  out[n] = '\0';
}

absl::StatusOr<Owner*> ProcessOwner() {
  State& s = S();
  if (!s.table) return absl::FailedPreconditionError("the shared counter table is not set up");
  if (!s.owner) {
    absl::StatusOr<std::unique_ptr<Owner>> owner = s.table->RegisterOwner();
    if (!owner.ok()) return owner.status();
    s.owner = *std::move(owner);
    s.ledger = std::make_unique<ReservationLedger>(*s.owner);
  }
  return s.owner.get();
}

Outcome OpenNodeCall(const char* host, int port, uint32_t database, const Settings* settings,
                     int active_client_backends, NodeCall& call) {
  if (!TableReady()) return NotReady();
  absl::StatusOr<NodeKey> key = NodeKey::Create(host, port, database);
  if (!key.ok()) return FromStatus(key.status());
  absl::StatusOr<Owner*> owner = ProcessOwner();
  if (!owner.ok()) return FromStatus(owner.status(), kConfigurationLimitExceeded);
  if (settings != nullptr) {
    absl::StatusOr<Limit> limit = LimitFor(*key, *settings, active_client_backends);
    if (!limit.ok()) return FromStatus(limit.status());
    call.limit = *limit;
  }
  call.key = *std::move(key);
  call.owner = *owner;
  return Outcome{};
}

size_t RequiredBytes(uint32_t capacity, uint32_t max_owners) {
  try {
    absl::StatusOr<size_t> bytes = CounterTable::RequiredBytes({capacity, max_owners, false});
    return bytes.ok() ? *bytes : 0;
  } catch (...) {
    return 0;
  }
}

Outcome SetUpTable(void* region, size_t bytes, uint32_t capacity, uint32_t max_owners, bool found) {
  return Guard([&] {
    absl::StatusOr<CounterTable> table =
        found ? CounterTable::Attach(region, bytes)
              : CounterTable::Initialize(region, bytes, {capacity, max_owners, false});
    if (!table.ok()) return FromStatus(table.status());
    S().table.emplace(*table);
    return Outcome{};
  });
}

bool TableReady() { return S().table.has_value(); }

void WakeAllWaiters() {
  Guard([] {
    if (TableReady()) S().table->WakeAllWaiters();
    return Outcome{};
  });
}

void EndTransaction() {
  Guard([] {
    State& s = S();
    if (s.ledger) s.ledger->EndTransaction();
    s.copy.reset();  // an unfinished distribution is abandoned
    s.pool_copy.reset();
    ForgetResults();
    return Outcome{};
  });
}

void BackendExit() {
  Guard([] {
    State& s = S();
    s.copy.reset();
    s.pool_copy.reset();
    s.executor.reset();  // closes cached connections, giving back their slots
    s.held.clear();
    s.ledger.reset();  // gives back unused reservations
    s.owner.reset();   // gives back anything still recorded, and unregisters
    return Outcome{};
  });
}

}  // namespace connthrottle::pg
