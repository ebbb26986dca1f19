// lease_table.h — a worker's budget of coordinator connections and its
// leases of it to coordinators (issue 28, Part B; docs/budget.md, "The
// worker's accounting and the strict bound" and "The grant rule").
//
// A worker keeps one LeaseTable in shared memory: a record per coordinator
// incarnation that holds or held a lease (its grants and its admitted data
// backends), the backends admitted, and the unleased account (coordinator
// connections that name no lease: older coordinators, `worker_leases = off`,
// a coordinator whose lease ended).
//
// Promises, after every call:
//   I1  Σ_c res_c + res_u ≤ budget, where res_c = max(live_c, cap_c), cap_c
//       the largest grant of c that still counts, and res_u = max(live_u,
//       unleased_connections). Admission raises no res, a grant is sized to
//       keep it. With unleased_connections = -1 (unleased connections
//       within the global check only, the default while coordinators
//       without leases are the rule) res_u = live_u and an unleased
//       admission can break I1: then I3 alone bounds the worker, and a
//       leased coordinator may be refused within its lease.
//   I2  live ≤ res for every account, so the admitted backends (Σ live)
//       never exceed the budget: the worker's strict bound, whatever the
//       coordinators do and whatever their clocks say.
//   I3  (global check) Σ live ≤ budget holds on its own: Admit checks it too.
// Exception: a budget lowered at run time leaves what was admitted; nothing
// more is admitted or granted until the totals are below the new one.
//
// Not thread- or process-safe by itself: every call is made under one lock
// the caller holds (the extension's LWLock). Times are nanoseconds of a
// monotonic clock that runs through suspend (CLOCK_BOOTTIME), passed in by
// the caller; tests pass their own. Trivially copyable: it lives in memory
// the caller provides and may be mapped at different addresses (no pointers
// inside). Results are returned by value.

#ifndef CONNTHROTTLE_SRC_CORE_LEASE_TABLE_H_
#define CONNTHROTTLE_SRC_CORE_LEASE_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace connthrottle {

// Read from the worker's settings at each call (they may change at reload).
struct LeaseSettings {
  int budget = -1;                      // connthrottle.worker_budget; -1: off (still counted)
  int unleased_connections = -1;        // -1: unleased connections within the global check only
  int64_t duration_ns = 3'000'000'000;  // D, connthrottle.lease_duration
  int64_t notify_interval_ns = 100'000'000;  // R_min: a record is notified at most this often
};

// A coordinator incarnation as a connection names it
// (`connthrottle.coordinator=<id>/<incarnation>`); an empty id is unleased.
struct CoordinatorRef {
  std::string_view id;
  uint64_t incarnation = 0;
};

// Parses a connection's connthrottle.coordinator value: "<id>/<incarnation>"
// (incarnation in decimal, id 1..kMaxCoordinatorId bytes, no '/'), or any
// other value ("on") for an unleased coordinator connection.
CoordinatorRef ParseCoordinatorRef(std::string_view value);

inline constexpr size_t kMaxCoordinatorId = 63;

// The clock of every lease, on both sides: CLOCK_BOOTTIME in nanoseconds
// (not moved by setting the wall clock, running through suspend).
int64_t BootClockNanos();

// A coordinator id travels in libpq's `options` (`-c
// connthrottle.coordinator=<id>/<incarnation>`), which splits at spaces and
// reads backslashes: 1..kMaxCoordinatorId printable ASCII bytes other than
// space, '/' and '\'.
bool ValidCoordinatorId(std::string_view id);

struct LeaseRequest {
  CoordinatorRef coordinator;  // id not empty, incarnation not 0
  uint64_t instance_seen = 0;  // the worker instance of the last reply; 0 at first
  uint64_t seq = 0;            // k; each request's larger than the last one's
  uint64_t acked = 0;          // seq of the last reply the coordinator read; 0: none
  int open = 0;                // the coordinator's connections to this worker
  int demand = 0;              // connections it could use now (capped by cap)
  int cap = 0;                 // its max_shared_pool_size for this worker (>= 1)
  bool release = false;        // gives every grant back (clean shutdown)
};

struct LeaseReply {
  uint64_t instance = 0;    // this worker instance (a new one after a restart)
  uint64_t seq = 0;         // the request's
  int grant = 0;            // g_k: connections the coordinator may hold
  int64_t duration_ns = 0;  // D: the grant ends D after the request arrived
  bool others_want_more = false;
  bool budget_off = false;          // no budget: the coordinator uses its own limit
  std::vector<std::string> notify;  // ids to ask for an early renewal
};

// Where an admitted backend is counted; given back to Gone.
struct AdmissionTicket {
  int32_t backend = -1;  // index in the backend array
};

