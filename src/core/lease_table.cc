// lease_table.cc — the worker's leases: see lease_table.h and
// docs/budget.md ("The worker's accounting and the strict bound").

#include "core/lease_table.h"

#include <time.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>
#include <numeric>
#include <type_traits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace connthrottle {

struct LeaseTable::Record {
  struct Grant {
    int value = 0;
    int64_t end = 0;   // the grant counts while now < end
    uint64_t seq = 0;  // 0: none
    bool Counts(int64_t now) const { return seq != 0 && now < end; }
  };
  uint64_t incarnation = 0;  // 0: free
  char id[kMaxCoordinatorId + 1] = {};
  uint64_t seq = 0;  // the last request's
  Grant held;        // acknowledged by the coordinator
  Grant pending;     // issued, not yet acknowledged
  int live = 0;
  int demand = 0;
  int cap = 0;
  int target = 0;
  int64_t notified_at = INT64_MIN;
  uint64_t renewals = 0;
  uint64_t refusals = 0;
  uint64_t ghosts_ended = 0;

  bool InUse() const { return incarnation != 0; }
  bool Leased() const { return held.seq != 0 || pending.seq != 0; }
  int Cap() const { return std::max(held.value, pending.value); }
  std::string_view Id() const { return id; }
};

struct LeaseTable::Backend {
  int32_t pid = 0;      // 0: free
  int32_t record = -1;  // -1: the unleased account
  uint64_t incarnation = 0;
  bool ended = false;  // returned by Expire as a ghost
};

static_assert(std::is_trivially_copyable_v<LeaseTable>);

int64_t BootClockNanos() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool ValidCoordinatorId(std::string_view id) {
  if (id.empty() || id.size() > kMaxCoordinatorId) return false;
  for (const char ch : id) {
    if (ch <= ' ' || ch >= 0x7f || ch == '/' || ch == '\\') return false;
  }
  return true;
}

CoordinatorRef ParseCoordinatorRef(std::string_view value) {
  const size_t slash = value.rfind('/');
  if (slash == std::string_view::npos || slash == 0 || slash > kMaxCoordinatorId) return {};
  uint64_t incarnation = 0;
  if (!absl::SimpleAtoi(absl::string_view(value.data() + slash + 1, value.size() - slash - 1),
                        &incarnation) ||
      incarnation == 0)
    return {};
  const std::string_view id = value.substr(0, slash);
  if (!ValidCoordinatorId(id)) return {};
  return {id, incarnation};
}

namespace {

// Debian's Abseil has its own string_view.
absl::string_view View(std::string_view s) { return absl::string_view(s.data(), s.size()); }

constexpr size_t Align(size_t n) { return (n + alignof(uint64_t) - 1) & ~(alignof(uint64_t) - 1); }

}  // namespace

size_t LeaseTable::BytesFor(const Options& options) {
  return Align(sizeof(LeaseTable)) + Align(sizeof(Record) * options.max_coordinators) +
         sizeof(Backend) * options.max_backends;
}

LeaseTable* LeaseTable::Create(void* memory, const Options& options) {
  auto* table = new (memory) LeaseTable();
  table->max_coordinators_ = options.max_coordinators;
  table->max_backends_ = options.max_backends;
  table->instance_ = options.instance;
  Record* records = table->records();
  for (int i = 0; i < options.max_coordinators; ++i) new (&records[i]) Record();
  Backend* backends = table->backends();
  for (int i = 0; i < options.max_backends; ++i) new (&backends[i]) Backend();
  return table;
}

LeaseTable::Record* LeaseTable::records() {
  return reinterpret_cast<Record*>(reinterpret_cast<char*>(this) + Align(sizeof(LeaseTable)));
}
const LeaseTable::Record* LeaseTable::records() const {
  return const_cast<LeaseTable*>(this)->records();
}
LeaseTable::Backend* LeaseTable::backends() {
  return reinterpret_cast<Backend*>(reinterpret_cast<char*>(records()) +
                                    Align(sizeof(Record) * max_coordinators_));
}
const LeaseTable::Backend* LeaseTable::backends() const {
  return const_cast<LeaseTable*>(this)->backends();
}

int LeaseTable::FindRecord(CoordinatorRef coordinator) const {
  if (coordinator.id.empty()) return -1;
  const Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (r[i].incarnation == coordinator.incarnation && r[i].Id() == coordinator.id) return i;
  }
  return -1;
}

