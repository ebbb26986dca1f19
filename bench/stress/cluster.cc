// The stress driver's cluster: starting local servers or taking given ones,
// readying every node for the clients (roles, databases, shard tables, the
// extension's catalog), and removing what the driver started, on Die too.

#include "stress/cluster.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace connthrottle::stress {

std::atomic<bool> g_interrupted{false};

namespace {

// The cluster this process started, stopped and removed by Die() too.
std::atomic<Cluster*> g_cluster{nullptr};

void StopCluster() {
  if (Cluster* c = g_cluster.exchange(nullptr)) c->Stop();
}

}  // namespace

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "connthrottle-stress: %s\n", message.c_str());
  StopCluster();
  std::exit(2);
}

std::optional<Endpoint> ParseEndpoint(const std::string& text) {
  size_t colon = text.rfind(':');
  Endpoint e;
  if (colon == std::string::npos || !absl::SimpleAtoi(text.substr(colon + 1), &e.port)) {
    return std::nullopt;
  }
  e.host = text.substr(0, colon);
  e.name = text;
  return e;
}

// ---- the cluster -------------------------------------------------------------

Cluster::~Cluster() {
  Cluster* self = this;
  g_cluster.compare_exchange_strong(self, nullptr);
  Stop();
}

void Cluster::Stop() {
  std::lock_guard<std::mutex> lock(stop_mu);
  worker_servers.clear();
  coordinator_servers.clear();
  if (!root.empty()) cluster::RemoveTree(root);
  root.clear();
}

ConnParams Cluster::Params(const Endpoint& e, const std::string& application,
                           const std::string& database, const std::string& user) const {
  ConnParams p;
  p.Set("host", e.host)
      .Set("port", std::to_string(e.port))
      .Set("dbname", database)
      .Set("user", user)
      .Set("connect_timeout", "10")
      .Set("application_name", application);
  return p;
}

absl::StatusOr<std::unique_ptr<PgClient>> Cluster::Connect(const Endpoint& e,
                                                           const std::string& application,
                                                           const std::string& database,
                                                           const std::string& user) const {
  absl::StatusOr<std::unique_ptr<PgClient>> c =
      PgClient::Connect(Params(e, application, database, user));
  if (c.ok()) {
    std::lock_guard<std::mutex> lock(own_mu);
    ++own_connections[{e.host, e.port}];
  }
  return c;
}

int64_t Cluster::OwnConnections(const Endpoint& e) const {
  std::lock_guard<std::mutex> lock(own_mu);
  auto it = own_connections.find({e.host, e.port});
  return it == own_connections.end() ? 0 : it->second;
}

void MustExec(PgClient& client, const std::string& sql) {
  absl::Status s = client.Exec(sql);
  if (!s.ok()) Die(std::string(s.message()));
}

std::unique_ptr<PgClient> MustConnect(const Cluster& c, const Endpoint& e,
                                      const std::string& database) {
  auto client = c.Connect(e, "connthrottle-setup", database);
  if (!client.ok()) Die(std::string(client.status().message()));
  return *std::move(client);
}

// ---- starting it ---------------------------------------------------------------

