// The faults and their schedule: when each is due, and how each is done to
// the cluster or the clients.

#include "stress/faults.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace connthrottle::stress {

FaultInjector::FaultInjector(Cluster& cluster, Clients& clients, FaultFigures& counts,
                             uint64_t seed)
    : cluster_(cluster), clients_(clients), counts_(counts), rng_(seed) {}

void FaultInjector::Start(const Options& options, absl::Time start, const std::atomic<bool>& stop) {
  thread_ = std::thread([this, plan = Plan(options), start, &stop] {
    for (const auto& [when, fault] : plan) {
      while (!stop.load() && absl::Now() - start < when) absl::SleepFor(absl::Milliseconds(5));
      if (stop.load()) return;
      Inject(fault);
    }
  });
}

void FaultInjector::Join() {
  if (thread_.joinable()) thread_.join();
}

std::vector<std::pair<absl::Duration, Fault>> FaultInjector::Plan(const Options& options) {
  std::vector<std::pair<absl::Duration, Fault>> plan;
  auto spread = [&](int n, Fault fault) {
    for (int i = 0; i < n; ++i) {
      plan.emplace_back(options.duration * (0.1 + 0.8 * static_cast<double>(rng_() % 1000) / 1000),
                        fault);
    }
  };
  const bool library = options.library();
  spread(library ? options.kill_clients : 0, Fault::kKillClient);
  spread(library ? 0 : options.terminate_coordinator_backends, Fault::kTerminateCoordinatorBackend);
  spread(options.terminate_worker_backends, Fault::kTerminateWorkerBackend);
  if (options.restart_worker && !cluster_.worker_servers.empty()) {
    plan.emplace_back(options.duration / 2, Fault::kRestartWorker);
  }
  std::sort(plan.begin(), plan.end());
  return plan;
}

// Does `fault` and counts it if it was done.
void FaultInjector::Inject(Fault fault) {
  FaultFigures& n = counts_;
  if (fault == Fault::kKillClient && KillClient()) ++n.clients_killed;
  if (fault == Fault::kTerminateCoordinatorBackend && TerminateCoordinatorBackend()) {
    ++n.coordinator_backends_terminated;
  }
  if (fault == Fault::kTerminateWorkerBackend && TerminateWorkerBackend()) {
    ++n.worker_backends_terminated;
  }
  if (fault == Fault::kRestartWorker && RestartWorker()) ++n.worker_restarts;
}

bool FaultInjector::KillClient() {
  return clients_.KillAndReplace(static_cast<int>(rng_() % clients_.count()), rng_);
}

bool FaultInjector::TerminateCoordinatorBackend() {
  int pid = clients_.BackendPid(static_cast<int>(rng_() % clients_.count()));
  auto admin = cluster_.Connect(cluster_.coordinators.front(), "connthrottle-faults");
  return pid > 0 && admin.ok() &&
         (*admin)->Exec(absl::StrCat("SELECT pg_terminate_backend(", pid, ")")).ok();
}

bool FaultInjector::TerminateWorkerBackend() {
  const Endpoint& w = cluster_.workers[rng_() % cluster_.workers.size()];
  auto admin = cluster_.Connect(w, "connthrottle-faults");
  if (!admin.ok()) return false;
  absl::StatusOr<std::string> n = (*admin)->QueryValue(
      "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity "
      "WHERE application_name = 'connthrottle' OR application_name LIKE 'connthrottle/%' "
      "ORDER BY random() LIMIT 1) p");
  return n.ok() && *n == "1";
}

bool FaultInjector::RestartWorker() {
  LocalServer& w = *cluster_.worker_servers[rng_() % cluster_.worker_servers.size()];
  if (!w.Stop().ok()) return false;
  absl::SleepFor(absl::Seconds(2));  // the outage itself
  return w.StartAgain().ok();
}

}  // namespace connthrottle::stress