int LeaseTable::Reserved(const Record& r) const { return std::max(r.live, r.Cap()); }

int LeaseTable::UnleasedReserved(const LeaseSettings& settings) const {
  return std::max(unleased_live_, settings.unleased_connections);
}

int LeaseTable::ReservedExcept(int skip, const LeaseSettings& settings) const {
  int sum = UnleasedReserved(settings);
  const Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (i != skip && r[i].InUse()) sum += Reserved(r[i]);
  }
  return sum;
}

void LeaseTable::ExpireRecord(Record& r, int64_t now) {
  if (r.held.seq != 0 && !r.held.Counts(now)) r.held = {};
  if (r.pending.seq != 0 && !r.pending.Counts(now)) r.pending = {};
}

absl::StatusOr<LeaseReply> LeaseTable::Renew(const LeaseRequest& request,
                                             const LeaseSettings& settings, int64_t now) {
  const CoordinatorRef& c = request.coordinator;
  if (!ValidCoordinatorId(c.id) || c.incarnation == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a lease request needs a coordinator id of 1 to ", kMaxCoordinatorId,
        " printable bytes without space, '/' or '\\', and an incarnation other than 0"));
  }
  if (request.seq == 0 || request.cap < 1 || request.demand < 0 || request.open < 0) {
    return absl::InvalidArgumentError(
        "a lease request needs seq >= 1, cap >= 1, demand >= 0 and open >= 0");
  }
  LeaseReply reply;
  reply.instance = instance_;
  reply.seq = request.seq;
  reply.duration_ns = settings.duration_ns;
  if (settings.budget < 0) {
    // No budget: nothing to lease; the coordinator keeps its own limit, and
    // what it opened under its lease is unleased from now on (not ghosts to
    // be ended when the grants run out).
    if (const int had = FindRecord(c); had >= 0) Forget(had);
    reply.budget_off = true;
    reply.grant = request.cap;
    return reply;
  }
  EndGrants(now);
  int me = FindRecord(c);
  Record* table = records();
  if (me < 0) {
    if (request.release) return reply;  // nothing held: nothing to give back
    for (int i = 0; i < max_coordinators_ && me < 0; ++i) {
      if (!table[i].InUse()) me = i;
    }
    if (me < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("every one of this worker's ", max_coordinators_,
                       " lease records is taken (connthrottle.max_coordinators)"));
    }
    Record& fresh = table[me];
    fresh = Record();
    fresh.incarnation = c.incarnation;
    std::memcpy(fresh.id, c.id.data(), c.id.size());
    fresh.id[c.id.size()] = '\0';
  }
  Record& r = table[me];
  if (request.seq <= r.seq) {
    return absl::FailedPreconditionError(absl::StrCat("lease request ", request.seq,
                                                      " of coordinator ", View(c.id),
                                                      " is not newer than ", r.seq));
  }
  r.seq = request.seq;
  ++r.renewals;
  // The coordinator has read the reply it acknowledges: that grant is the
  // one it holds, and the one it held before stops counting.
  if (r.pending.seq != 0 && request.acked >= r.pending.seq) {
    r.held = r.pending;
    r.pending = {};
  }
  r.cap = request.cap;
  r.demand = std::min(request.demand, request.cap);
  if (request.release) {
    // Given back: connections still open count as unleased until they
    // close (the coordinator is closing them, not to be ended as ghosts).
    Forget(me);
    reply.grant = 0;
    return reply;
  }

  // Max-min fair shares of P over the coordinators holding a grant and the
  // caller, each wanting at least one (a foothold); then the rest evenly.
  struct Want {
    int index;
    int demand;
    int cap;
  };
  std::vector<Want> wants;
  for (int i = 0; i < max_coordinators_; ++i) {
    if (table[i].InUse() && (i == me || table[i].Leased())) {
      wants.push_back({i, std::max(1, table[i].demand), table[i].cap});
    }
  }
  std::sort(wants.begin(), wants.end(),
            [](const Want& a, const Want& b) { return a.demand < b.demand; });
  const int pool = std::max(0, settings.budget - UnleasedReserved(settings));
  int left = pool;
  std::vector<int> fair(max_coordinators_, 0);
  for (size_t i = 0; i < wants.size(); ++i) {
    const int share = left / static_cast<int>(wants.size() - i);
    fair[wants[i].index] = std::min(wants[i].demand, share);
    left -= fair[wants[i].index];
  }
  const int headroom = wants.empty() ? 0 : left / static_cast<int>(wants.size());
  for (const Want& w : wants) {
    table[w.index].target = std::min(fair[w.index] + headroom, w.cap);
  }

  // What keeps I1: the others' reservations (and the unleased account's)
  // plus max(live_c, held, new grant) must fit in the budget.
  const int room = std::max(0, settings.budget - ReservedExcept(me, settings));
  const int grant = std::min(r.target, room);
  r.pending = {grant, now + settings.duration_ns, request.seq};
  reply.grant = grant;
  for (const Want& w : wants) {
    Record& o = table[w.index];
    if (w.index == me) continue;
    if (o.demand > o.Cap()) reply.others_want_more = true;
    // Those above their target make room for the caller when asked early.
    if (grant < r.target && o.Cap() > o.target &&
        (o.notified_at == INT64_MIN || now - o.notified_at >= settings.notify_interval_ns)) {
      o.notified_at = now;
      reply.notify.emplace_back(o.Id());
    }
  }
  return reply;
}

