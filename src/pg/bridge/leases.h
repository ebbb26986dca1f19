// leases.h — the worker's lease table in the server's shared memory
// (issue 28, docs/budget.md): the bridge between admission.cc /
// functions_leases.cc / lease_manager.cc and core/lease_table.h.
//
// Every function is noexcept and takes and returns plain values (outcome.h's
// boundary): the glue raises errors after they return. Process-safety: the
// table is kept under one spinlock in shared memory, held for a scan of at
// most max_coordinators + max_backends entries; it never waits on anything
// else, so an exit callback may take it after ProcKill (no PGPROC needed).
// A process killed while holding it takes the server through a
// crash-restart, which lays the table out anew.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_LEASES_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_LEASES_H_

#include <cstddef>
#include <cstdint>

namespace connthrottle::pg {

struct LeaseLayout {
  int max_coordinators;
  int max_backends;
};

// The worker's settings, read by the glue at each call.
struct LeaseConfig {
  int budget;                // connthrottle.worker_budget, -1 off
  int unleased_connections;  // -1: within the budget only
  int lease_duration_ms;
};

size_t LeaseShmemBytes(LeaseLayout layout) noexcept;
// Lays the table out in `memory` (LeaseShmemBytes, 8-aligned) with
// `instance` (not 0), or attaches to it (`found`).
void LeaseShmemAttach(void* memory, LeaseLayout layout, uint64_t instance, bool found) noexcept;

// CLOCK_BOOTTIME in nanoseconds: the clock of every lease.
int64_t LeaseClockNow() noexcept;

// Admits the connection whose connthrottle.coordinator is `coordinator`
// (see core/lease_table.h's ParseCoordinatorRef) for process `pid`. On
// refusal returns false with the reason in `message` and the connections
// open in *live.
bool AdmitConnection(const char* coordinator, int32_t pid, const LeaseConfig& config, char* message,
                     size_t message_size, int* live) noexcept;
// This process's admitted connection is gone (its exit). Idempotent.
void ConnectionGone() noexcept;

struct RenewArgs {
  char id[64];
  uint64_t incarnation;
  uint64_t instance_seen, seq, acked;
  int open, demand, cap;
  bool release;
};
struct RenewResult {
  bool ok;
  bool invalid;  // a malformed request (22023)
  bool stale;    // not newer than the last (22023 too); otherwise 53300
  char message[256];
  uint64_t instance, seq;
  int grant;
  int duration_ms;
  bool others_want_more, budget_off;
  int notify_count;
  char notify[8][64];  // coordinator ids to ask for an early renewal
};
RenewResult RenewLease(const RenewArgs& args, const LeaseConfig& config) noexcept;

// The lease manager's step: ends grants whose time is up and sends SIGTERM
// to the ghosts it finds (each once). Returns when the next grant ends
// (LeaseClockNow's clock; INT64_MAX: none).
int64_t EndExpiredLeases() noexcept;

struct LeaseFiguresPlain {
  uint32_t connections;   // coordinator connections admitted and not gone
  uint32_t unleased;      // of them, those counted without a lease
  uint32_t reserved;      // Σ max(live, grant) over coordinators, and the unleased
  uint32_t coordinators;  // lease records in use
  uint64_t admitted, refused, refused_lease, refused_unleased;
  uint64_t instance;
};
LeaseFiguresPlain ReadLeaseFigures() noexcept;

struct LeaseRowPlain {
  char id[64];
  uint64_t incarnation;
  int held, pending, live, demand, cap, fair_share;
  int64_t ends_in_ms;
  uint64_t renewals, refusals, ghosts_ended;
};
// Copies at most `max` rows; returns how many there are.
int ListLeases(LeaseRowPlain* rows, int max) noexcept;

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_LEASES_H_
