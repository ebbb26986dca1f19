#include "pg/bridge/pool_service.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "connthrottle/executor/shared_pool.h"
#include "pg/bridge/copy_message.h"
#include "pg/bridge/internal/lease_limit.h"
#include "pg/bridge/internal/settings.h"
#include "pg/bridge/pool_message.h"
#include "pg/bridge/process_owner.h"

namespace connthrottle::pg {
namespace {

constexpr char kSetting[] = "connthrottle.pool_message_bytes";
// Names what a result did not fit in when it could not wait in parts.
constexpr char kHeldInFull[] =
    "connthrottle.pool_message_bytes, and connthrottle.pool_response_memory is taken by results "
    "sessions have not read yet";

// A response waiting to cross a session's area in parts, counted in
// `*total` (the bytes held for all sessions) for as long as it exists.
// Guarded as the requests are.
class HeldResponse {
 public:
  HeldResponse() = default;
  HeldResponse(size_t size, size_t* total) : bytes_(size, '\0'), total_(total) {
    *total_ += bytes_.size();
  }
  HeldResponse(HeldResponse&& other) noexcept
      : bytes_(std::move(other.bytes_)), total_(std::exchange(other.total_, nullptr)) {}
  HeldResponse& operator=(HeldResponse&& other) noexcept {
    if (this != &other) {
      Drop();
      bytes_ = std::move(other.bytes_);
      total_ = std::exchange(other.total_, nullptr);
    }
    return *this;
  }
  ~HeldResponse() { Drop(); }

  bool empty() const { return bytes_.empty(); }
  size_t size() const { return bytes_.size(); }
  char* data() { return bytes_.data(); }

  void Drop() noexcept {
    if (total_ != nullptr) *total_ -= bytes_.size();
    total_ = nullptr;
    std::string().swap(bytes_);
  }

 private:
  std::string bytes_;
  size_t* total_ = nullptr;
};

struct Request {
  uint64_t seq = 0;  // which submission of the slot this is
  SharedPool::Ticket ticket;
  std::vector<bool> run_locally;  // tasks handed back so far
  char* area = nullptr;           // the slot's message area
  size_t capacity = 0;
  // A response larger than the area, while it crosses in parts.
  HeldResponse response;
  size_t sent = 0;
};

// A slot's COPY (distribute), from its open to its end: between its
// requests the slot is the session's, the COPY the pool's.
struct CopyEntry {
  uint64_t seq = 0;
  SharedPool::CopyTicket ticket;
  char* area = nullptr;  // the slot's message area
  size_t capacity = 0;
  bool answering = false;  // a request of the slot awaits the COPY's step
  bool finishing = false;  // that request is the end: answered with the results
  // The session withdrew while a chunk was being sent: the slot is freed
  // once the pool has let go of the chunk (which is in the slot's area).
  void (*release)(int slot) = nullptr;
};

// The largest response sent in parts: what a backend may allocate at once
// (PostgreSQL's MaxAllocSize). Beyond it, results are cut to fit the area
// (54000).
constexpr size_t kMaxResponseBytes = 0x3fffffff;

// The communicator's state. Main thread only, except where marked.
struct Service {
  // Read by the pool's thread (the limit function): guarded.
  std::mutex settings_mu;
  PoolServiceSettings settings;
  std::string local_node;  // settings.settings.local_node points here

  // The requests by session slot: the pool's thread answers them as they
  // settle (on_change), the main thread adds and withdraws them.
  std::mutex requests_mu;
  absl::flat_hash_map<int, Request> requests;
  absl::flat_hash_map<int, CopyEntry> copies;
  uint64_t next_seq = 0;
  size_t held = 0;  // bytes of the requests' responses in parts
  std::atomic<size_t> held_limit{SharedPoolOptions{}.result_memory};  // pool_response_memory
  AnswerFn answer = nullptr;
  SlotWakeup wakeup;