namespace {

// The cluster given by --coordinator and --worker_nodes.
void UseGivenServers(const Options& options, Cluster& c) {
  std::optional<Endpoint> coord = ParseEndpoint(options.coordinator);
  if (!coord) Die("--coordinator must be host:port");
  c.coordinators = {*coord};
  for (absl::string_view w : absl::StrSplit(options.worker_nodes, ',', absl::SkipEmpty())) {
    std::optional<Endpoint> e = ParseEndpoint(std::string(w));
    if (!e) Die("--worker_nodes must be host:port,host:port");
    c.workers.push_back(*e);
  }
  if (c.workers.empty()) Die("--coordinator needs --worker_nodes");
}

// Starts --workers local workers and, when asked, a coordinator with the
// extension preloaded (or --coordinators of them, each with its id and its
// connections named apart, leasing from workers that load the extension
// too), in a new directory that Stop() removes.
void StartLocalServers(const Options& options, Cluster& c, bool need_coordinator) {
  absl::StatusOr<std::string> root = cluster::MakeServerRoot("connthrottle-stress-");
  if (!root.ok()) Die(std::string(root.status().message()));
  c.root = *root;
  const bool several = options.several_coordinators();
  std::fprintf(stderr, "starting a local cluster in %s ...\n", c.root.c_str());
  for (int w = 0; w < options.workers; ++w) {
    cluster::ServerConfig config;
    config.name = absl::StrCat("worker", w + 1);
    config.max_connections = options.worker_max_connections;
    // Every backend a worker starts is logged ("connection received"):
    // the report's worker backends per query come from there.
    config.settings = {{"log_connections", "on"}};
    // Several coordinators: the worker keeps the budget and grants its
    // leases (set per run, SetLimit), admitting no connection without one.
    config.preload_connthrottle = several;
    if (several) config.settings.push_back({"connthrottle.unleased_connections", "0"});
    auto server = LocalServer::Start(c.root, config);
    if (!server.ok()) Die(std::string(server.status().message()));
    c.workers.push_back({(*server)->host(), (*server)->port(), config.name});
    c.worker_servers.push_back(*std::move(server));
  }
  if (!need_coordinator) return;
  for (int i = 0; i < options.coordinators; ++i) {
    cluster::ServerConfig config;
    config.name = several ? absl::StrCat("coordinator", i + 1) : "coordinator";
    config.max_connections = options.clients + 20;
    config.preload_connthrottle = true;
    config.settings = {{"connthrottle.connection_wait_timeout", "'15s'"},
                       {"connthrottle.local_node", "'none'"}};
    if (several) {
      const std::string id = absl::StrCat("c", i + 1);
      c.coordinator_ids.push_back(id);
      config.settings.push_back({"connthrottle.coordinator_id", absl::StrCat("'", id, "'")});
      // The workers' superuser: the servers run as another OS user.
      config.settings.push_back({"connthrottle.lease_user", "'postgres'"});
      config.settings.push_back(
          {"connthrottle.node_conninfo",
           absl::StrCat("'application_name=", CoordinatorApplication(c, i), "'")});
    }
    auto server = LocalServer::Start(c.root, config);
    if (!server.ok()) Die(std::string(server.status().message()));
    c.coordinators.push_back({(*server)->host(), (*server)->port(), config.name});
    c.coordinator_servers.push_back(*std::move(server));
  }
}

// The roles of --roles: the superuser postgres alone, or roles the driver
// makes. (The names are SQL identifiers as they are: they are pasted into
// statements.)
std::vector<std::string> RoleNames(int n) {
  if (n <= 1) return {"postgres"};
  std::vector<std::string> names;
  for (int r = 1; r <= n; ++r) names.push_back(absl::StrCat("connthrottle_stress_role", r));
  return names;
}

// The databases of --databases: postgres, then databases the driver makes.
std::vector<std::string> DatabaseNames(int n) {
  std::vector<std::string> names = {"postgres"};
  for (int d = 2; d <= n; ++d) names.push_back(absl::StrCat("connthrottle_stress_db", d));
  return names;
}

// Whether the catalog query `sql` (a count, with `name` as $1) counts
// `name`.
bool Exists(PgClient& client, const std::string& sql, const std::string& name) {
  absl::StatusOr<cluster::QueryResult> r = client.Query(sql, {name});
  if (!r.ok()) Die(std::string(r.status().message()));
  return r->Value() != "0";
}

// Makes the clients' login roles on `server` where they are missing (a
// cluster given with --coordinator may have them from an earlier run, and a
// worker may be the same server as another node). Roles belong to the
// whole server: once per server.
void CreateRoles(const Cluster& c, const Endpoint& server) {
  if (!c.MadeRoles()) return;
  std::unique_ptr<PgClient> client = MustConnect(c, server);
  for (const std::string& role : c.roles) {
    if (Exists(*client, "SELECT count(*) FROM pg_roles WHERE rolname = $1", role)) continue;
    MustExec(*client, absl::StrCat("CREATE ROLE ", role, " LOGIN"));
  }
}

// Makes the clients' databases but postgres on `server` where they are
// missing.
void CreateDatabases(const Cluster& c, const Endpoint& server) {
  if (c.databases.size() <= 1) return;
  std::unique_ptr<PgClient> client = MustConnect(c, server);
  for (size_t d = 1; d < c.databases.size(); ++d) {
    if (Exists(*client, "SELECT count(*) FROM pg_database WHERE datname = $1", c.databases[d])) {
      continue;
    }
    MustExec(*client, absl::StrCat("CREATE DATABASE ", c.databases[d]));
  }
}

// Readies worker `w`: the clients' roles, and in each of their databases
// the shard table with data and the COPY target, which the roles may read
// and write. Returns the worker's max_connections.
int PrepareWorker(const Cluster& c, const Endpoint& w) {
  CreateRoles(c, w);
  CreateDatabases(c, w);
  int max_connections = 0;
  for (const std::string& database : c.databases) {
    std::unique_ptr<PgClient> client = MustConnect(c, w, database);
    MustExec(*client,
             "DROP TABLE IF EXISTS shard, items; "
             "CREATE TABLE shard (id int PRIMARY KEY, payload text); "
             "INSERT INTO shard SELECT g, md5(g::text) FROM generate_series(1, 20000) g; "
             "CREATE TABLE items (id int, name text); ANALYZE shard");
    if (c.MadeRoles()) {
      const std::string roles = absl::StrJoin(c.roles, ", ");
      MustExec(*client, absl::StrCat("GRANT SELECT ON shard TO ", roles,
                                     "; GRANT INSERT ON items TO ", roles));
    }
    max_connections = std::atoi(client->QueryValue("SHOW max_connections")->c_str());
  }
  return max_connections;
}

// Readies a coordinator: the clients' roles, and in each of their
// databases the extension and its catalog of the workers (both are per
// database), with the roles allowed to run the workload's functions. A role
// that is not a superuser may only reach nodes of the catalog.
void PrepareCoordinator(const Cluster& c, const Endpoint& coordinator) {
  CreateRoles(c, coordinator);
  CreateDatabases(c, coordinator);
  for (const std::string& database : c.databases) {
    std::unique_ptr<PgClient> client = MustConnect(c, coordinator, database);
    MustExec(*client, "CREATE EXTENSION IF NOT EXISTS connthrottle");
    MustExec(*client, "DELETE FROM connthrottle.worker_node");
    for (const Endpoint& w : c.workers) {
      absl::StatusOr<cluster::QueryResult> r =
          client->Query("SELECT connthrottle.add_node($1, $2)", {w.host, std::to_string(w.port)});
      if (!r.ok()) Die(std::string(r.status().message()));
    }
    if (c.MadeRoles()) {
      MustExec(*client, absl::StrCat("GRANT EXECUTE ON FUNCTION "
                                     "connthrottle.run_tasks(text[], integer[], text[], boolean), "
                                     "connthrottle.distribute(text, text, text[], integer[]) TO ",
                                     absl::StrJoin(c.roles, ", ")));
    }
  }
}

}  // namespace

