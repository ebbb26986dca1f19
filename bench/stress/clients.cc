// What both modes' clients share: recording their tally in the run, and
// the wait for the shared counters to come back to zero after them.

#include "stress/clients.h"

#include "absl/time/clock.h"

namespace connthrottle::stress {

void ClientTally::RecordIn(RunData& run) {
  run.clients = std::move(figures);
  for (const LatencyRecorder& l : latencies) run.latency.Merge(l);
  for (const auto& kinds : latencies_by_kind) {
    for (const auto& [kind, l] : kinds) run.latency_by_kind[kind].Merge(l);
  }
  run.too_many_clients_errors = too_many.load();
  run.sqlstate_53300_errors = sqlstate_53300.load();
  run.other_errors = other_errors.load();
  run.hung = hung.load();
  run.queries = queries.load();
}

void AwaitCountersZero(absl::Time stopped, absl::Duration settle,
                       const std::function<std::optional<std::string>()>& left, RunData& run) {
  for (;;) {
    const std::optional<std::string> now_left = left();
    absl::Duration after = absl::Now() - stopped;
    if (now_left && now_left->empty()) {
      run.counters_zero_after = after;
      return;
    }
    if (after > settle * 5) {
      if (now_left) run.counters_left += *now_left;
      return;
    }
    absl::SleepFor(absl::Milliseconds(5));  // polling the counters, bounded
  }
}

}  // namespace connthrottle::stress
