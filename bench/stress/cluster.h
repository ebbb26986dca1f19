// The cluster the stress driver runs against: a coordinator (or several that
// share the workers, --coordinators) and its workers, either started here on
// loopback ports (and removed again, by Die too) or given with --coordinator,
// and readied for the clients' roles and databases. Also the coordinators'
// and workers' settings and counters that a run reads and sets.

#ifndef CONNTHROTTLE_BENCH_STRESS_CLUSTER_H_
#define CONNTHROTTLE_BENCH_STRESS_CLUSTER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "stress/options.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"

namespace connthrottle::stress {

using cluster::LocalServer;
using cluster::PgClient;

// Set by SIGINT or SIGTERM: the run stops early, the cluster is removed.
extern std::atomic<bool> g_interrupted;

// Prints `message`, stops and removes the cluster this process started, and
// exits with status 2.
[[noreturn]] void Die(const std::string& message);

struct Endpoint {
  std::string host;
  int port = 0;
  std::string name;
};

// "host:port", named so; nullopt when it is not.
std::optional<Endpoint> ParseEndpoint(const std::string& text);

struct Cluster {
  std::string root;  // our own cluster's directory, "" for a given one
  std::vector<std::unique_ptr<LocalServer>> coordinator_servers;
  std::vector<std::unique_ptr<LocalServer>> worker_servers;
  // None in library mode; one, or --coordinators of our own.
  std::vector<Endpoint> coordinators;
  // With several coordinators, each one's connthrottle.coordinator_id
  // ("c1".."cN"); its connections to the workers carry the application_name
  // "connthrottle/" + id, by which the monitor counts them apart.
  std::vector<std::string> coordinator_ids;
  std::vector<Endpoint> workers;
  std::vector<int> worker_max_connections;
  // Who the clients are (--roles, --databases): roles and databases that
  // exist on the coordinator and on every worker. By default the superuser
  // postgres in the database postgres, as the driver's own connections.
  std::vector<std::string> roles = {"postgres"};
  std::vector<std::string> databases = {"postgres"};
  // Whether the clients run as roles the driver made, which need grants.
  bool MadeRoles() const { return roles.size() > 1; }

  // Stops and removes the cluster; Die() no longer does then.
  ~Cluster();

  // Stops our own servers and removes their directory. Idempotent.
  void Stop();
  std::mutex stop_mu;

  ConnParams Params(const Endpoint& e, const std::string& application, const std::string& database,
                    const std::string& user) const;

  // A connection to `e` as `user` to `database` (by default the driver's
  // own: the superuser postgres to postgres).
  absl::StatusOr<std::unique_ptr<PgClient>> Connect(const Endpoint& e,
                                                    const std::string& application,
                                                    const std::string& database = "postgres",
                                                    const std::string& user = "postgres") const;

  // Connections the driver itself (monitor, setup, faults) opened to `e`:
  // they are not the workload's, and are subtracted from what a worker saw.
  int64_t OwnConnections(const Endpoint& e) const;
  mutable std::mutex own_mu;
  mutable std::map<std::pair<std::string, int>, int64_t> own_connections;
};

// Runs `sql`, or dies with the error.
void MustExec(PgClient& client, const std::string& sql);

// The driver's own connection to `e` (as postgres, to `database`), or dies.
std::unique_ptr<PgClient> MustConnect(const Cluster& c, const Endpoint& e,
                                      const std::string& database = "postgres");

// The cluster of `options` (--coordinator and --worker_nodes, or else
// --workers local workers and, with `need_coordinator`, a local coordinator),
// with the clients' roles and databases, the shard tables on the workers and
// the extension's catalog of the workers on the coordinator. Die() stops and
// removes it until it is destroyed.
std::unique_ptr<Cluster> StartCluster(const Options& options, bool need_coordinator);

// Says before the run when the workers may refuse some of the `limit`
// connections per node that the clients' roles may have.
void WarnIfWorkersMayRefuse(const Cluster& cluster, int limit);

// The limit and the transport of the next run on every coordinator, and
// with several coordinators the workers' budget (-1: none) and whether the
// coordinators lease it (a reload each, awaited).
// `per_database_limit` is max_shared_pool_size_per_database (-1: off).
void SetLimit(const Cluster& cluster, int limit, const std::string& transport,
              int worker_budget = -1, int per_database_limit = -1);

// The application_name of coordinator `c`'s connections to the workers.
std::string CoordinatorApplication(const Cluster& cluster, size_t c);

// The coordinators' cumulative (waited, wakeups) summed, or (-1, -1).
std::pair<int64_t, int64_t> WaitFigures(const Cluster& cluster);

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_CLUSTER_H_
