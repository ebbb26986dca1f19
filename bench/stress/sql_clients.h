// Sql mode's clients: a thread per client, each a coordinator session (as
// its role, in its database) that runs the workload through
// connthrottle.run_tasks and connthrottle.distribute until the run stops.

#ifndef CONNTHROTTLE_BENCH_STRESS_SQL_CLIENTS_H_
#define CONNTHROTTLE_BENCH_STRESS_SQL_CLIENTS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "stress/clients.h"
#include "stress/cluster.h"
#include "stress/options.h"
#include "stress/workload.h"

namespace connthrottle::stress {

class SqlSession;
struct OpOutcome;

class SqlClients : public Clients {
 public:
  // `count` clients that run until `stop` is set, noting their errors in
  // `run` as they go. Reads the coordinator's wait counts before the run.
  SqlClients(const Cluster& cluster, const Options& options, int count, uint64_t seed,
             const std::atomic<bool>& stop, RunData& run);
  ~SqlClients() override;

  void Start(absl::Time start) override;
  // Also the coordinator's waits over the run and the clients' roles and
  // databases.
  void Finish(RunData& run) override;
  int BackendPid(int client) const override;

 private:
  bool Idle(int client, absl::Duration at) const;
  void Loop(int client, absl::Time start);
  void Tally(int client, Op op, const OpOutcome& o, absl::Duration at);

  const Cluster& cluster_;
  const Options& options_;
  const uint64_t seed_;
  const std::atomic<bool>& stop_;
  RunData& run_;
  const Mix mix_;
  std::pair<int64_t, int64_t> waits_before_;
  std::vector<std::unique_ptr<SqlSession>> sessions_;
  std::vector<std::thread> threads_;
  std::mutex errors_mu_;  // run_.errors
};

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_SQL_CLIENTS_H_