absl::StatusOr<AdmissionTicket> LeaseTable::Admit(CoordinatorRef coordinator, int32_t pid,
                                                  const LeaseSettings& settings, int64_t now) {
  int rec = FindRecord(coordinator);
  Record* r = nullptr;
  if (rec >= 0) {
    r = &records()[rec];
    ExpireRecord(*r, now);
    // A coordinator whose grants have all ended has no lease: it is counted
    // as unleased, and its ghosts are the manager's.
    if (!r->Leased() || settings.budget < 0) {
      r = nullptr;
      rec = -1;
    }
  }
  Backend* place = nullptr;
  Backend* b = backends();
  for (int i = 0; i < max_backends_ && place == nullptr; ++i) {
    if (b[i].pid == 0) place = &b[i];
  }
  if (place == nullptr) {
    ++refused_full_;
    return absl::ResourceExhaustedError(absl::StrCat("connthrottle: all ", max_backends_,
                                                     " admission places of this worker are taken"));
  }
  if (settings.budget >= 0) {
    if (r != nullptr && r->live >= r->Cap()) {
      ++refused_lease_;
      ++r->refusals;
      return absl::ResourceExhaustedError(absl::StrCat(
          "connthrottle: coordinator ", View(coordinator.id),
          " has no free slot in its lease from this worker (", r->live, " of ", r->Cap(), ")"));
    }
    if (live_ >= settings.budget) {
      ++refused_budget_;
      if (r != nullptr) ++r->refusals;
      return absl::ResourceExhaustedError(absl::StrCat("connthrottle: this worker's budget of ",
                                                       settings.budget,
                                                       " coordinator connections is in use"));
    }
    if (r == nullptr && settings.unleased_connections >= 0 &&
        unleased_live_ >= settings.unleased_connections) {
      ++refused_unleased_;
      return absl::ResourceExhaustedError(absl::StrCat(
          "connthrottle: this worker admits ", settings.unleased_connections,
          " coordinator connections without a lease (connthrottle.unleased_connections), and ",
          unleased_live_, " are open"));
    }
  }
  *place = {pid, rec, rec >= 0 ? r->incarnation : 0, false};
  ++live_;
  if (r != nullptr) {
    ++r->live;
  } else {
    ++unleased_live_;
  }
  ++admitted_;
  return AdmissionTicket{static_cast<int32_t>(place - b)};
}

void LeaseTable::Gone(AdmissionTicket ticket) {
  if (ticket.backend < 0 || ticket.backend >= max_backends_) return;
  Backend& b = backends()[ticket.backend];
  if (b.pid == 0) return;
  --live_;
  if (b.record >= 0) {
    Record& r = records()[b.record];
    --r.live;
    if (!r.Leased() && r.live == 0) r = Record();
  } else {
    --unleased_live_;
  }
  b = Backend();
}

void LeaseTable::Forget(int index) {
  Backend* b = backends();
  for (int j = 0; j < max_backends_; ++j) {
    if (b[j].pid != 0 && b[j].record == index) {
      b[j].record = -1;
      b[j].incarnation = 0;
      ++unleased_live_;
    }
  }
  records()[index] = Record();
}

