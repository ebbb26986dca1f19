// One run: the steps of Run() in order, and the figures of each worker that
// a run is the difference of (sessions, backends started) and its peaks.

#include "stress/run.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "stress/clients.h"
#include "stress/faults.h"
#include "stress/library_clients.h"
#include "stress/sampler.h"
#include "stress/sql_clients.h"

namespace connthrottle::stress {
namespace {

// Backends worker `w` started for the workload so far: "connection received"
// lines in its log, less the driver's own connections; -1 for a worker the
// driver did not start (it cannot read that log).
int64_t BackendsStarted(const Cluster& cluster, size_t w) {
  if (w >= cluster.worker_servers.size()) return -1;
  std::ifstream in(cluster.worker_servers[w]->log_file());
  if (!in) return -1;
  int64_t received = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("connection received:") != std::string::npos) ++received;
  }
  return received - cluster.OwnConnections(cluster.workers[w]);
}

int64_t SessionsOpened(const Cluster& cluster, const Endpoint& w) {
  auto c = cluster.Connect(w, "connthrottle-setup");
  if (!c.ok()) return 0;
  absl::StatusOr<std::string> v =
      (*c)->QueryValue("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database");
  return v.ok() ? std::atoll(v->c_str()) : 0;
}

// What a worker's peak is judged against in a run with each coordinator's
// `limit` and the workers' `budget` (-1: none): one coordinator's limit, or
// with several the budget, or else the sum of their limits.
int WorkerLimit(const Cluster& cluster, int limit, int budget) {
  const int n = static_cast<int>(cluster.coordinators.size());
  if (n <= 1 || limit < 0) return limit;
  return budget > 0 ? budget : limit * n;
}

// Each worker's figures as they stand before a run with `limit` and
// `budget`: the counters the run's figures are the difference from.
std::vector<WorkerFigures> WorkerFiguresBefore(const Cluster& cluster, int limit, int budget,
                                               int per_database_limit) {
  std::vector<WorkerFigures> workers;
  for (size_t w = 0; w < cluster.workers.size(); ++w) {
    WorkerFigures f;
    f.name = cluster.workers[w].name;
    f.limit = WorkerLimit(cluster, limit, budget);
    if (cluster.coordinators.size() > 1) f.coordinator_limit = limit;
    f.budget = cluster.coordinators.size() > 1 && limit >= 0 && budget > 0;
    if (limit >= 0 && per_database_limit > 0) {
      f.database_limit = per_database_limit * static_cast<int>(cluster.coordinators.size());
    }
    f.max_connections = cluster.worker_max_connections[w];
    f.sessions_opened = -SessionsOpened(cluster, cluster.workers[w]);
    f.backends_started = BackendsStarted(cluster, w);
    workers.push_back(f);
  }
  return workers;
}

// Completes run.workers once the clients are done and run.samples taken:
// the peaks (per database too when there are several), the sessions and
// the backends the run cost each worker.
void WorkerFiguresAfter(const Cluster& cluster, RunData& run) {
  const std::vector<int> peaks = PeakPerWorker(run.samples, run.workers.size());
  for (size_t w = 0; w < run.workers.size(); ++w) run.workers[w].peak = peaks[w];
  if (cluster.databases.size() > 1) {
    std::vector<std::vector<int>> per_database =
        PeakPerWorkerAndDatabase(run.samples, run.workers.size(), cluster.databases.size());
    for (size_t w = 0; w < run.workers.size(); ++w) {
      run.workers[w].peak_per_database = std::move(per_database[w]);
    }
  }
  if (cluster.coordinators.size() > 1) {
    std::vector<std::vector<int>> per_coordinator =
        PeakPerWorkerAndCoordinator(run.samples, run.workers.size(), cluster.coordinators.size());
    for (size_t w = 0; w < run.workers.size(); ++w) {
      run.workers[w].peak_per_coordinator = std::move(per_coordinator[w]);
    }
  }
  for (size_t w = 0; w < cluster.workers.size(); ++w) {
    run.workers[w].sessions_opened += SessionsOpened(cluster, cluster.workers[w]);
    // The workers log a backend's start as it happens; the clients are done
    // and have closed their connections, so the log is complete now.
    const int64_t before = run.workers[w].backends_started;
    const int64_t after = BackendsStarted(cluster, w);
    run.workers[w].backends_started = before < 0 || after < 0 ? -1 : after - before;
  }
}