  // Made and reset by the main thread; read by the pool's thread while it
  // runs (its thread starts after it is set and is joined before it is
  // reset).
  std::unique_ptr<SharedPool> pool;
};

Service& Svc() {
  static Service* service = new Service();
  return *service;
}

// The options shared_pool_settings.def declares, as their settings give them.
SharedPoolOptions DeclaredOptions(const PoolSettings& from) {
  SharedPoolOptions o;
#define CONNTHROTTLE_POOL_SETTING(field, unit, ...) o.field = pool_setting_unit::unit(from.field);
#include "connthrottle/executor/shared_pool_settings.def"
  return o;
}

SharedPoolOptions OptionsFrom(const PoolServiceSettings& s) {
  SharedPoolOptions o = DeclaredOptions(s.pool);
  // Per pool (node, database, user): max_adaptive_executor_pool_size, as
  // for one execution of the direct transport; the limit caps it too.
  o.max_pool_size = std::max(s.max_pool_size, 1);
  o.connect_timeout = absl::Milliseconds(std::max(s.node_connection_timeout_ms, 10));
  o.slow_start_interval = absl::Milliseconds(std::max(s.slow_start_interval_ms, 1));
  o.slot_wait_timeout = WaitTimeout(s.settings);
  o.when_table_full = FullTablePolicyOf(s.settings);
  // Results still gathering have a budget of their own, at least 1MB.
  o.result_memory = std::max(o.result_memory, size_t{1} << 20);
  o.result_memory_setting = pool_setting_name::result_memory;
  return o;
}

void SetSettings(Service& svc, const PoolServiceSettings& settings) {
  std::lock_guard<std::mutex> lock(svc.settings_mu);
  svc.settings = settings;
  svc.local_node = settings.settings.local_node != nullptr ? settings.settings.local_node : "";
  svc.settings.settings.local_node = svc.local_node.c_str();
  // Responses held in parts: pool_response_memory as set (0: none).
  svc.held_limit.store(DeclaredOptions(settings.pool).result_memory, std::memory_order_relaxed);
}

template <typename Body>
auto Quietly(Body body, decltype(body()) otherwise) noexcept -> decltype(body()) {
  try {
    return body();
  } catch (...) {
    return otherwise;
  }
}

// Starts the pool on first use. Its thread must never run a PostgreSQL
// signal handler: it starts with every signal blocked.
absl::Status EnsurePool(Service& svc) {
  if (svc.pool) return absl::OkStatus();
  absl::StatusOr<Owner*> owner = ProcessOwner();
  if (!owner.ok()) return owner.status();
  PoolServiceSettings settings;
  {
    std::lock_guard<std::mutex> lock(svc.settings_mu);
    settings = svc.settings;
  }
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  absl::Cleanup restore = [&] { pthread_sigmask(SIG_SETMASK, &before, nullptr); };
  SharedPool::ExternalWork slots{svc.wakeup.fd, svc.wakeup.serve};  // none without both
  svc.pool = std::make_unique<SharedPool>(
      **owner,
      [&svc](const NodeAddress& node, bool local) {
        const Limit limit = [&] {
          std::lock_guard<std::mutex> lock(svc.settings_mu);
          return Limit::ForNode(PoolLimitsOf(svc.settings.settings), local,
                                svc.settings.active_client_backends);
        }();
        return WithLease(limit, node.host, node.port, local);
      },
      OptionsFrom(settings), slots);
  return absl::OkStatus();
}

}  // namespace

void StartPoolService(const PoolServiceSettings& settings, AnswerFn answer,
                      SlotWakeup wakeup) noexcept {
  Quietly(
      [&] {
        Service& svc = Svc();
        svc.answer = answer;
        svc.wakeup = wakeup;
        SetSettings(svc, settings);
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        return EnsurePool(svc).ok();
      },
      false);
}

bool PoolServesSlots() noexcept {
  const Service& svc = Svc();
  return svc.pool != nullptr && svc.wakeup.fd >= 0 && svc.wakeup.serve != nullptr;
}

int PoolLoad(PoolNodeLoad* out, int max) noexcept {
  return Quietly(
      [&] {
        Service& svc = Svc();
        // Made once, under requests_mu, and destroyed only by
        // StopPoolService, after the lease service stopped. Queued() and
        // Idle() are called without requests_mu: the pool's own lock
        // comes first.
        SharedPool* pool = nullptr;
        {
          std::lock_guard<std::mutex> lock(svc.requests_mu);
          pool = svc.pool.get();
        }
        if (pool == nullptr) return 0;
        std::map<NodeAddress, std::pair<int, int>> load;  // queued, idle
        for (const auto& [node, queued] : pool->Queued()) load[node].first = queued;
        for (const auto& [node, idle] : pool->Idle()) load[node].second = idle;
        int n = 0;
        for (const auto& [node, figures] : load) {
          if (n == max) break;
          if (node.host.size() >= sizeof(out[n].host)) continue;
          std::memcpy(out[n].host, node.host.c_str(), node.host.size() + 1);
          out[n].port = node.port;
          out[n].queued = std::max(figures.first, 0);
          out[n].idle = std::max(figures.second, 0);
          ++n;
        }
        return n;
      },
      0);
}

void UpdatePoolService(const PoolServiceSettings& settings) noexcept {
  Quietly(
      [&] {
        Service& svc = Svc();
        SetSettings(svc, settings);
        if (svc.pool) svc.pool->set_options(OptionsFrom(settings));
        return 0;
      },
      0);
}

namespace {

// Sends the next part of `req`'s response: true when it was the last (the
// caller forgets the request).
bool SendPart(Service& svc, int slot, Request& req) ABSL_EXCLUSIVE_LOCKS_REQUIRED(svc.requests_mu) {
  const size_t n = std::min(req.capacity, req.response.size() - req.sent);
  std::memcpy(req.area, req.response.data() + req.sent, n);
  req.sent += n;
  svc.answer(slot, n, req.response.size());
  return req.sent == req.response.size();
}

// Writes the response of `req` if its tasks are settled and answers its
// slot: true when that was all of it (the caller forgets the request).
bool AnswerLocked(Service& svc, int slot, Request& req)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(svc.requests_mu) {
  if (!req.response.empty()) return false;  // answered already, in parts
  SharedPool::Progress p = svc.pool->Poll(req.ticket);
  for (int t : p.handed_back) req.run_locally[t] = true;
  if (!p.settled) return false;
  // Settled: from here the request is answered whatever happens (an
  // exception would leave it unanswered, and its session waiting).
  try {
    PoolResponse r;
    if (p.pool_gone) {
      r.status = absl::UnavailableError("connthrottle: the communicator's pool shut down");
      r.sqlstate = "08006";
    } else {
      ExecutionResult result = svc.pool->TakeResults(req.ticket);
      r.tasks = std::move(result.tasks);
      r.tasks_retried = result.stats.tasks_retried;
      r.run_locally = std::move(req.run_locally);
    }
    // Whole in the area; or cut to fit it (54000 for the values that do
    // not) when it may not wait in parts: too large for a backend to take
    // at once, or more than pool_response_memory still has room for.
    const size_t whole = ResponseBytes(r);
    const bool fits = whole <= req.capacity;
    const size_t limit = svc.held_limit.load(std::memory_order_relaxed);
    const bool may_wait = whole <= kMaxResponseBytes && whole <= limit - std::min(svc.held, limit);
    if (fits || !may_wait) {
      const bool memory = !fits && whole <= kMaxResponseBytes;
      const size_t n = EncodeResponse(r, req.area, req.capacity, memory ? kHeldInFull : kSetting);
      svc.answer(slot, n, n);
      return true;
    }
    req.response = HeldResponse(whole, &svc.held);
    EncodeResponse(r, req.response.data(), whole, kSetting);
  } catch (...) {
    req.response.Drop();
    const size_t n = WriteErrorResponse(
        req.area, req.capacity, static_cast<int>(absl::StatusCode::kResourceExhausted), "53200",
        "connthrottle: the communicator ran out of memory for this execution's results");
    svc.answer(slot, n, n);
    return true;
  }
  req.ticket.reset();  // settled, and its results are in `response` now
  return SendPart(svc, slot, req);
}

// The pool's on_change, on the pool's thread: the request settled or handed
// tasks back. `seq` tells a withdrawn request's late report from the slot's
// current one.
void OnProgress(Service& svc, int slot, uint64_t seq) noexcept {
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        auto it = svc.requests.find(slot);
        if (it == svc.requests.end() || it->second.seq != seq) return 0;
        if (AnswerLocked(svc, slot, it->second)) svc.requests.erase(it);
        return 0;
      },
      0);
}