std::unique_ptr<Cluster> StartCluster(const Options& options, bool need_coordinator) {
  auto c = std::make_unique<Cluster>();
  g_cluster = c.get();
  c->roles = RoleNames(options.roles);
  c->databases = DatabaseNames(options.databases);
  if (!options.coordinator.empty()) {
    UseGivenServers(options, *c);
  } else {
    StartLocalServers(options, *c, need_coordinator);
  }
  for (const Endpoint& w : c->workers) {
    c->worker_max_connections.push_back(PrepareWorker(*c, w));
    // The lease functions live in the extension, in lease_database.
    if (options.several_coordinators()) {
      MustExec(*MustConnect(*c, w), "CREATE EXTENSION IF NOT EXISTS connthrottle");
    }
  }
  for (const Endpoint& coordinator : c->coordinators) PrepareCoordinator(*c, coordinator);
  return c;
}

// With roles that are not superusers a worker accepts fewer connections
// from the clients than max_connections (less superuser_reserved_connections),
// so a limit set near max_connections may let the coordinator open more
// than the worker accepts. The worker refuses those with "too many clients",
// which the shared pool retries without the clients seeing an error: says so
// before the run. Nothing to say, and no connection, as the superuser. (The
// limit is the node's across all databases: more databases open no more.)
void WarnIfWorkersMayRefuse(const Cluster& cluster, int limit) {
  if (!cluster.MadeRoles()) return;
  const int64_t most = limit;
  for (const Endpoint& w : cluster.workers) {
    std::unique_ptr<PgClient> client = MustConnect(cluster, w);
    int accepts = std::atoi(client->QueryValue("SHOW max_connections").value_or("0").c_str());
    if (cluster.MadeRoles()) {
      accepts -= std::atoi(
          client->QueryValue("SHOW superuser_reserved_connections").value_or("0").c_str());
    }
    if (most <= accepts) continue;
    std::fprintf(stderr,
                 "note: the limit of %lld connections to %s is more than it accepts from the "
                 "clients' roles (%d); it will refuse the rest\n",
                 static_cast<long long>(most), w.name.c_str(), accepts);
  }
}