void ShowProgress(absl::Duration elapsed, absl::Duration total, Progress& progress,
                  const std::vector<int>& latest, const std::vector<WorkerFigures>& workers) {
  int64_t p50 = 0, p99 = 0;
  {
    std::lock_guard<std::mutex> lock(progress.mu);
    p50 = progress.recent.Percentile(50);
    p99 = progress.recent.Percentile(99);
    progress.recent = LatencyRecorder();
  }
  std::string conns;
  for (size_t w = 0; w < latest.size() && w < workers.size(); ++w) {
    absl::StrAppend(&conns, " ", workers[w].name, " ", latest[w], "/",
                    workers[w].limit < 0 ? std::string("off") : absl::StrCat(workers[w].limit));
  }
  std::fprintf(stderr, "\r%5.1f/%.0fs  %8.1f q/s  p50 %6.1f ms  p99 %7.1f ms %s   ",
               absl::ToDoubleSeconds(elapsed), absl::ToDoubleSeconds(total),
               progress.completed.load() / std::max(absl::ToDoubleSeconds(elapsed), 0.001),
               p50 / 1000.0, p99 / 1000.0, conns.c_str());
  std::fflush(stderr);
}

// Until --duration has passed since `start` (or SIGINT), with the progress
// line once a second when asked for and stderr is a terminal.
void AwaitEndOfRun(const Options& options, absl::Time start, Sampler& sampler, Clients& clients,
                   const std::vector<WorkerFigures>& workers) {
  const absl::Duration duration = options.duration;
  const bool show_progress = options.progress && isatty(2);
  while (absl::Now() - start < duration && !g_interrupted) {
    absl::SleepFor(std::min(absl::Seconds(1), duration - (absl::Now() - start)));
    if (show_progress) {
      ShowProgress(absl::Now() - start, duration, clients.progress(), sampler.latest(), workers);
    }
  }
  if (show_progress) std::fprintf(stderr, "\n");
}

// The clients of --mode: library mode's processes start here, sql mode's
// threads at Start().
std::unique_ptr<Clients> MakeClients(const Cluster& cluster, const Options& options,
                                     const RunSpec& spec, const std::atomic<bool>& stop,
                                     RunData& run) {
  const int count = std::min(options.clients, kMaxClients);
  if (options.library()) {
    return std::make_unique<LibraryClients>(cluster, options, spec.label, spec.limit, spec.seed,
                                            count);
  }
  return std::make_unique<SqlClients>(cluster, options, count, spec.seed, stop, run);
}

}  // namespace

RunData Run(Cluster& cluster, const Options& options, const RunSpec& spec) {
  RunData run;
  run.label = spec.label;
  run.sample_interval = options.sample_interval;
  const int budget = spec.leases ? options.worker_budget : -1;
  run.workers = WorkerFiguresBefore(cluster, spec.limit, budget, options.per_database_limit);
  run.coordinators = cluster.coordinator_ids;
  if (options.idle_for > absl::ZeroDuration() && cluster.coordinators.size() > 1) {
    run.idle = Gap{options.idle_from, options.idle_from + options.idle_for};
  }
  SetLimit(cluster, spec.limit, spec.transport, budget, options.per_database_limit);
  Sampler sampler(cluster, run.sample_interval);
  std::atomic<bool> stop{false};
  std::unique_ptr<Clients> clients = MakeClients(cluster, options, spec, stop, run);

  const absl::Time start = absl::Now();
  sampler.Start(start);
  clients->Start(start);
  FaultInjector faults(cluster, *clients, run.faults, spec.seed);
  faults.Start(options, start, stop);
  AwaitEndOfRun(options, start, sampler, *clients, run.workers);
  stop = true;
  faults.Join();
  run.duration = absl::Now() - start;

  // Stop the clients, then time how long until every shared counter is zero.
  clients->Finish(run);
  sampler.Stop();
  run.samples = sampler.samples();
  WorkerFiguresAfter(cluster, run);
  return run;
}

}  // namespace connthrottle::stress
