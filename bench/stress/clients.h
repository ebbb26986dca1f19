// The clients of one run, in either mode (sql_clients.h, library_clients.h):
// what the run, its progress line and the fault injector see of them, and
// the tally of what they did, which ends up in the run's RunData.

#ifndef CONNTHROTTLE_BENCH_STRESS_CLIENTS_H_
#define CONNTHROTTLE_BENCH_STRESS_CLIENTS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "stress/run_data.h"

namespace connthrottle::stress {

// At most this many clients (library mode's shared results have a slot each).
inline constexpr int kMaxClients = 256;

// What the live progress line shows: completions so far and the latencies
// since it last showed them.
struct Progress {
  std::atomic<int64_t> completed{0};
  std::mutex mu;
  LatencyRecorder recent;
};

// What the clients did, gathered while they run (each client writes its own
// entries; the counts are shared).
struct ClientTally {
  explicit ClientTally(int clients)
      : figures(clients), latencies(clients), latencies_by_kind(clients) {}

  // Moves the clients' figures, latencies and error counts into `run`.
  void RecordIn(RunData& run);

  std::vector<ClientFigures> figures;
  std::vector<LatencyRecorder> latencies;
  std::vector<std::map<std::string, LatencyRecorder>> latencies_by_kind;
  std::atomic<int64_t> too_many{0}, other_errors{0}, hung{0}, queries{0}, sqlstate_53300{0};
  Progress progress;
};

class Clients {
 public:
  explicit Clients(int count) : tally_(count) {}
  virtual ~Clients() = default;

  int count() const { return static_cast<int>(tally_.figures.size()); }
  Progress& progress() { return tally_.progress; }

  // Starts the clients, at the run's `start`.
  virtual void Start(absl::Time start) = 0;
  // Once the run is over: stops the clients, waits for them to be gone and
  // for every shared counter to be zero, and records what they did in `run`.
  virtual void Finish(RunData& run) = 0;

  // For the fault injector. Library mode: SIGKILLs client `client` and starts
  // another in its place, with a seed drawn from `rng`; false if it could not.
  virtual bool KillAndReplace(int /*client*/, std::mt19937_64& /*rng*/) { return false; }
  // Sql mode: the coordinator backend of client `client`'s session, 0 if none.
  virtual int BackendPid(int /*client*/) const { return 0; }

 protected:
  ClientTally tally_;
};

// Once the clients are gone (at `stopped`): polls `left` every 5 ms until it
// says nothing is counted any more (""), and sets run.counters_zero_after to
// the time that took; or, if that has not happened within 5 x `settle`, sets
// run.counters_left to what was still counted (nullopt: it could not tell).
void AwaitCountersZero(absl::Time stopped, absl::Duration settle,
                       const std::function<std::optional<std::string>()>& left, RunData& run);

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_CLIENTS_H_