void LeaseTable::EndGrants(int64_t now) {
  Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (!r[i].InUse()) continue;
    ExpireRecord(r[i], now);
    if (!r[i].Leased() && r[i].live == 0) r[i] = Record();
  }
}

std::vector<int32_t> LeaseTable::Expire(int64_t now) {
  EndGrants(now);
  std::vector<int32_t> ghosts;
  Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (!r[i].InUse() || r[i].Leased()) continue;
    // Every grant has ended: the coordinator stopped using this worker by
    // its deadline, so what is left of it are ghosts.
    Backend* b = backends();
    for (int j = 0; j < max_backends_; ++j) {
      if (b[j].pid != 0 && b[j].record == i && !b[j].ended) {
        b[j].ended = true;
        ++r[i].ghosts_ended;
        ghosts.push_back(b[j].pid);
      }
    }
  }
  return ghosts;
}

int64_t LeaseTable::NextExpiry() const {
  int64_t next = INT64_MAX;
  const Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (r[i].held.seq != 0) next = std::min(next, r[i].held.end);
    if (r[i].pending.seq != 0) next = std::min(next, r[i].pending.end);
  }
  return next;
}

std::vector<LeaseRow> LeaseTable::Rows(int64_t now) const {
  std::vector<LeaseRow> rows;
  const Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (!r[i].InUse()) continue;
    const Record& x = r[i];
    LeaseRow row;
    row.id = std::string(x.Id());
    row.incarnation = x.incarnation;
    row.held = x.held.Counts(now) ? x.held.value : 0;
    row.pending = x.pending.Counts(now) ? x.pending.value : 0;
    row.live = x.live;
    row.demand = x.demand;
    row.cap = x.cap;
    row.fair_share = x.target;
    const int64_t end = std::max(x.held.seq ? x.held.end : 0, x.pending.seq ? x.pending.end : 0);
    row.ends_in_ns = end == 0 ? 0 : end - now;
    row.renewals = x.renewals;
    row.refusals = x.refusals;
    row.ghosts_ended = x.ghosts_ended;
    rows.push_back(std::move(row));
  }
  return rows;
}

LeaseFigures LeaseTable::Figures() const {
  LeaseFigures f;
  f.live = live_;
  f.unleased_live = unleased_live_;
  f.reserved = unleased_live_;
  const Record* r = records();
  for (int i = 0; i < max_coordinators_; ++i) {
    if (!r[i].InUse()) continue;
    ++f.coordinators;
    f.reserved += Reserved(r[i]);
  }
  f.admitted = admitted_;
  f.refused_budget = refused_budget_;
  f.refused_lease = refused_lease_;
  f.refused_unleased = refused_unleased_;
  f.refused_full = refused_full_;
  return f;
}

absl::Status LeaseTable::Audit(const LeaseSettings& settings) const {
  const Record* r = records();
  const Backend* b = backends();
  int live = 0;
  int unleased = 0;
  std::vector<int> per_record(max_coordinators_, 0);
  for (int j = 0; j < max_backends_; ++j) {
    if (b[j].pid == 0) continue;
    ++live;
    if (b[j].record < 0) {
      ++unleased;
    } else {
      ++per_record[b[j].record];
      if (r[b[j].record].incarnation != b[j].incarnation) {
        return absl::InternalError(absl::StrCat("backend ", b[j].pid, " counts for record ",
                                                b[j].record, " of another incarnation"));
      }
    }
  }
  if (live != live_ || unleased != unleased_live_) {
    return absl::InternalError(absl::StrCat("live ", live_, " (unleased ", unleased_live_,
                                            ") but the backends say ", live, " (", unleased, ")"));
  }
  for (int i = 0; i < max_coordinators_; ++i) {
    if (r[i].live != per_record[i]) {
      return absl::InternalError(absl::StrCat("record ", i, " counts ", r[i].live,
                                              " live but the backends say ", per_record[i]));
    }
  }
  if (settings.budget >= 0) {
    const int reserved = ReservedExcept(-1, settings);
    if (reserved > settings.budget && settings.unleased_connections >= 0) {
      return absl::InternalError(
          absl::StrCat("I1: reserved ", reserved, " > budget ", settings.budget));
    }
    if (live_ > settings.budget) {
      return absl::InternalError(absl::StrCat("live ", live_, " > budget ", settings.budget));
    }
  }
  return absl::OkStatus();
}

}  // namespace connthrottle