// Answers the slot's request waiting for its COPY's step, if the step is
// done: true when the COPY is over (the caller forgets it).
bool AnswerCopyLocked(Service& svc, int slot, CopyEntry& e)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(svc.requests_mu) {
  SharedPool::CopyProgress p = svc.pool->PollCopy(e.ticket);
  if (e.release != nullptr) {
    // Withdrawn: once the pool is done with the chunk (the step is over,
    // the COPY failed), the slot is freed, unanswered.
    if (!p.done && p.status.ok()) return false;
    e.release(slot);
    return true;
  }
  if (!e.answering || !p.done) return false;
  e.answering = false;
  PoolResponse r;
  bool over = false;
  if (!p.status.ok()) {
    r.status = p.status;
    r.sqlstate = p.sqlstate;
    over = true;
  } else if (e.finishing) {
    r = CopyResultsResponse(std::move(p.results));
    over = true;
  }
  const size_t n = EncodeResponse(r, e.area, e.capacity, kSetting);
  svc.answer(slot, n, n);
  return over;
}

// The pool's on_change for a COPY, on the pool's thread.
void OnCopyProgress(Service& svc, int slot, uint64_t seq) noexcept {
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        auto it = svc.copies.find(slot);
        if (it == svc.copies.end() || it->second.seq != seq) return 0;
        if (AnswerCopyLocked(svc, slot, it->second)) svc.copies.erase(it);
        return 0;
      },
      0);
}