// One coordinator incarnation as leases() shows it.
struct LeaseRow {
  std::string id;
  uint64_t incarnation = 0;
  int held = 0;     // the grant the coordinator acknowledged, 0 once ended
  int pending = 0;  // the latest grant, not yet acknowledged, 0 once ended
  int live = 0;     // data backends admitted and not gone
  int demand = 0;
  int cap = 0;
  int fair_share = 0;      // target at the last renewal
  int64_t ends_in_ns = 0;  // until its last grant ends (<= 0: ended)
  uint64_t renewals = 0;
  uint64_t refusals = 0;      // its data connections refused
  uint64_t ghosts_ended = 0;  // its backends ended after its grants ended
};

struct LeaseFigures {
  int live = 0;           // Σ live, every account
  int unleased_live = 0;  // live_u
  int reserved = 0;       // Σ res
  int coordinators = 0;   // records in use
  uint64_t admitted = 0;
  uint64_t refused_budget = 0;    // Σ live at the budget
  uint64_t refused_lease = 0;     // beyond the coordinator's lease
  uint64_t refused_unleased = 0;  // beyond unleased_connections
  uint64_t refused_full = 0;      // no backend or record place left
};

class LeaseTable {
 public:
  struct Options {
    int max_coordinators = 8;  // records: incarnations at once
    int max_backends = 100;    // admitted backends at once (the server's MaxBackends)
    uint64_t instance = 1;     // this worker instance, not 0
  };

  static size_t BytesFor(const Options& options);
  // Lays out an empty table in `memory` (BytesFor bytes, aligned for
  // uint64_t). The table is the memory: no destructor to call.
  static LeaseTable* Create(void* memory, const Options& options);

  // A lease request (lease_renew). Ends what has expired; the grant the
  // request acknowledges (`acked`) becomes the one the coordinator holds and
  // the one before it stops counting; grants min(target, what keeps I1):
  // max-min fair over the coordinators holding a grant, the rest shared as
  // headroom, never above `cap`. The new grant counts, beside the held
  // one, until it ends or a later request acknowledges another. A reply
  // that never arrived is replaced by the next (the coordinator ignores a
  // reply to any request but its last).
  // InvalidArgument for a malformed request, FailedPrecondition for a
  // request not newer than the last one, ResourceExhausted when every
  // record is taken.
  absl::StatusOr<LeaseReply> Renew(const LeaseRequest& request, const LeaseSettings& settings,
                                   int64_t now);

  // Admits a data backend of `coordinator`, or refuses: ResourceExhausted
  // with a message that says which bound (the budget, the coordinator's
  // lease, unleased_connections). A coordinator with a grant that counts is
  // admitted while live_c < cap_c and Σ live < budget; any other (unleased)
  // while Σ live < budget and live_u < unleased_connections (when not -1).
  absl::StatusOr<AdmissionTicket> Admit(CoordinatorRef coordinator, int32_t pid,
                                        const LeaseSettings& settings, int64_t now);
  // The admitted backend is gone (its exit, after it left
  // pg_stat_activity). Idempotent for one ticket.
  void Gone(AdmissionTicket ticket);

  // Ends grants whose time is up, frees records with nothing left, and
  // returns the pids of backends of records whose every grant has ended
  // (ghosts of a coordinator dead, cut off or paused past its deadline),
  // each once: the caller ends them.
  std::vector<int32_t> Expire(int64_t now);
  // When the next grant ends (INT64_MAX: none).
  int64_t NextExpiry() const;

  std::vector<LeaseRow> Rows(int64_t now) const;
  LeaseFigures Figures() const;
  uint64_t instance() const { return instance_; }
  // Checks I1 (against `settings`' budget when it has not been lowered
  // below what is held), I2 and the live counts against the backend array.
  absl::Status Audit(const LeaseSettings& settings) const;

 private:
  struct Record;
  struct Backend;
  LeaseTable() = default;
  Record* records();
  const Record* records() const;
  Backend* backends();
  const Backend* backends() const;
  int FindRecord(CoordinatorRef coordinator) const;
  int Reserved(const Record& r) const;
  int UnleasedReserved(const LeaseSettings& settings) const;
  int ReservedExcept(int skip, const LeaseSettings& settings) const;
  void ExpireRecord(Record& r, int64_t now);
  // Ends grants whose time is up and frees records with nothing left.
  void EndGrants(int64_t now);
  // Frees record `index`; its live backends count as unleased from now on
  // (a release, or the budget turned off: the coordinator keeps using or
  // closes them; they are no ghosts).
  void Forget(int index);

  int max_coordinators_ = 0;
  int max_backends_ = 0;
  uint64_t instance_ = 0;
  int live_ = 0;
  int unleased_live_ = 0;
  uint64_t admitted_ = 0;
  uint64_t refused_budget_ = 0;
  uint64_t refused_lease_ = 0;
  uint64_t refused_unleased_ = 0;
  uint64_t refused_full_ = 0;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_CORE_LEASE_TABLE_H_
