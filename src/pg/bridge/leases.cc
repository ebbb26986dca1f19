// leases.cc — the worker's lease table in shared memory: see leases.h.

#include "pg/bridge/leases.h"

#include <sched.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <new>

#include "core/lease_table.h"

namespace connthrottle::pg {
namespace {

struct alignas(64) Shared {
  std::atomic<uint32_t> lock{0};
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);

Shared* shared = nullptr;
LeaseTable* table = nullptr;
AdmissionTicket ticket;  // this process's admitted connection
bool admitted_here = false;

class TableLock {
 public:
  TableLock() {
    for (int spins = 0; shared->lock.exchange(1, std::memory_order_acquire) != 0; ++spins) {
      while (shared->lock.load(std::memory_order_relaxed) != 0) {
        if (++spins % 100 == 0) sched_yield();
      }
    }
  }
  ~TableLock() { shared->lock.store(0, std::memory_order_release); }
  TableLock(const TableLock&) = delete;
  TableLock& operator=(const TableLock&) = delete;
};

LeaseSettings Settings(const LeaseConfig& c) {
  LeaseSettings s;
  s.budget = c.budget;
  s.unleased_connections = c.unleased_connections;
  s.duration_ns = static_cast<int64_t>(c.lease_duration_ms) * 1'000'000;
  return s;
}

void Copy(std::string_view text, char* out, size_t size) {
  const size_t n = std::min(text.size(), size - 1);
  memcpy(out, text.data(), n);
  out[n] = '\0';
}

}  // namespace

size_t LeaseShmemBytes(LeaseLayout layout) noexcept {
  return sizeof(Shared) + LeaseTable::BytesFor({layout.max_coordinators, layout.max_backends, 1});
}

void LeaseShmemAttach(void* memory, LeaseLayout layout, uint64_t instance, bool found) noexcept {
  shared = static_cast<Shared*>(memory);
  void* table_memory = static_cast<char*>(memory) + sizeof(Shared);
  if (found) {
    table = static_cast<LeaseTable*>(table_memory);
    return;
  }
  new (shared) Shared();
  table =
      LeaseTable::Create(table_memory, {layout.max_coordinators, layout.max_backends, instance});
}

int64_t LeaseClockNow() noexcept { return BootClockNanos(); }

namespace {

bool AdmitBody(const char* coordinator, int32_t pid, const LeaseConfig& config, char* message,
               size_t message_size, int* live) {
  if (table == nullptr) return true;
  const CoordinatorRef ref = ParseCoordinatorRef(coordinator);
  TableLock lock;
  absl::StatusOr<AdmissionTicket> admitted =
      table->Admit(ref, pid, Settings(config), LeaseClockNow());
  if (admitted.ok()) {
    ticket = *admitted;
    admitted_here = true;
    return true;
  }
  const absl::string_view text = admitted.status().message();
  Copy(std::string_view(text.data(), text.size()), message, message_size);
  *live = table->Figures().live;
  return false;
}

}  // namespace

// The table's calls allocate (refusal messages, grant vectors): out of
// memory refuses (admission) or fails the call, and never escapes.
bool AdmitConnection(const char* coordinator, int32_t pid, const LeaseConfig& config, char* message,
                     size_t message_size, int* live) noexcept {
  try {
    return AdmitBody(coordinator, pid, config, message, message_size, live);
  } catch (...) {
    Copy("connthrottle: out of memory while admitting a coordinator connection", message,
         message_size);
    *live = 0;
    return false;
  }
}

void ConnectionGone() noexcept {
  if (!admitted_here || table == nullptr) return;
  admitted_here = false;
  TableLock lock;
  table->Gone(ticket);
}

namespace {

RenewResult RenewBody(const RenewArgs& args, const LeaseConfig& config) {
  RenewResult out{};
  if (table == nullptr) {
    Copy("connthrottle is not preloaded on this worker", out.message, sizeof(out.message));
    return out;
  }
  LeaseRequest request;
  request.coordinator = {args.id, args.incarnation};
  request.instance_seen = args.instance_seen;
  request.seq = args.seq;
  request.acked = args.acked;
  request.open = args.open;
  request.demand = args.demand;
  request.cap = args.cap;
  request.release = args.release;
  TableLock lock;
  absl::StatusOr<LeaseReply> reply = table->Renew(request, Settings(config), LeaseClockNow());
  if (!reply.ok()) {
    out.invalid = reply.status().code() == absl::StatusCode::kInvalidArgument;
    out.stale = reply.status().code() == absl::StatusCode::kFailedPrecondition;
    const absl::string_view text = reply.status().message();
    Copy(std::string_view(text.data(), text.size()), out.message, sizeof(out.message));
    return out;
  }
  out.ok = true;
  out.instance = reply->instance;
  out.seq = reply->seq;
  out.grant = reply->grant;
  out.duration_ms = static_cast<int>(reply->duration_ns / 1'000'000);
  out.others_want_more = reply->others_want_more;
  out.budget_off = reply->budget_off;
  for (const std::string& id : reply->notify) {
    if (out.notify_count == 8) break;
    Copy(id, out.notify[out.notify_count++], sizeof(out.notify[0]));
  }
  return out;
}

}  // namespace

RenewResult RenewLease(const RenewArgs& args, const LeaseConfig& config) noexcept {
  try {
    return RenewBody(args, config);
  } catch (...) {
    RenewResult out{};
    Copy("out of memory while renewing a lease", out.message, sizeof(out.message));
    return out;
  }
}

int64_t EndExpiredLeases() noexcept {
  if (table == nullptr) return INT64_MAX;
  TableLock lock;
  // Signalled under the lock: a ghost's place is freed only by its own exit
  // callback, which takes the lock, so each pid is still that backend's.
  try {
    for (int32_t pid : table->Expire(LeaseClockNow())) kill(pid, SIGTERM);
  } catch (...) {  // out of memory: the next tick tries again
  }
  return table->NextExpiry();
}

LeaseFiguresPlain ReadLeaseFigures() noexcept {
  LeaseFiguresPlain f{};
  if (table == nullptr) return f;
  LeaseFigures t;
  {
    TableLock lock;
    t = table->Figures();
    f.instance = table->instance();
  }
  f.connections = static_cast<uint32_t>(t.live);
  f.unleased = static_cast<uint32_t>(t.unleased_live);
  f.reserved = static_cast<uint32_t>(t.reserved);
  f.coordinators = static_cast<uint32_t>(t.coordinators);
  f.admitted = t.admitted;
  f.refused = t.refused_budget + t.refused_lease + t.refused_unleased + t.refused_full;
  f.refused_lease = t.refused_lease;
  f.refused_unleased = t.refused_unleased;
  return f;
}

int ListLeases(LeaseRowPlain* rows, int max) noexcept {
  if (table == nullptr) return 0;
  std::vector<LeaseRow> all;
  try {
    TableLock lock;
    all = table->Rows(LeaseClockNow());
  } catch (...) {
    return 0;
  }
  const int n = static_cast<int>(all.size());
  for (int i = 0; i < n && i < max; ++i) {
    const LeaseRow& r = all[i];
    LeaseRowPlain& p = rows[i];
    Copy(r.id, p.id, sizeof(p.id));
    p.incarnation = r.incarnation;
    p.held = r.held;
    p.pending = r.pending;
    p.live = r.live;
    p.demand = r.demand;
    p.cap = r.cap;
    p.fair_share = r.fair_share;
    p.ends_in_ms = r.ends_in_ns / 1'000'000;
    p.renewals = r.renewals;
    p.refusals = r.refusals;
    p.ghosts_ended = r.ghosts_ended;
  }
  return n;
}

}  // namespace connthrottle::pg