// Answers `slot` at once: OK, or `status` with `sqlstate`.
void AnswerNow(Service& svc, int slot, char* area, size_t capacity, absl::Status status,
               const char* sqlstate) {
  PoolResponse r;
  r.status = std::move(status);
  if (!r.status.ok()) r.sqlstate = sqlstate;
  const size_t n = EncodeResponse(r, area, capacity, kSetting);
  svc.answer(slot, n, n);
}

// A COPY request of `slot`: open, a chunk, end or abort. Under requests_mu.
void SubmitCopyLocked(Service& svc, int slot, MessageKind kind, char* area, size_t size,
                      size_t capacity) ABSL_EXCLUSIVE_LOCKS_REQUIRED(svc.requests_mu) {
  auto it = svc.copies.find(slot);
  if (kind == MessageKind::kCopyOpen) {
    size_t consumed = 0;
    absl::StatusOr<SharedPool::CopyRequest> request = DecodeCopyOpen(area, size, &consumed);
    // The first chunk, if it came with the open.
    const MessageKind then = request.ok() && consumed < size
                                 ? KindOf(area + consumed, size - consumed)
                                 : MessageKind::kCopyOpen;
    absl::StatusOr<std::vector<SharedPool::CopyPart>> chunk =
        then == MessageKind::kCopyData || then == MessageKind::kCopyEnd
            ? DecodeCopyChunk(area + consumed, size - consumed)
            : std::vector<SharedPool::CopyPart>{};
    if (request.ok() && !chunk.ok()) request = chunk.status();
    absl::Status pool = request.ok() ? EnsurePool(svc) : absl::OkStatus();
    if (!request.ok() || !pool.ok()) {
      AnswerNow(svc, slot, area, capacity, !request.ok() ? request.status() : pool,
                !request.ok() ? "XX001" : "55000");
      return;
    }
    // One the slot's session abandoned without a word (it cannot, but a
    // stale COPY must not hold connections).
    if (it != svc.copies.end()) svc.pool->CancelCopy(it->second.ticket);
    CopyEntry& e = svc.copies[slot];
    e = CopyEntry{};
    e.seq = ++svc.next_seq;
    e.area = area;
    e.capacity = capacity;
    e.answering = true;
    e.finishing = then == MessageKind::kCopyEnd;
    e.ticket = svc.pool->OpenCopy(*std::move(request),
                                  [&svc, slot, seq = e.seq] { OnCopyProgress(svc, slot, seq); });
    // Asked for now, taken once the COPY is open; answered when done.
    absl::Status asked = then == MessageKind::kCopyEnd    ? svc.pool->FinishCopy(e.ticket, *chunk)
                         : then == MessageKind::kCopyData ? svc.pool->SendCopy(e.ticket, *chunk)
                                                          : absl::OkStatus();
    if (!asked.ok()) {  // the pool stopped meanwhile
      svc.pool->CancelCopy(e.ticket);
      AnswerNow(svc, slot, area, capacity, asked, "08006");
      svc.copies.erase(slot);
    }
    return;
  }
  if (it == svc.copies.end()) {
    // Its COPY ended (an error it was told of), or an earlier communicator had it.
    AnswerNow(svc, slot, area, capacity,
              absl::UnavailableError("connthrottle: the communicator has no COPY open for this "
                                     "session (it restarted during the COPY)"),
              "08006");
    return;
  }
  CopyEntry& e = it->second;
  if (kind == MessageKind::kCopyAbort) {
    svc.pool->CancelCopy(e.ticket);
    svc.copies.erase(it);
    AnswerNow(svc, slot, area, capacity, absl::OkStatus(), "");
    return;
  }
  absl::Status asked;
  e.answering = true;
  e.finishing = kind == MessageKind::kCopyEnd;
  absl::StatusOr<std::vector<SharedPool::CopyPart>> chunk = DecodeCopyChunk(area, size);
  if (!chunk.ok()) {
    asked = chunk.status();
  } else if (e.finishing) {
    asked = svc.pool->FinishCopy(e.ticket, *std::move(chunk));
  } else {
    asked = svc.pool->SendCopy(e.ticket, *std::move(chunk));
  }
  if (!asked.ok()) {
    // Over already (failed; the error is the COPY's), or a malformed request.
    e.answering = false;
    SharedPool::CopyProgress p = svc.pool->PollCopy(e.ticket);
    if (p.status.ok()) svc.pool->CancelCopy(e.ticket);
    AnswerNow(svc, slot, area, capacity, p.status.ok() ? asked : p.status,
              p.status.ok() ? "XX001" : p.sqlstate.c_str());
    svc.copies.erase(it);
  }
}

}  // namespace

