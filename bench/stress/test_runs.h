// Runs made up for the tests of run_data.h and report.h
// (run_data_test.cc, report_test.cc): a clean run that keeps every
// invariant, the same with roles and databases, and what they are made of.

#ifndef CONNTHROTTLE_BENCH_STRESS_TEST_RUNS_H_
#define CONNTHROTTLE_BENCH_STRESS_TEST_RUNS_H_

#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "stress/run_data.h"

namespace connthrottle::stress {

// The times from `from` up to `to` (excluded), every `step`.
inline std::vector<absl::Duration> Every(absl::Duration step, absl::Duration from,
                                         absl::Duration to) {
  std::vector<absl::Duration> out;
  for (absl::Duration t = from; t < to; t += step) out.push_back(t);
  return out;
}

// A sample `ms` into the run with these counts per worker.
inline Sample At(int ms, std::vector<int> counts) {
  return {absl::Milliseconds(ms), std::move(counts)};
}

// A run that keeps every invariant: sampled every 10 ms, under the limit,
// everyone completing every 100 ms, counters back at once.
inline RunData CleanRun() {
  RunData run;
  run.label = "throttled";
  run.duration = absl::Seconds(10);
  run.sample_interval = absl::Milliseconds(10);
  run.workers = {{"worker1", 4, 12, 4, 0, 40}, {"worker2", 4, 12, 3, 0, 38}};
  for (int c = 0; c < 3; ++c) {
    ClientFigures f;
    f.completion_times = Every(absl::Milliseconds(100), absl::ZeroDuration(), run.duration);
    f.completed = static_cast<int64_t>(f.completion_times.size());
    run.clients.push_back(f);
    run.queries += f.completed;
  }
  for (int ms = 10; ms <= 10000; ms += 10) run.samples.push_back(At(ms, {4, 3}));
  for (int v = 1; v <= 100; ++v) run.latency.Add(v * 1000);
  run.counters_zero_after = absl::Milliseconds(3);
  return run;
}

// The --settle and --stall_window the verdicts are judged with.
inline constexpr absl::Duration kSettle = absl::Seconds(1);
inline constexpr absl::Duration kStall = absl::Seconds(5);

// CleanRun's three clients as roles r1, r1, r2 in two databases.
inline RunData CleanRunOfRoles() {
  RunData run = CleanRun();
  run.roles = {"r1", "r2"};
  run.databases = {"d1", "d2"};
  run.clients[1].database = 1;
  run.clients[2].role = 1;
  return run;
}

// CleanRun on two coordinators c1 and c2 sharing a budget of 8 per worker,
// each with a limit of 8: clients 0 and 2 on c1, client 1 on c2; c2 idle
// from 2 s to 4 s. Its samples: 4 + 4 on both workers, c1 7 + c2 1 from
// 2.3 s, 4 + 4 again from 4.2 s.
inline RunData CleanRunOfCoordinators() {
  RunData run = CleanRun();
  run.coordinators = {"c1", "c2"};
  run.idle = Gap{absl::Seconds(2), absl::Seconds(4)};
  for (WorkerFigures& w : run.workers) {
    w.limit = 8;
    w.coordinator_limit = 8;
    w.budget = true;
    w.peak = 8;
    w.peak_per_coordinator = {7, 4};
  }
  run.clients[1].coordinator = 1;
  run.clients[1].completion_times =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(2));
  for (absl::Duration t : Every(absl::Milliseconds(100), absl::Seconds(4), run.duration)) {
    run.clients[1].completion_times.push_back(t);
  }
  run.clients[1].completed = static_cast<int64_t>(run.clients[1].completion_times.size());
  run.samples.clear();
  for (int ms = 10; ms <= 10000; ms += 10) {
    const bool shifted = ms >= 2300 && ms < 4200;
    const std::vector<int> split = shifted ? std::vector<int>{7, 1} : std::vector<int>{4, 4};
    Sample s = At(ms, {8, 8});
    s.per_coordinator = {split, split};
    run.samples.push_back(s);
  }
  return run;
}

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_TEST_RUNS_H_
