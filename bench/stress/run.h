// One run of the workload on the cluster: the coordinator's limit and
// transport set, the monitor, the clients and the faults started, the run
// waited out (with its progress line), then everything it measured gathered.

#ifndef CONNTHROTTLE_BENCH_STRESS_RUN_H_
#define CONNTHROTTLE_BENCH_STRESS_RUN_H_

#include <cstdint>
#include <string>

#include "stress/cluster.h"
#include "stress/options.h"
#include "stress/run_data.h"

namespace connthrottle::stress {

// Which run: the report's name for it and what the coordinator is set to.
struct RunSpec {
  std::string label;      // "throttled", "throttled, shared_pool", "unthrottled"
  int limit = 0;          // connthrottle.max_shared_pool_size (-1: off)
  std::string transport;  // connthrottle.executor_transport: direct or shared_pool
  uint64_t seed = 0;
  // With several coordinators: whether they lease the workers' budget
  // (--worker_budget). False: no worker budget, no leases, each coordinator
  // counts alone (a static split, or unthrottled).
  bool leases = true;
};

// Runs the workload of `options` for --duration (less, if interrupted) as
// `spec` says.
RunData Run(Cluster& cluster, const Options& options, const RunSpec& spec);

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_RUN_H_
