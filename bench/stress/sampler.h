// The monitor: samples every worker's own pg_stat_activity every
// --sample_interval on a thread of its own, counting the connections the
// coordinators have open to it (per database and per coordinator too), for
// the peaks the limit is judged on and for the progress line.

#ifndef CONNTHROTTLE_BENCH_STRESS_SAMPLER_H_
#define CONNTHROTTLE_BENCH_STRESS_SAMPLER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "stress/cluster.h"
#include "stress/run_data.h"

namespace connthrottle::stress {

class Sampler {
 public:
  // Connects to every worker of `cluster` (or dies).
  Sampler(const Cluster& cluster, absl::Duration interval);

  // Samples from now on, each sample timed from `start`, until Stop().
  void Start(absl::Time start);
  void Stop();

  std::vector<Sample> samples();
  // The latest sample's count per worker.
  std::vector<int> latest();

 private:
  void Boost(const PgClient& client) const;
  static constexpr int kMonitorNice = -10;
  bool Count(PgClient& client, int* total, std::vector<int>* per_database,
             std::vector<int>* per_coordinator) const;
  void Loop();
  Sample TakeSample();

  const Cluster& cluster_;
  absl::Duration interval_;
  const size_t databases_;
  const size_t coordinators_;  // 0 with one coordinator (no ids)
  std::string query_;          // the counts of one sample, per worker
  std::vector<std::optional<std::string>> params_;
  std::vector<std::unique_ptr<PgClient>> clients_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  absl::Time start_;
  std::mutex mu_;
  std::vector<Sample> samples_;
  std::vector<int> latest_;
};

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_SAMPLER_H_
