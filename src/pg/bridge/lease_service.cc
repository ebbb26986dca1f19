// lease_service.cc — the coordinator's lease service: see lease_service.h.

#include "pg/bridge/lease_service.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/demand_window.h"
#include "executor/lease_holder.h"
#include "pg/bridge/backend_state.h"
#include "pg/bridge/lease_board.h"
#include "pg/bridge/pool_service.h"
#include "pg/bridge/table_stats.h"

namespace connthrottle::pg {
namespace {

constexpr int64_t kMs = 1'000'000;
// The demand told a holder is the highest of the last half second to second.
constexpr int64_t kDemandBucket = 500 * kMs;

struct Node {
  std::unique_ptr<LeaseHolder> holder;
  int64_t busy_at = 0;  // last seen with slots or waiters
  int published = -1;   // the limit last published (-1: none)
  // The demand told the holder: the highest of the last half second to
  // second (demand_window.h).
  DemandWindow demand{kDemandBucket};
};

struct Service {
  std::mutex mu;
  LeaseServiceSettings settings;
  std::atomic<bool> stop{false};
  std::thread thread;
  int wake_fd[2] = {-1, -1};
};

Service& Svc() {
  static Service* svc = new Service;
  return *svc;
}

BoardLease ToBoard(const LeaseView& v, LeaseMode mode) {
  switch (v.state) {
    case LeaseState::kLeased:
    case LeaseState::kLapsed:
      return {BoardKind::kLeased, v.grant, v.deadline, static_cast<int>(v.state)};
    case LeaseState::kVerify:
      return {BoardKind::kZero, 0, 0, static_cast<int>(v.state)};
    case LeaseState::kProbing:
    case LeaseState::kUnknown:
      return {mode == LeaseMode::kOn ? BoardKind::kZero : BoardKind::kNone, 0, 0,
              static_cast<int>(v.state)};
    case LeaseState::kUnmanaged:
      break;
  }
  return {BoardKind::kNone, 0, 0, static_cast<int>(v.state)};
}

// The holder's error for the board, cut to `size` - 1 bytes: a libpq or
// worker message may be in the worker's encoding and would be cut anywhere,
// so every byte outside printable ASCII becomes '?' (lease_status() returns
// it as text in any database's encoding).
void CopyError(const std::string& error, char* out, size_t size) {
  const size_t n = std::min(error.size(), size - 1);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(error[i]);
    out[i] = c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  out[n] = '\0';
}

void Turn(std::map<std::pair<std::string, int>, Node>& nodes, std::vector<NodeRow>& rows,
          std::vector<PoolNodeLoad>& load);

void Run() {
  Service& svc = Svc();
  std::map<std::pair<std::string, int>, Node> nodes;
  std::vector<NodeRow> rows(1024);
  std::vector<PoolNodeLoad> load(1024);
  while (!svc.stop.load()) {
    try {
      Turn(nodes, rows, load);
    } catch (...) {
      // Out of memory: try again in a moment; the board's deadlines keep
      // every published lease honest meanwhile.
      poll(nullptr, 0, 100);
    }
  }
  // A second for every release together: those not answered by then run
  // out at the workers by themselves.
  const int64_t release_by = LeaseHolder::Now() + 1000 * kMs;
  for (auto& [key, n] : nodes) {
    n.holder->Release(std::max<int64_t>(0, release_by - LeaseHolder::Now()));
    RemoveLease(key.first.c_str(), key.second);
  }
}

// One pass: every node's demand, holders made, stepped, published; then a
// wait for their sockets, the next time one asked for, or a wake-up.
void Turn(std::map<std::pair<std::string, int>, Node>& nodes, std::vector<NodeRow>& rows,
          std::vector<PoolNodeLoad>& load) {
  Service& svc = Svc();
  {
    LeaseServiceSettings s;
    {
      std::lock_guard<std::mutex> lock(svc.mu);
      s = svc.settings;
    }
    SetLeaseBoardMode(static_cast<int>(s.mode));
    const int64_t now = LeaseHolder::Now();
    // Each node's demand: connections held (less those parked idle in
    // sessions' caches and those idle in the pool), sessions waiting for
    // one, and the pool's tasks queued for it. An idle coordinator's open
    // connections are no demand: its lease shrinks and its pool closes
    // them (ShrinkToLimit), so that its share goes to those who want it.
    struct Want {
      int demand = 0;
      int open = 0;
    };
    std::map<std::pair<std::string, int>, Want> wants;
    int count = 0;
    if (s.mode != LeaseMode::kOff) {
      if (NodeStats(rows.data(), static_cast<int>(rows.size()), &count).ok()) {
        for (int i = 0; i < count; ++i) {
          const NodeRow& r = rows[i];
          Want& w = wants[{std::string(r.host), r.port}];
          w.open = static_cast<int>(r.connections);
          w.demand +=
              static_cast<int>(r.connections - std::min(r.cached, r.connections) + r.waiters);
        }
      }
      const int n = PoolLoad(load.data(), static_cast<int>(load.size()));
      for (int i = 0; i < n; ++i) {
        Want& w = wants[{std::string(load[i].host), load[i].port}];
        w.demand = std::max(0, w.demand + load[i].queued - load[i].idle);
      }
    }
    for (const auto& [key, w] : wants) {
      auto it = nodes.find(key);
      if (it == nodes.end()) {
        if (w.demand == 0 && w.open == 0) continue;
        LeaseHolderOptions o;
        o.coordinator_id = CoordinatorId();
        o.incarnation = CoordinatorIncarnation();
        o.worker.Set("host", key.first)
            .Set("port", std::to_string(key.second))
            .Set("dbname", s.database);
        if (s.user[0] != '\0') o.worker.Set("user", s.user);
        o.cap = std::max(1, s.cap);
        o.required = s.mode == LeaseMode::kOn;
        o.connect_timeout_ns = static_cast<int64_t>(s.connect_timeout_ms) * kMs;
        it = nodes.emplace(key, Node{std::make_unique<LeaseHolder>(std::move(o)), now, -1}).first;
      }
      if (w.demand > 0 || w.open > 0) it->second.busy_at = now;
    }
    // Nodes not seen in this pass want nothing.
    for (auto& [key, n] : nodes) {
      auto w = wants.find(key);
      const Want want = w == wants.end() ? Want{} : w->second;
      n.demand.Add(now, want.demand);
      n.holder->SetDemand(std::min(n.demand.Max(), std::max(1, s.cap)), want.open);
    }
    int64_t next = now + 100 * kMs;
    bool raised = false;
    std::vector<pollfd> fds;
    // Idle releases wait for the workers' answers 200 ms at most in all,
    // so that many at once (or unreachable workers) do not hold up the
    // other leases' renewals; a release not sent or not answered runs out
    // at its worker by itself.
    const int64_t release_by = now + 200 * kMs;
    for (auto it = nodes.begin(); it != nodes.end();) {
      Node& n = it->second;
      const auto& [host, port] = it->first;
      if (s.mode == LeaseMode::kOff ||
          now - n.busy_at > static_cast<int64_t>(s.idle_release_ms) * kMs) {
        n.holder->Release(std::max<int64_t>(0, release_by - LeaseHolder::Now()));
        RemoveLease(host.c_str(), port);
        if (n.published >= 0) raised = true;  // no lease limit any more
        it = nodes.erase(it);
        continue;
      }
      next = std::min(next, n.holder->Step(now));
      const LeaseView v = n.holder->view(LeaseHolder::Now());
      BoardLease b = ToBoard(v, s.mode);
      CopyError(v.error, b.error, sizeof(b.error));
      PublishLease(host.c_str(), port, b);
      const int limit = b.kind == BoardKind::kNone ? -1 : v.limit;
      if ((n.published >= 0 && limit < 0) || limit > n.published) raised = true;
      n.published = limit;
      if (n.holder->socket() >= 0) {
        fds.push_back({n.holder->socket(),
                       static_cast<short>(n.holder->wants_write() ? POLLOUT : POLLIN), 0});
      }
      ++it;
    }
    if (raised) WakeAllWaiters();
    fds.push_back({svc.wake_fd[0], POLLIN, 0});
    const int64_t wait_ms = std::clamp<int64_t>((next - LeaseHolder::Now()) / kMs + 1, 1, 100);
    if (poll(fds.data(), fds.size(), static_cast<int>(wait_ms)) > 0 &&
        (fds.back().revents & POLLIN)) {
      char buf[64];
      while (read(svc.wake_fd[0], buf, sizeof(buf)) > 0) {
      }
    }
  }
}

void Wake() {
  Service& svc = Svc();
  if (svc.wake_fd[1] >= 0) (void)!write(svc.wake_fd[1], "x", 1);
}

}  // namespace

void StartLeaseService(const LeaseServiceSettings& settings) noexcept {
  Service& svc = Svc();
  if (svc.thread.joinable() || !LeaseBoardReady()) return;
  {
    std::lock_guard<std::mutex> lock(svc.mu);
    svc.settings = settings;
  }
  if (pipe2(svc.wake_fd, O_NONBLOCK | O_CLOEXEC) != 0) return;
  svc.stop = false;
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  try {
    svc.thread = std::thread(Run);
  } catch (...) {
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

void UpdateLeaseService(const LeaseServiceSettings& settings) noexcept {
  Service& svc = Svc();
  {
    std::lock_guard<std::mutex> lock(svc.mu);
    if (memcmp(&svc.settings, &settings, sizeof(settings)) == 0) return;
    svc.settings = settings;
  }
  Wake();
}

void StopLeaseService() noexcept {
  Service& svc = Svc();
  if (!svc.thread.joinable()) return;
  svc.stop = true;
  Wake();
  svc.thread.join();
}

const char* LeaseStateText(int state) noexcept {
  if (state < 0 || state > static_cast<int>(LeaseState::kUnknown)) return "?";
  return LeaseStateName(static_cast<LeaseState>(state));
}

}  // namespace connthrottle::pg
