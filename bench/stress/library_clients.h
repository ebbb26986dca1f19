// Library mode's clients: processes (this binary again, as
// --internal_library_client) that use the C++ library directly, an
// AdaptiveExecutor over a named shared segment with no coordinator, and
// report what they did through a shared results file.

#ifndef CONNTHROTTLE_BENCH_STRESS_LIBRARY_CLIENTS_H_
#define CONNTHROTTLE_BENCH_STRESS_LIBRARY_CLIENTS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "stress/clients.h"
#include "stress/cluster.h"
#include "stress/options.h"

namespace connthrottle::stress {

// The body of library-mode client process `index`: runs the workload until
// the driver says stop. Its exit status.
int RunLibraryClient(const Options& options, int index);

struct SharedResults;

class LibraryClients : public Clients {
 public:
  // Makes the run's shared segment (named after `label`) and results, and
  // starts `count` client processes with the limit `limit`.
  LibraryClients(const Cluster& cluster, const Options& options, const std::string& label,
                 int limit, uint64_t seed, int count);

  // The processes run from construction on.
  void Start(absl::Time /*start*/) override {}
  // Also the segment's waits; removes the segment and the results.
  void Finish(RunData& run) override;
  bool KillAndReplace(int client, std::mt19937_64& rng) override;

 private:
  pid_t Spawn(int index, uint64_t seed) const;
  void Collect(RunData& run);

  const Cluster& cluster_;
  const Options& options_;
  const int limit_;
  const uint64_t seed_;
  const std::string segment_name_;
  std::unique_ptr<SharedSegment> segment_;
  // Registered to reclaim the slots of killed clients.
  std::unique_ptr<Owner> observer_;
  SharedResults* results_ = nullptr;
  std::mutex pids_mu_;
  std::vector<pid_t> pids_;
};

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_LIBRARY_CLIENTS_H_