void SubmitToPool(int slot, char* area, size_t size, size_t capacity) noexcept {
  Service& svc = Svc();
  const bool ok = Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        const MessageKind kind = KindOf(area, size);
        if (kind != MessageKind::kTasks && kind != MessageKind::kUnknown) {
          SubmitCopyLocked(svc, slot, kind, area, size, capacity);
          return true;
        }
        // Tasks: any COPY the slot's session left open is over.
        if (auto it = svc.copies.find(slot); it != svc.copies.end()) {
          if (svc.pool) svc.pool->CancelCopy(it->second.ticket);
          svc.copies.erase(it);
        }
        absl::StatusOr<SharedPool::Submission> request = DecodeRequest(area, size);
        absl::Status pool = request.ok() ? EnsurePool(svc) : absl::OkStatus();
        if (!request.ok() || !pool.ok() || request->tasks.empty()) {
          PoolResponse r;
          r.status = !request.ok() ? request.status() : pool;
          r.sqlstate = !request.ok() ? "XX001" : pool.ok() ? "" : "55000";
          const size_t n = EncodeResponse(r, area, capacity, kSetting);
          svc.answer(slot, n, n);
          return true;
        }
        // A fresh entry: one the slot's last request left (a response in
        // parts its session gave up on) must not shape this one.
        Request& entry = svc.requests[slot];
        if (entry.ticket && svc.pool) svc.pool->Cancel(entry.ticket);
        entry = Request{};
        entry.seq = ++svc.next_seq;
        entry.run_locally.assign(request->tasks.size(), false);
        entry.area = area;
        entry.capacity = capacity;
        // The pool's thread may settle the request before Submit returns:
        // its on_change waits for this lock, and finds the entry complete.
        entry.ticket = svc.pool->Submit(
            *std::move(request), [&svc, slot, seq = entry.seq] { OnProgress(svc, slot, seq); });
        return true;
      },
      false);
  if (!ok) {
    Quietly(
        [&] {
          std::lock_guard<std::mutex> lock(svc.requests_mu);
          svc.requests.erase(slot);
          return 0;
        },
        0);
    AbandonCopy(slot);  // a COPY step that failed here ends its COPY
    const size_t n =
        WriteErrorResponse(area, capacity, static_cast<int>(absl::StatusCode::kInternal), "XX000",
                           "connthrottle: the communicator ran out of memory");
    svc.answer(slot, n, n);
  }
}

