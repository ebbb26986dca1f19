// Fault injection: the faults asked for (--kill_clients,
// --terminate_coordinator_backends, --terminate_worker_backends,
// --restart_worker) spread over the middle of a run and injected from a
// thread of their own; what was injected is counted in the run's figures.

#ifndef CONNTHROTTLE_BENCH_STRESS_FAULTS_H_
#define CONNTHROTTLE_BENCH_STRESS_FAULTS_H_

#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "stress/clients.h"
#include "stress/cluster.h"
#include "stress/options.h"
#include "stress/run_data.h"

namespace connthrottle::stress {

enum class Fault {
  kKillClient,                   // library mode: SIGKILL a client process, replaced
  kTerminateCoordinatorBackend,  // sql mode: end a client session's coordinator backend
  kTerminateWorkerBackend,       // end one of the coordinator's connections on a worker
  kRestartWorker,                // stop a local worker for 2 s
};

class FaultInjector {
 public:
  // Faults on `cluster` and `clients`, drawn from `seed`, counted in `counts`.
  FaultInjector(Cluster& cluster, Clients& clients, FaultFigures& counts, uint64_t seed);
  ~FaultInjector() { Join(); }

  // Plans the faults of `options` and injects them from a thread, each at
  // its time after `start`, until they are done or `stop` is set.
  void Start(const Options& options, absl::Time start, const std::atomic<bool>& stop);
  // Waits for the thread (a fault under way is finished).
  void Join();

 private:
  // The faults of `options`, each at a random time in the middle 80% of the
  // run (a worker restart at its half), in the order of their times.
  std::vector<std::pair<absl::Duration, Fault>> Plan(const Options& options);
  void Inject(Fault fault);
  bool KillClient();
  bool TerminateCoordinatorBackend();
  bool TerminateWorkerBackend();
  bool RestartWorker();

  Cluster& cluster_;
  Clients& clients_;
  FaultFigures& counts_;
  std::mt19937_64 rng_;
  std::thread thread_;
};

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_FAULTS_H_
