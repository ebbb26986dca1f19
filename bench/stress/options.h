// What connthrottle-stress was asked to do: its flags, read once in main and
// handed down, so that the cluster, the clients, the faults and the runs say
// what they depend on and none of them reads a flag.

#ifndef CONNTHROTTLE_BENCH_STRESS_OPTIONS_H_
#define CONNTHROTTLE_BENCH_STRESS_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace connthrottle::stress {

// One field per flag, named as the flag (see their help in main.cc).
struct Options {
  std::string mode;
  int workers = 0;
  int worker_max_connections = 0;
  int limit = 0;
  int clients = 0;
  int roles = 0;
  int databases = 0;
  int per_database_limit = -1;
  int coordinators = 1;
  int worker_budget = -1;
  absl::Duration idle_from;
  absl::Duration idle_for;
  bool compare_static_split = false;
  absl::Duration duration;
  std::string mix;
  int tasks_per_worker = 0;
  std::string fanout_task;
  std::string coordinator;
  std::string worker_nodes;
  std::string transport;
  bool compare_transports = false;
  bool compare_unthrottled = false;
  std::string out;
  bool json = false;
  bool progress = false;
  absl::Duration sample_interval;
  absl::Duration statement_timeout;
  absl::Duration stall_window;
  absl::Duration settle;
  int kill_clients = 0;
  int terminate_coordinator_backends = 0;
  int terminate_worker_backends = 0;
  bool restart_worker = false;
  uint64_t seed = 0;
  bool judge_timing = false;
  std::string internal_segment;

  // --mode=library: client processes use the C++ library, no coordinator.
  bool library() const { return mode == "library"; }
  // --coordinators above 1: coordinators that share the workers' budget.
  bool several_coordinators() const { return coordinators > 1; }
};

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_OPTIONS_H_