void CancelInPool(int slot, void (*release)(int slot)) noexcept {
  Service& svc = Svc();
  const bool released = Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        if (auto c = svc.copies.find(slot); c != svc.copies.end()) {
          // The COPY is cancelled; the slot is freed once the pool no longer
          // reads a chunk from its area.
          CopyEntry& e = c->second;
          e.release = release;
          if (svc.pool) svc.pool->CancelCopy(e.ticket);
          if (!svc.pool || AnswerCopyLocked(svc, slot, e)) svc.copies.erase(c);
          return true;
        }
        auto it = svc.requests.find(slot);
        if (it != svc.requests.end()) {
          // Forgotten before the pool is told, so that no exception can leave
          // an entry the pool's thread would still answer into a freed slot.
          SharedPool::Ticket ticket = std::move(it->second.ticket);
          svc.requests.erase(it);
          Quietly(
              [&] {
                if (svc.pool && ticket) svc.pool->Cancel(ticket);
                return 0;
              },
              0);
        }
        release(slot);
        return true;
      },
      false);
  // Only a failing lock gets here: the slot is freed all the same (its
  // session is gone or has given up on it).
  if (!released) release(slot);
}

void AnswerIfDone(int slot) noexcept {
  Service& svc = Svc();
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        if (!svc.pool) return 0;
        if (auto c = svc.copies.find(slot); c != svc.copies.end()) {
          if (AnswerCopyLocked(svc, slot, c->second)) svc.copies.erase(c);
          return 0;
        }
        auto it = svc.requests.find(slot);
        if (it == svc.requests.end()) return 0;
        if (AnswerLocked(svc, slot, it->second)) svc.requests.erase(it);
        return 0;
      },
      0);
}

bool NextPart(int slot) noexcept {
  Service& svc = Svc();
  return Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        auto it = svc.requests.find(slot);
        if (it == svc.requests.end() || it->second.response.empty()) return false;
        if (SendPart(svc, slot, it->second)) svc.requests.erase(it);
        return true;
      },
      false);
}

void DropResponse(int slot) noexcept {
  Service& svc = Svc();
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        auto it = svc.requests.find(slot);
        if (it != svc.requests.end() && !it->second.response.empty()) svc.requests.erase(it);
        return 0;
      },
      0);
}

void DetachRequests() noexcept {
  Service& svc = Svc();
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        svc.requests.clear();
        svc.copies.clear();
        return 0;
      },
      0);
}

void AbandonCopy(int slot) noexcept {
  Service& svc = Svc();
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        auto it = svc.copies.find(slot);
        if (it == svc.copies.end()) return 0;
        if (svc.pool) svc.pool->CancelCopy(it->second.ticket);
        svc.copies.erase(it);
        return 0;
      },
      0);
}

void ForEachOpenCopy(void (*fn)(int slot)) noexcept {
  Service& svc = Svc();
  Quietly(
      [&] {
        std::lock_guard<std::mutex> lock(svc.requests_mu);
        for (const auto& [slot, entry] : svc.copies) fn(slot);
        return 0;
      },
      0);
}

size_t WriteErrorResponse(char* area, size_t capacity, int code, const char* sqlstate,
                          const char* message) noexcept {
  return Quietly(
      [&] {
        PoolResponse r;
        r.status = absl::Status(static_cast<absl::StatusCode>(code), message);
        r.sqlstate = sqlstate;
        return EncodeResponse(r, area, capacity, kSetting);
      },
      size_t{0});
}

PoolStatValues PoolStats() noexcept {
  PoolStatValues out;
  Quietly(
      [&] {
        Service& svc = Svc();
        if (!svc.pool) return 0;
        const SharedPoolStats s = svc.pool->stats();
#define CONNTHROTTLE_POOL_STAT(name) out[PoolStat::name] = s.name;
#define CONNTHROTTLE_COMMUNICATOR_STAT(name)
#include "connthrottle/executor/shared_pool_stats.def"
        for (const auto& [node, n] : svc.pool->Connections()) out[PoolStat::connections] += n;
        for (const auto& [node, n] : svc.pool->Queued()) out[PoolStat::tasks_queued] += n;
        return 0;
      },
      0);
  return out;
}

void StopPoolService() noexcept {
  Quietly(
      [&] {
        Service& svc = Svc();
        DetachRequests();
        svc.pool.reset();
        return 0;
      },
      0);
}

}  // namespace connthrottle::pg