// ---- the coordinator's settings and counters ---------------------------------

namespace {

// Sets `settings` on `server` (ALTER SYSTEM, a reload) and waits until a new
// session sees every value; or dies after 10 s.
void SetAndAwait(const Cluster& cluster, const Endpoint& server,
                 const std::vector<std::pair<std::string, std::string>>& settings) {
  auto c = cluster.Connect(server, "connthrottle-setup");
  if (!c.ok()) Die(std::string(c.status().message()));
  for (const auto& [name, value] : settings) {
    MustExec(**c, absl::StrCat("ALTER SYSTEM SET ", name, " = '", value, "'"));
  }
  MustExec(**c, "SELECT pg_reload_conf()");
  // The reload is asynchronous: wait until a new session sees the values.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    auto probe = cluster.Connect(server, "connthrottle-setup");
    bool all = probe.ok();
    for (size_t i = 0; all && i < settings.size(); ++i) {
      all = (*probe)->QueryValue(absl::StrCat("SHOW ", settings[i].first)).value_or("") ==
            settings[i].second;
    }
    if (all) return;
    absl::SleepFor(absl::Milliseconds(20));  // polling the server, bounded
  }
  Die(absl::StrCat(server.name, " did not apply its settings for the run within 10 s"));
}

}  // namespace

void SetLimit(const Cluster& cluster, int limit, const std::string& transport, int worker_budget,
              int per_database_limit) {
  const bool several = cluster.coordinators.size() > 1;
  if (several) {
    for (const Endpoint& w : cluster.workers) {
      SetAndAwait(cluster, w, {{"connthrottle.worker_budget", absl::StrCat(worker_budget)}});
    }
  }
  for (const Endpoint& coordinator : cluster.coordinators) {
    std::vector<std::pair<std::string, std::string>> settings = {
        {"connthrottle.max_shared_pool_size", absl::StrCat(limit)},
        {"connthrottle.executor_transport", transport},
        {"connthrottle.max_shared_pool_size_per_database", absl::StrCat(per_database_limit)}};
    if (several) {
      settings.push_back({"connthrottle.worker_leases", worker_budget > 0 ? "on" : "off"});
    }
    SetAndAwait(cluster, coordinator, settings);
  }
  // The shared pool keeps its connections across runs: after a run with a
  // higher limit it closes those over the new one as they go idle. Wait
  // for that, so that the next run is judged on its own connections.
  if (limit < 0) return;
  for (const Endpoint& coordinator : cluster.coordinators) {
    auto c = cluster.Connect(coordinator, "connthrottle-setup");
    if (!c.ok()) Die(std::string(c.status().message()));
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (std::atoi((*c)->QueryValue("SELECT coalesce(max(connections - forced), 0) FROM "
                                      "connthrottle.nodes WHERE database IS NULL")
                         .value_or("0")
                         .c_str()) > limit) {
      if (absl::Now() > give_up) {
        Die(absl::StrCat(coordinator.name, " still holds more connections to a node than the ",
                         "run's limit of ", limit, " after 10 s"));
      }
      absl::SleepFor(absl::Milliseconds(20));  // polling the server, bounded
    }
  }
}

std::string CoordinatorApplication(const Cluster& cluster, size_t c) {
  return c < cluster.coordinator_ids.size()
             ? absl::StrCat("connthrottle/", cluster.coordinator_ids[c])
             : std::string("connthrottle");
}

std::pair<int64_t, int64_t> WaitFigures(const Cluster& cluster) {
  std::pair<int64_t, int64_t> sum = {0, 0};
  for (const Endpoint& coordinator : cluster.coordinators) {
    auto c = cluster.Connect(coordinator, "connthrottle-setup");
    if (!c.ok()) return {-1, -1};
    absl::StatusOr<cluster::QueryResult> r =
        (*c)->Query("SELECT waited, wakeups FROM connthrottle.table_stats()");
    if (!r.ok() || r->rows.size() != 1 || !r->rows[0][0] || !r->rows[0][1]) return {-1, -1};
    sum.first += std::atoll(r->rows[0][0]->c_str());
    sum.second += std::atoll(r->rows[0][1]->c_str());
  }
  return sum;
}

}  // namespace connthrottle::stress
