// connthrottle-stress — proves the connection limits hold under load and
// faults, on a real cluster, and shows what they cost.
//
// By default it starts its own local cluster (a coordinator with the
// extension and --workers PostgreSQL 15 workers on free loopback ports, as
// an unprivileged user), drives --clients concurrent clients for --duration,
// samples every worker's own pg_stat_activity every --sample_interval, injects
// the faults asked for, and judges the invariants of DESIGN.md. With
// --compare_unthrottled it runs the same workload again with throttling off;
// with --compare_transports again throttled, through the other transport
// (direct: each session its own connections; shared_pool: the extension's
// communicator). Exit status 0 only if every invariant held in every
// throttled run.
//
// Modes:
//   sql      clients are coordinator sessions running connthrottle.run_tasks
//            (fan-out to every worker, or a router task to one worker) and
//            connthrottle.distribute (COPY with reservations), per --mix.
//   library  clients are processes that use the C++ library directly: an
//            AdaptiveExecutor over a named shared segment, no coordinator.
//            --kill_clients SIGKILLs them at random moments.
//
// See --help for every option.

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "stress/cluster.h"
#include "stress/options.h"
#include "stress/run_data.h"
#include "stress/sampler.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"

ABSL_FLAG(std::string, mode, "sql",
          "sql: clients are coordinator sessions; library: client "
          "processes use the C++ library through a named shared segment");
ABSL_FLAG(int, workers, 2, "workers of the local cluster started by the driver");
ABSL_FLAG(int, worker_max_connections, 30,
          "max_connections of the local workers: small, so that throttling matters");
ABSL_FLAG(int, limit, 20, "connthrottle.max_shared_pool_size for the throttled run");
ABSL_FLAG(int, clients, 32, "concurrent clients");
ABSL_FLAG(int, roles, 1,
          "sql mode: run the clients as this many roles, client i as role i % N. 1: the "
          "superuser postgres; more: login roles connthrottle_stress_role1..N, made on the "
          "coordinator and on every worker (if missing) with EXECUTE on run_tasks and "
          "distribute, SELECT on the shard table and INSERT on the COPY target");
ABSL_FLAG(int, databases, 1,
          "sql mode: spread the clients over this many databases, client i in database "
          "(i / roles) % N: postgres, then connthrottle_stress_db2..N, made on the coordinator "
          "(with the extension and its catalog of the workers) and on every worker (with the "
          "shard table and its data) if missing. The limit counts per (node, database)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(30), "length of each run");
ABSL_FLAG(std::string, mix, "fanout=2,router=2,copy=1",
          "workload mix as name=weight: fanout (run_tasks on every worker), router (one task "
          "on one worker), copy (distribute rows with COPY and reservations; sql mode)");
ABSL_FLAG(int, tasks_per_worker, 4, "tasks per worker in a fan-out execution");
ABSL_FLAG(std::string, fanout_task, "scan",
          "what each fan-out task runs: scan (count a sixteenth of the shard table, a few "
          "ms) or short (a primary-key lookup, well under a millisecond)");
ABSL_FLAG(std::string, coordinator, "",
          "use this coordinator (host:port, with the extension) instead of starting a cluster");
ABSL_FLAG(std::string, worker_nodes, "", "with --coordinator: the workers as host:port,host:port");
ABSL_FLAG(std::string, transport, "",
          "connthrottle.executor_transport of the throttled run (sql mode): shared_pool (the "
          "default, as the extension's) or direct");
ABSL_FLAG(bool, compare_transports, false,
          "also run the workload throttled through the other transport (sql mode)");
ABSL_FLAG(bool, compare_unthrottled, false,
          "also run the workload with throttling off (max_shared_pool_size = -1)");
ABSL_FLAG(std::string, out, "", "directory for report.txt, report.json, series CSVs and chart.png");
ABSL_FLAG(bool, json, false, "print the JSON report on stdout instead of the text report");
ABSL_FLAG(bool, progress, true, "show a live progress line when stderr is a terminal");
ABSL_FLAG(absl::Duration, sample_interval, absl::Milliseconds(10),
          "how often each worker's pg_stat_activity is sampled (at most 20 ms)");
ABSL_FLAG(absl::Duration, statement_timeout, absl::Seconds(20),
          "deadline of one execution; an execution past it counts as hung");
ABSL_FLAG(absl::Duration, stall_window, absl::Seconds(5),
          "a client completing nothing for this long is a stall, and with --roles above 1 a "
          "role completing nothing for this long while the others complete is starved; "
          "either fails the run");
ABSL_FLAG(absl::Duration, settle, absl::Seconds(1),
          "how soon after the clients stop every shared counter must be zero");
ABSL_FLAG(int, kill_clients, 0,
          "library mode: SIGKILL this many client processes at random "
          "moments (each is replaced)");
ABSL_FLAG(int, terminate_coordinator_backends, 0,
          "sql mode: pg_terminate_backend this many random coordinator client backends");
ABSL_FLAG(int, terminate_worker_backends, 0,
          "pg_terminate_backend this many random coordinator connections on random workers");
ABSL_FLAG(bool, restart_worker, false, "stop a worker for 2 s in the middle of the run");
ABSL_FLAG(uint64_t, seed, 0, "random seed (0: from the clock)");
ABSL_FLAG(bool, judge_timing, true,
          "judge the monitor's cadence and --stall_window; false reports them without "
          "failing the run (the smoke tests, on shared machines where they measure the "
          "machine rather than connthrottle)");
ABSL_FLAG(int, internal_library_client, -1, "internal: run as library-mode client N");
ABSL_FLAG(std::string, internal_segment, "", "internal: library-mode segment name");

namespace connthrottle::stress {
namespace {

bool TooManyClients(const std::string& sqlstate, const std::string& message) {
  return sqlstate == "53300" || message.find("too many clients") != std::string::npos ||
         message.find("remaining connection slots") != std::string::npos;
}

// ---- the workload -------------------------------------------------------------

enum class Op { kFanout, kRouter, kCopy };

struct Mix {
  std::vector<std::pair<Op, int>> weights;
  int total = 0;

  static Mix Parse(const std::string& text, bool library) {
    Mix m;
    for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
      std::vector<std::string> kv = absl::StrSplit(part, '=');
      int weight = 1;
      if (kv.size() == 2 && !absl::SimpleAtoi(kv[1], &weight)) Die("bad --mix weight");
      Op op;
      if (kv[0] == "fanout") {
        op = Op::kFanout;
      } else if (kv[0] == "router") {
        op = Op::kRouter;
      } else if (kv[0] == "copy") {
        if (library) continue;  // COPY is exercised through the extension
        op = Op::kCopy;
      } else {
        Die(absl::StrCat("unknown --mix workload '", kv[0], "'"));
      }
      if (weight > 0) {
        m.weights.emplace_back(op, weight);
        m.total += weight;
      }
    }
    if (m.total == 0) Die("--mix selects no workload");
    return m;
  }

  Op Pick(std::mt19937_64& rng) const {
    int r = static_cast<int>(rng() % static_cast<uint64_t>(total));
    for (const auto& [op, w] : weights) {
      if (r < w) return op;
      r -= w;
    }
    return weights.back().first;
  }
};

// What one operation came to.
const char* OpName(Op op) {
  switch (op) {
    case Op::kFanout:
      return "fanout";
    case Op::kRouter:
      return "router";
    case Op::kCopy:
      return "copy";
  }
  return "?";
}

struct OpOutcome {
  bool ok = false;
  bool too_many_clients = false;
  bool hung = false;
  int64_t micros = 0;
  std::string error;  // the first error seen, when !ok
  // The SQLSTATE of `error` where known ("" for distribute's per-node
  // errors, which carry none).
  std::string sqlstate;
};

std::string ArrayLiteral(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  for (const std::string& i : items) quoted.push_back(absl::StrCat("\"", i, "\""));
  return absl::StrCat("{", absl::StrJoin(quoted, ","), "}");
}

// The SQL of fan-out task t of an execution keyed `key` (--fanout_task).
std::string FanoutTask(int key, int t) {
  if (absl::GetFlag(FLAGS_fanout_task) == "short") {
    return absl::StrCat("SELECT payload FROM shard WHERE id = ", (key + t * 997) % 20000 + 1);
  }
  return absl::StrCat("SELECT count(*) FROM shard WHERE id % 16 = ", (key + t) % 16);
}

// One sql-mode client: a coordinator session, as the role and in the
// database AssignClient gives client `index`.
class SqlClient {
 public:
  SqlClient(const Cluster& cluster, int index, uint64_t seed)
      : cluster_(cluster),
        index_(index),
        group_(AssignClient(index, static_cast<int>(cluster.roles.size()),
                            static_cast<int>(cluster.databases.size()))),
        rng_(seed) {}

  OpOutcome Run(Op op) {
    OpOutcome out;
    if (client_ == nullptr) {
      auto c = cluster_.Connect(cluster_.coordinator, absl::StrCat("stress-client-", index_),
                                cluster_.databases[group_.database], cluster_.roles[group_.role]);
      if (!c.ok()) {
        out.error = std::string(c.status().message());
        out.sqlstate = cluster::SqlState(c.status());
        out.too_many_clients = TooManyClients(out.sqlstate, out.error);
        return out;
      }
      client_ = *std::move(c);
      (void)client_->Exec(
          absl::StrCat("SET statement_timeout = ",
                       absl::ToInt64Milliseconds(absl::GetFlag(FLAGS_statement_timeout))));
    }
    std::vector<std::string> hosts, ports, commands;
    std::string sql;
    const int key = static_cast<int>(rng_() % 20000) + 1;
    switch (op) {
      case Op::kFanout:
        for (const Endpoint& w : cluster_.workers) {
          for (int t = 0; t < absl::GetFlag(FLAGS_tasks_per_worker); ++t) {
            hosts.push_back(w.host);
            ports.push_back(std::to_string(w.port));
            commands.push_back(FanoutTask(key, t));
          }
        }
        break;
      case Op::kRouter: {
        const Endpoint& w = cluster_.workers[rng_() % cluster_.workers.size()];
        hosts.push_back(w.host);
        ports.push_back(std::to_string(w.port));
        commands.push_back(absl::StrCat("SELECT payload FROM shard WHERE id = ", key));
        break;
      }
      case Op::kCopy:
        for (const Endpoint& w : cluster_.workers) {
          hosts.push_back(w.host);
          ports.push_back(std::to_string(w.port));
        }
        break;
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<cluster::QueryResult> r;
    if (op == Op::kCopy) {
      r = client_->Query(
          "SELECT count(*) FILTER (WHERE NOT success), coalesce(string_agg(error, '; '), '') "
          "FROM connthrottle.distribute('SELECT g, ''row '' || g FROM generate_series(1, 200) g',"
          " 'items', $1::text[], $2::int[])",
          {ArrayLiteral(hosts), ArrayLiteral(ports)});
    } else {
      r = client_->Query(
          "SELECT count(*) FILTER (WHERE NOT success), "
          "coalesce(string_agg(coalesce(sqlstate, '') || ' ' || error, '; '), '') "
          "FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
          {ArrayLiteral(hosts), ArrayLiteral(ports), ArrayLiteral(commands)});
    }
    out.micros = absl::ToInt64Microseconds(absl::Now() - start);
    if (!r.ok()) {
      const std::string state = cluster::SqlState(r.status());
      std::string message(r.status().message());
      // The server's words only, not the driver's own query text.
      if (size_t at = message.find("\" failed: "); at != std::string::npos) {
        message = message.substr(at + 10);
      }
      out.error = absl::StrCat(state, " ", message);
      out.sqlstate = state;
      out.too_many_clients = TooManyClients(state, message);
      out.hung = state == "57014" && message.find("statement timeout") != std::string::npos;
      if (state.empty() || state == "57P01" || state.rfind("08", 0) == 0) client_.reset();
      return out;
    }
    const std::string failed = r->rows[0][0].value_or("0");
    const std::string errors = r->rows[0][1].value_or("");
    out.too_many_clients = TooManyClients("", errors);
    out.ok = failed == "0";
    if (!out.ok) out.error = errors.substr(0, errors.find("; "));  // the first task's
    // run_tasks' errors start with their SQLSTATE (see the query).
    if (!out.ok && op != Op::kCopy) out.sqlstate = out.error.substr(0, out.error.find(' '));
    out.hung = out.micros > absl::ToInt64Microseconds(absl::GetFlag(FLAGS_statement_timeout));
    return out;
  }

  int BackendPid() const { return client_ != nullptr ? client_->BackendPid() : 0; }
  void Disconnect() { client_.reset(); }

 private:
  const Cluster& cluster_;
  int index_;
  ClientGroup group_;
  std::mt19937_64 rng_;
  std::unique_ptr<PgClient> client_;
};

// ---- library mode: shared results of client processes -----------------------

constexpr int kMaxClients = 256;
constexpr int kBuckets = 3600 * 10;     // completions per 100 ms, for an hour
constexpr int kLatencySamples = 20000;  // per client, latest kept

struct ClientSlot {
  std::atomic<int64_t> completed;
  std::atomic<int64_t> failed;
  std::atomic<int64_t> too_many_clients;
  std::atomic<int64_t> hung;
  std::atomic<int64_t> latencies_written;
  char last_error[256];  // written by the client only, read after it exited
  std::atomic<int64_t> latency_us[kLatencySamples];
  std::atomic<int32_t> per_bucket[kBuckets];
};

struct SharedResults {
  std::atomic<int> stop;
  std::atomic<int64_t> start_ns;  // CLOCK_REALTIME of the run's start
  ClientSlot clients[kMaxClients];
};

std::string ResultsPath(const std::string& segment) {
  return absl::StrCat("/dev/shm/", segment, "-results");
}

SharedResults* MapResults(const std::string& segment, bool create) {
  const std::string path = ResultsPath(segment);
  int fd = open(path.c_str(), O_RDWR | (create ? O_CREAT | O_TRUNC : 0) | O_CLOEXEC, 0600);
  if (fd < 0) Die(absl::StrCat("cannot open ", path));
  if (create && ftruncate(fd, sizeof(SharedResults)) != 0) Die("ftruncate failed");
  void* p = mmap(nullptr, sizeof(SharedResults), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) Die("mmap failed");
  return static_cast<SharedResults*>(p);
}

std::vector<NodeAddress> WorkerAddresses(const std::string& list) {
  std::vector<NodeAddress> out;
  for (absl::string_view w : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    std::optional<Endpoint> e = ParseEndpoint(std::string(w));
    if (e) out.push_back({e->host, e->port});
  }
  return out;
}

// The body of a library-mode client process.
int RunLibraryClient(int index) {
  const std::string segment_name = absl::GetFlag(FLAGS_internal_segment);
  auto segment = SharedSegment::Attach(segment_name);
  if (!segment.ok()) return 10;
  SharedResults* results = MapResults(segment_name, false);
  ClientSlot& me = results->clients[index];
  auto owner = (*segment)->table().RegisterOwner();
  if (!owner.ok()) return 11;
  StandaloneContext::Settings settings;
  settings.application_name = "connthrottle";
  settings.limits.max_shared_pool_size = absl::GetFlag(FLAGS_limit);
  StandaloneContext context(settings);
  ExecutorOptions options;
  options.slot_wait_timeout = absl::GetFlag(FLAGS_statement_timeout);
  AdaptiveExecutor executor(**owner, context, options);
  const std::vector<NodeAddress> workers = WorkerAddresses(absl::GetFlag(FLAGS_worker_nodes));
  const Mix mix = Mix::Parse(absl::GetFlag(FLAGS_mix), /*library=*/true);
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 7919 + static_cast<uint64_t>(getpid()));
  while (!results->stop.load()) {
    std::vector<Task> tasks;
    const int key = static_cast<int>(rng() % 20000) + 1;
    if (mix.Pick(rng) == Op::kFanout) {
      for (const NodeAddress& w : workers) {
        for (int t = 0; t < absl::GetFlag(FLAGS_tasks_per_worker); ++t) {
          tasks.push_back({w, FanoutTask(key, t)});
        }
      }
    } else {
      tasks.push_back({workers[rng() % workers.size()],
                       absl::StrCat("SELECT payload FROM shard WHERE id = ", key)});
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<ExecutionResult> r = executor.Execute(std::move(tasks));
    const absl::Time end = absl::Now();
    const int64_t micros = absl::ToInt64Microseconds(end - start);
    bool ok = r.ok();
    bool too_many = false;
    if (r.ok()) {
      for (const TaskResult& t : r->tasks) {
        ok = ok && t.status.ok();
        too_many = too_many || TooManyClients(t.sqlstate, std::string(t.status.message()));
      }
    }
    if (ok) {
      me.completed.fetch_add(1);
      int64_t bucket = (absl::ToUnixNanos(end) - results->start_ns.load()) / 100'000'000;
      if (bucket >= 0 && bucket < kBuckets) me.per_bucket[bucket].fetch_add(1);
    } else {
      me.failed.fetch_add(1);
    }
    if (!ok) {
      std::string error = r.ok() ? std::string() : std::string(r.status().message());
      for (size_t i = 0; r.ok() && i < r->tasks.size() && error.empty(); ++i) {
        if (!r->tasks[i].status.ok()) {
          error = absl::StrCat(r->tasks[i].sqlstate, " ", r->tasks[i].status.message());
        }
      }
      std::snprintf(me.last_error, sizeof(me.last_error), "%s", error.c_str());
    }
    if (too_many) me.too_many_clients.fetch_add(1);
    if (end - start > absl::GetFlag(FLAGS_statement_timeout)) me.hung.fetch_add(1);
    int64_t n = me.latencies_written.fetch_add(1);
    me.latency_us[n % kLatencySamples].store(micros);
  }
  return 0;
}

pid_t SpawnLibraryClient(int index, const std::string& segment,
                         const std::vector<Endpoint>& workers, int limit, uint64_t seed) {
  std::vector<std::string> hosts;
  for (const Endpoint& w : workers) hosts.push_back(absl::StrCat(w.host, ":", w.port));
  std::vector<std::string> args = {
      "/proc/self/exe",
      absl::StrCat("--internal_library_client=", index),
      absl::StrCat("--internal_segment=", segment),
      absl::StrCat("--worker_nodes=", absl::StrJoin(hosts, ",")),
      absl::StrCat("--limit=", limit),
      absl::StrCat("--mix=", absl::GetFlag(FLAGS_mix)),
      absl::StrCat("--tasks_per_worker=", absl::GetFlag(FLAGS_tasks_per_worker)),
      absl::StrCat("--fanout_task=", absl::GetFlag(FLAGS_fanout_task)),
      absl::StrCat("--statement_timeout=",
                   absl::FormatDuration(absl::GetFlag(FLAGS_statement_timeout))),
      absl::StrCat("--seed=", seed + static_cast<uint64_t>(index))};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  return pid;
}

// Backends worker `w` started for the workload so far: "connection received"
// lines in its log, less the driver's own connections; -1 for a worker the
// driver did not start (it cannot read that log).
int64_t BackendsStarted(const Cluster& cluster, size_t w) {
  if (w >= cluster.worker_servers.size()) return -1;
  std::ifstream in(cluster.worker_servers[w]->log_file());
  if (!in) return -1;
  int64_t received = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("connection received:") != std::string::npos) ++received;
  }
  return received - cluster.OwnConnections(cluster.workers[w]);
}

int64_t SessionsOpened(const Cluster& cluster, const Endpoint& w) {
  auto c = cluster.Connect(w, "connthrottle-setup");
  if (!c.ok()) return 0;
  absl::StatusOr<std::string> v =
      (*c)->QueryValue("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database");
  return v.ok() ? std::atoll(v->c_str()) : 0;
}

// ---- one run ----------------------------------------------------------------------

// Each worker's figures as they stand before a run with `limit`: the
// counters the run's figures are the difference from.
std::vector<WorkerFigures> WorkerFiguresBefore(const Cluster& cluster, int limit) {
  std::vector<WorkerFigures> workers;
  for (size_t w = 0; w < cluster.workers.size(); ++w) {
    WorkerFigures f;
    f.name = cluster.workers[w].name;
    f.limit = limit;
    f.max_connections = cluster.worker_max_connections[w];
    f.sessions_opened = -SessionsOpened(cluster, cluster.workers[w]);
    f.backends_started = BackendsStarted(cluster, w);
    workers.push_back(f);
  }
  return workers;
}

// Completes run.workers once the clients are done and run.samples taken:
// the peaks (per database too when there are several), the sessions and
// the backends the run cost each worker.
void WorkerFiguresAfter(const Cluster& cluster, RunData& run) {
  const std::vector<int> peaks = PeakPerWorker(run.samples, run.workers.size());
  for (size_t w = 0; w < run.workers.size(); ++w) run.workers[w].peak = peaks[w];
  if (cluster.databases.size() > 1) {
    std::vector<std::vector<int>> per_database =
        PeakPerWorkerAndDatabase(run.samples, run.workers.size(), cluster.databases.size());
    for (size_t w = 0; w < run.workers.size(); ++w) {
      run.workers[w].peak_per_database = std::move(per_database[w]);
    }
  }
  for (size_t w = 0; w < cluster.workers.size(); ++w) {
    run.workers[w].sessions_opened += SessionsOpened(cluster, cluster.workers[w]);
    // The workers log a backend's start as it happens; the clients are done
    // and have closed their connections, so the log is complete now.
    const int64_t before = run.workers[w].backends_started;
    const int64_t after = BackendsStarted(cluster, w);
    run.workers[w].backends_started = before < 0 || after < 0 ? -1 : after - before;
  }
}

// The roles and databases of a sql-mode run's clients, as SqlClient took
// them from AssignClient.
void RecordGroups(const Cluster& cluster, RunData& run) {
  run.roles = cluster.roles;
  run.databases = cluster.databases;
  for (size_t c = 0; c < run.clients.size(); ++c) {
    const ClientGroup g = AssignClient(static_cast<int>(c), static_cast<int>(cluster.roles.size()),
                                       static_cast<int>(cluster.databases.size()));
    run.clients[c].role = g.role;
    run.clients[c].database = g.database;
  }
}

// Library mode, once the client processes are gone: how long until every
// counter of the run's segment is zero (reclaiming the killed clients'
// slots), or what was left after 5 x --settle.
void AwaitLibraryCountersZero(SharedSegment& segment, Owner& observer, RunData& run) {
  const absl::Time stopped = absl::Now();
  for (;;) {
    observer.ReclaimDeadOwners();
    std::vector<KeyStats> left = segment.table().Snapshot();
    absl::Duration after = absl::Now() - stopped;
    if (left.empty()) {
      run.counters_zero_after = after;
      break;
    }
    if (after > absl::GetFlag(FLAGS_settle) * 5) {
      for (const KeyStats& k : left) {
        absl::StrAppend(&run.counters_left, k.host, ":", k.port, "=", k.connections, " ");
      }
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));  // polling the table, bounded
  }
}

// SQL mode, once the client sessions are closed: how long until the
// coordinator's counters hold nothing but the shared pool's connections,
// or what was left after 5 x --settle; then the forced connections.
void AwaitSqlCountersZero(const Cluster& cluster, RunData& run) {
  const absl::Time stopped = absl::Now();
  auto c = cluster.Connect(cluster.coordinator, "connthrottle-monitor");
  for (;;) {
    absl::StatusOr<cluster::QueryResult> left =
        // Every slot given back, but those of the shared pool's
        // connections, which outlive the run (pool_idle_timeout).
        c.ok() ? (*c)->Query(
                     "SELECT host || ':' || port || '=' || connections || '+' || waiters "
                     "FROM connthrottle.nodes WHERE waiters > 0 OR (SELECT sum(connections) "
                     "FROM connthrottle.nodes) <> (SELECT connections FROM "
                     "connthrottle.pool_stats())")
               : absl::StatusOr<cluster::QueryResult>(c.status());
    absl::Duration after = absl::Now() - stopped;
    if (left.ok() && left->rows.empty()) {
      run.counters_zero_after = after;
      break;
    }
    if (after > absl::GetFlag(FLAGS_settle) * 5) {
      if (left.ok()) {
        for (const auto& row : left->rows) absl::StrAppend(&run.counters_left, *row[0], " ");
      }
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));  // polling the coordinator, bounded
  }
  if (c.ok()) {
    absl::StatusOr<std::string> forced =
        (*c)->QueryValue("SELECT coalesce(max(forced), 0) FROM connthrottle.nodes");
    for (WorkerFigures& w : run.workers) w.forced = forced.ok() ? std::atoi(forced->c_str()) : 0;
  }
}

struct Progress {
  std::atomic<int64_t> completed{0};
  std::mutex mu;
  LatencyRecorder recent;
};

void ShowProgress(absl::Duration elapsed, absl::Duration total, Progress& progress,
                  const std::vector<int>& latest, const std::vector<WorkerFigures>& workers) {
  int64_t p50 = 0, p99 = 0;
  {
    std::lock_guard<std::mutex> lock(progress.mu);
    p50 = progress.recent.Percentile(50);
    p99 = progress.recent.Percentile(99);
    progress.recent = LatencyRecorder();
  }
  std::string conns;
  for (size_t w = 0; w < latest.size() && w < workers.size(); ++w) {
    absl::StrAppend(&conns, " ", workers[w].name, " ", latest[w], "/",
                    workers[w].limit < 0 ? std::string("off") : absl::StrCat(workers[w].limit));
  }
  std::fprintf(stderr, "\r%5.1f/%.0fs  %8.1f q/s  p50 %6.1f ms  p99 %7.1f ms %s   ",
               absl::ToDoubleSeconds(elapsed), absl::ToDoubleSeconds(total),
               progress.completed.load() / std::max(absl::ToDoubleSeconds(elapsed), 0.001),
               p50 / 1000.0, p99 / 1000.0, conns.c_str());
  std::fflush(stderr);
}

RunData Run(Cluster& cluster, const std::string& label, int limit, const std::string& transport,
            uint64_t seed) {
  const bool library = absl::GetFlag(FLAGS_mode) == "library";
  const int nclients = std::min(absl::GetFlag(FLAGS_clients), kMaxClients);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  RunData run;
  run.label = label;
  run.sample_interval = absl::GetFlag(FLAGS_sample_interval);
  run.workers = WorkerFiguresBefore(cluster, limit);
  SetLimit(cluster, limit, transport);
  const std::pair<int64_t, int64_t> waits_before =
      library ? std::pair<int64_t, int64_t>{0, 0} : WaitFigures(cluster);
  std::mt19937_64 rng(seed);
  Sampler sampler(cluster, run.sample_interval);
  Progress progress;
  const bool show_progress = absl::GetFlag(FLAGS_progress) && isatty(2);

  // Library mode: the segment, the shared results and the client processes.
  std::string segment_name = absl::StrCat("connthrottle-stress-", getpid(), "-", label);
  std::unique_ptr<SharedSegment> segment;
  SharedResults* results = nullptr;
  std::vector<pid_t> pids(nclients, 0);
  std::unique_ptr<Owner> observer;
  if (library) {
    (void)SharedSegment::Remove(segment_name);
    auto s = SharedSegment::CreateOrAttach(
        segment_name, {.capacity = 64, .max_owners = static_cast<uint32_t>(nclients + 16)});
    if (!s.ok()) Die(std::string(s.status().message()));
    segment = *std::move(s);
    auto o = segment->table().RegisterOwner();
    if (!o.ok()) Die(std::string(o.status().message()));
    observer = *std::move(o);
    results = MapResults(segment_name, true);
    results->stop.store(0);
    results->start_ns.store(absl::ToUnixNanos(absl::Now()));
    for (int c = 0; c < nclients; ++c) {
      pids[c] = SpawnLibraryClient(c, segment_name, cluster.workers, limit, seed);
    }
  }

  // SQL mode: client threads.
  const Mix mix = Mix::Parse(absl::GetFlag(FLAGS_mix), library);
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<SqlClient>> sql_clients;
  std::vector<std::thread> threads;
  std::vector<ClientFigures> figures(nclients);
  std::vector<LatencyRecorder> latencies(nclients);
  std::vector<std::map<std::string, LatencyRecorder>> latencies_by_kind(nclients);
  std::atomic<int64_t> too_many{0}, other_errors{0}, hung{0}, queries{0}, sqlstate_53300{0};
  std::mutex pid_mu;
  std::mutex errors_mu;
  const absl::Time start = absl::Now();
  sampler.Start(start);
  if (!library) {
    for (int c = 0; c < nclients; ++c) {
      sql_clients.push_back(std::make_unique<SqlClient>(cluster, c, seed + c));
    }
    for (int c = 0; c < nclients; ++c) {
      threads.emplace_back([&, c] {
        std::mt19937_64 local(seed * 31 + c);
        while (!stop.load()) {
          const Op op = mix.Pick(local);
          OpOutcome o = sql_clients[c]->Run(op);
          if (stop.load() && !o.ok) break;  // interrupted by the end of the run
          if (o.ok) {
            ++figures[c].completed;
            figures[c].completion_times.push_back(absl::Now() - start);
            ++queries;
            progress.completed.fetch_add(1);
          } else {
            ++figures[c].failed;
            if (figures[c].failures.size() < kMaxFailuresKept) {
              figures[c].failures.emplace_back(absl::Now() - start, o.error);
            }
            if (!o.too_many_clients && !o.hung) ++other_errors;
            std::lock_guard<std::mutex> lock(errors_mu);
            NoteError(run, o.error);
          }
          if (o.too_many_clients) ++too_many;
          if (o.sqlstate == "53300") ++sqlstate_53300;
          if (o.hung) ++hung;
          latencies[c].Add(o.micros);
          latencies_by_kind[c][OpName(op)].Add(o.micros);
          std::lock_guard<std::mutex> lock(progress.mu);
          progress.recent.Add(o.micros);
        }
        sql_clients[c]->Disconnect();
      });
    }
  }

  // Faults, spread over the middle of the run.
  std::thread faults([&] {
    std::vector<std::pair<absl::Duration, int>> plan;  // (when, what)
    auto spread = [&](int n, int what) {
      for (int i = 0; i < n; ++i) {
        plan.emplace_back(duration * (0.1 + 0.8 * static_cast<double>(rng() % 1000) / 1000), what);
      }
    };
    spread(library ? absl::GetFlag(FLAGS_kill_clients) : 0, 0);
    spread(library ? 0 : absl::GetFlag(FLAGS_terminate_coordinator_backends), 1);
    spread(absl::GetFlag(FLAGS_terminate_worker_backends), 2);
    if (absl::GetFlag(FLAGS_restart_worker) && !cluster.worker_servers.empty()) {
      plan.emplace_back(duration / 2, 3);
    }
    std::sort(plan.begin(), plan.end());
    for (const auto& [when, what] : plan) {
      while (!stop.load() && absl::Now() - start < when) absl::SleepFor(absl::Milliseconds(5));
      if (stop.load()) return;
      if (what == 0) {
        int c = static_cast<int>(rng() % nclients);
        std::lock_guard<std::mutex> lock(pid_mu);
        if (pids[c] > 0 && kill(pids[c], SIGKILL) == 0) {
          waitpid(pids[c], nullptr, 0);
          ++run.faults.clients_killed;
          pids[c] = SpawnLibraryClient(c, segment_name, cluster.workers, limit, seed + rng());
        }
      } else if (what == 1) {
        int pid = sql_clients[rng() % nclients]->BackendPid();
        auto admin = cluster.Connect(cluster.coordinator, "connthrottle-faults");
        if (pid > 0 && admin.ok() &&
            (*admin)->Exec(absl::StrCat("SELECT pg_terminate_backend(", pid, ")")).ok()) {
          ++run.faults.coordinator_backends_terminated;
        }
      } else if (what == 2) {
        const Endpoint& w = cluster.workers[rng() % cluster.workers.size()];
        auto admin = cluster.Connect(w, "connthrottle-faults");
        if (admin.ok()) {
          absl::StatusOr<std::string> n = (*admin)->QueryValue(
              "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity "
              "WHERE application_name = 'connthrottle' ORDER BY random() LIMIT 1) p");
          if (n.ok() && *n == "1") ++run.faults.worker_backends_terminated;
        }
      } else if (what == 3) {
        LocalServer& w = *cluster.worker_servers[rng() % cluster.worker_servers.size()];
        if (w.Stop().ok()) {
          absl::SleepFor(absl::Seconds(2));  // the outage itself
          if (w.StartAgain().ok()) ++run.faults.worker_restarts;
        }
      }
    }
  });

  // The run, with its progress line.
  while (absl::Now() - start < duration && !g_interrupted) {
    absl::SleepFor(std::min(absl::Seconds(1), duration - (absl::Now() - start)));
    if (show_progress)
      ShowProgress(absl::Now() - start, duration, progress, sampler.latest(), run.workers);
  }
  if (show_progress) std::fprintf(stderr, "\n");
  stop = true;
  faults.join();
  run.duration = absl::Now() - start;

  // Stop the clients, then time how long until every shared counter is zero.
  if (library) {
    results->stop.store(1);
    for (pid_t pid : pids) {
      if (pid > 0) waitpid(pid, nullptr, 0);
    }
    AwaitLibraryCountersZero(*segment, *observer, run);
    for (int c = 0; c < nclients; ++c) {
      ClientSlot& slot = results->clients[c];
      figures[c].completed = slot.completed.load();
      figures[c].failed = slot.failed.load();
      for (int b = 0; b < kBuckets; ++b) {
        for (int32_t i = 0; i < slot.per_bucket[b].load(); ++i) {
          figures[c].completion_times.push_back(absl::Milliseconds(100 * b + 50));
        }
      }
      too_many += slot.too_many_clients.load();
      hung += slot.hung.load();
      other_errors += slot.failed.load();
      // Client processes keep only their last error: it stands for them all.
      if (slot.failed.load() > 0)
        NoteError(run, absl::StrCat("(a client's last) ", slot.last_error));
      queries += slot.completed.load();
      int64_t n = std::min<int64_t>(slot.latencies_written.load(), kLatencySamples);
      for (int64_t i = 0; i < n; ++i) latencies[c].Add(slot.latency_us[i].load());
    }
    const TableStats table = segment->table().Stats();  // the segment is this run's
    run.waits = static_cast<int64_t>(table.waited);
    run.wakeups = static_cast<int64_t>(table.wakeups);
    observer.reset();
    munmap(results, sizeof(SharedResults));
    unlink(ResultsPath(segment_name).c_str());
    segment.reset();
    (void)SharedSegment::Remove(segment_name);
  } else {
    for (std::thread& t : threads) t.join();
    AwaitSqlCountersZero(cluster, run);
    const std::pair<int64_t, int64_t> waits_after = WaitFigures(cluster);
    if (waits_before.first >= 0 && waits_after.first >= 0) {
      run.waits = waits_after.first - waits_before.first;
      run.wakeups = waits_after.second - waits_before.second;
    }
  }
  sampler.Stop();
  run.samples = sampler.samples();
  WorkerFiguresAfter(cluster, run);
  run.clients = std::move(figures);
  if (!library) RecordGroups(cluster, run);
  for (const LatencyRecorder& l : latencies) run.latency.Merge(l);
  for (const auto& kinds : latencies_by_kind) {
    for (const auto& [kind, l] : kinds) run.latency_by_kind[kind].Merge(l);
  }
  run.too_many_clients_errors = too_many.load();
  run.sqlstate_53300_errors = sqlstate_53300.load();
  run.other_errors = other_errors.load();
  run.hung = hung.load();
  run.queries = queries.load();
  return run;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// Refuses --roles and --databases that cannot be run: below 1, in library
// mode (no coordinator sessions), or with fewer clients than combinations
// (some role would not run in some database).
void CheckRolesAndDatabases(bool library) {
  const int64_t roles = absl::GetFlag(FLAGS_roles);
  const int64_t databases = absl::GetFlag(FLAGS_databases);
  if (roles < 1 || databases < 1) Die("--roles and --databases must be at least 1");
  if (library && (roles > 1 || databases > 1)) Die("--roles and --databases are for sql mode");
  if (roles * databases > absl::GetFlag(FLAGS_clients)) {
    Die("--clients must be at least --roles x --databases, so that every role runs in every "
        "database");
  }
}

// The flags, read once.
Options OptionsFromFlags() {
  Options o;
  o.mode = absl::GetFlag(FLAGS_mode);
  o.workers = absl::GetFlag(FLAGS_workers);
  o.worker_max_connections = absl::GetFlag(FLAGS_worker_max_connections);
  o.limit = absl::GetFlag(FLAGS_limit);
  o.clients = absl::GetFlag(FLAGS_clients);
  o.roles = absl::GetFlag(FLAGS_roles);
  o.databases = absl::GetFlag(FLAGS_databases);
  o.duration = absl::GetFlag(FLAGS_duration);
  o.mix = absl::GetFlag(FLAGS_mix);
  o.tasks_per_worker = absl::GetFlag(FLAGS_tasks_per_worker);
  o.fanout_task = absl::GetFlag(FLAGS_fanout_task);
  o.coordinator = absl::GetFlag(FLAGS_coordinator);
  o.worker_nodes = absl::GetFlag(FLAGS_worker_nodes);
  o.transport = absl::GetFlag(FLAGS_transport);
  o.compare_transports = absl::GetFlag(FLAGS_compare_transports);
  o.compare_unthrottled = absl::GetFlag(FLAGS_compare_unthrottled);
  o.out = absl::GetFlag(FLAGS_out);
  o.json = absl::GetFlag(FLAGS_json);
  o.progress = absl::GetFlag(FLAGS_progress);
  o.sample_interval = absl::GetFlag(FLAGS_sample_interval);
  o.statement_timeout = absl::GetFlag(FLAGS_statement_timeout);
  o.stall_window = absl::GetFlag(FLAGS_stall_window);
  o.settle = absl::GetFlag(FLAGS_settle);
  o.kill_clients = absl::GetFlag(FLAGS_kill_clients);
  o.terminate_coordinator_backends = absl::GetFlag(FLAGS_terminate_coordinator_backends);
  o.terminate_worker_backends = absl::GetFlag(FLAGS_terminate_worker_backends);
  o.restart_worker = absl::GetFlag(FLAGS_restart_worker);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.judge_timing = absl::GetFlag(FLAGS_judge_timing);
  o.internal_segment = absl::GetFlag(FLAGS_internal_segment);
  return o;
}

int Main() {
  const Options options = OptionsFromFlags();
  const bool library = absl::GetFlag(FLAGS_mode) == "library";
  if (!library && absl::GetFlag(FLAGS_mode) != "sql") Die("--mode is sql or library");
  if (absl::GetFlag(FLAGS_clients) < 1 || absl::GetFlag(FLAGS_clients) > kMaxClients) {
    Die(absl::StrCat("--clients must be 1..", kMaxClients));
  }
  if (absl::GetFlag(FLAGS_sample_interval) > absl::Milliseconds(20) ||
      absl::GetFlag(FLAGS_sample_interval) <= absl::ZeroDuration()) {
    Die("--sample_interval must be at most 20ms");
  }
  if (absl::GetFlag(FLAGS_limit) < 1) Die("--limit must be at least 1");
  if (absl::GetFlag(FLAGS_fanout_task) != "scan" && absl::GetFlag(FLAGS_fanout_task) != "short") {
    Die("--fanout_task is scan or short");
  }
  if (absl::GetFlag(FLAGS_tasks_per_worker) < 1 || absl::GetFlag(FLAGS_tasks_per_worker) > 1000) {
    Die("--tasks_per_worker must be 1..1000");
  }
  if (absl::GetFlag(FLAGS_duration) <= absl::ZeroDuration()) Die("--duration must be positive");
  CheckRolesAndDatabases(library);
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (seed == 0) seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));

  (void)Mix::Parse(absl::GetFlag(FLAGS_mix), library);  // bad input fails before anything starts
  std::unique_ptr<Cluster> cluster = StartCluster(options, /*need_coordinator=*/!library);
  WarnIfWorkersMayRefuse(*cluster, options.limit);
  std::vector<RunData> runs;
  std::fprintf(stderr, "throttled run: %d clients, limit %d, %s ...\n",
               absl::GetFlag(FLAGS_clients), absl::GetFlag(FLAGS_limit),
               absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str());
  if (library &&
      (!absl::GetFlag(FLAGS_transport).empty() || absl::GetFlag(FLAGS_compare_transports))) {
    Die("--transport and --compare_transports are for sql mode");
  }
  // Library mode's clients are the direct transport.
  const std::string transport = library ? "direct"
                                : absl::GetFlag(FLAGS_transport).empty()
                                    ? "shared_pool"
                                    : absl::GetFlag(FLAGS_transport);
  if (transport != "direct" && transport != "shared_pool")
    Die("--transport is direct or shared_pool");
  const std::string other = transport == "direct" ? "shared_pool" : "direct";
  auto label = [](const std::string& t) {
    return t == "direct" ? std::string("throttled") : absl::StrCat("throttled, ", t);
  };
  runs.push_back(Run(*cluster, label(transport), absl::GetFlag(FLAGS_limit), transport, seed));
  if (g_interrupted) {
    std::fprintf(stderr, "interrupted: the cluster is stopped and removed\n");
    cluster.reset();
    return 130;
  }
  // The shared pool's connections outlive its run: it goes last.
  if (absl::GetFlag(FLAGS_compare_unthrottled)) {
    std::fprintf(stderr, "unthrottled run (max_shared_pool_size = -1, direct) ...\n");
    runs.insert(transport == "direct" ? runs.end() : runs.begin(),
                Run(*cluster, "unthrottled", -1, "direct", seed));
  }
  if (absl::GetFlag(FLAGS_compare_transports) && !g_interrupted) {
    std::fprintf(stderr, "throttled run through %s ...\n", other.c_str());
    runs.push_back(Run(*cluster, label(other), absl::GetFlag(FLAGS_limit), other, seed));
  }
  // Every throttled run is judged; the unthrottled one is the baseline.
  Verdict verdict;
  for (const RunData& r : runs) {
    if (r.label == "unthrottled") continue;
    const Verdict v = Judge(r, absl::GetFlag(FLAGS_settle), absl::GetFlag(FLAGS_stall_window),
                            absl::GetFlag(FLAGS_judge_timing));
    verdict.passed = verdict.passed && v.passed;
    for (const std::string& why : v.violations) {
      verdict.violations.push_back(runs.size() > 1 ? absl::StrCat(r.label, ": ", why) : why);
    }
  }
  const std::string text = TextReport(runs, verdict);
  const std::string json = JsonReport(runs, verdict);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!out.empty()) {
    std::filesystem::create_directories(out);
    WriteFile(absl::StrCat(out, "/report.txt"), text);
    WriteFile(absl::StrCat(out, "/report.json"), json);
    std::vector<std::string> csvs;
    for (const RunData& r : runs) {
      csvs.push_back(absl::StrCat(out, "/connections-", r.label, ".csv"));
      WriteFile(csvs.back(), SeriesCsv(r));
    }
    const std::string png = absl::StrCat(out, "/chart.png");
    WriteFile(absl::StrCat(out, "/chart.gnuplot"), GnuplotScript(runs, csvs, png));
    const std::string command = absl::StrCat("gnuplot ", out, "/chart.gnuplot 2>/dev/null");
    if (std::system(command.c_str()) == 0) {
      std::fprintf(stderr, "chart: %s\n", png.c_str());
    } else {
      std::fprintf(stderr, "gnuplot is not installed: no chart (scripts/install-deps.sh)\n");
    }
  }
  std::fflush(stderr);
  std::printf("%s", absl::GetFlag(FLAGS_json) ? json.c_str() : text.c_str());
  std::fflush(stdout);
  cluster.reset();
  return verdict.passed && !g_interrupted ? 0 : 1;
}

}  // namespace
}  // namespace connthrottle::stress

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "stress_main");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "connthrottle-stress: drive a real coordinator and workers with concurrent clients, "
      "check that the connection limits held, and report.\n\nUsage: connthrottle-stress "
      "[--flags]   (--help lists them)");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_internal_library_client) >= 0) {
    return connthrottle::stress::RunLibraryClient(absl::GetFlag(FLAGS_internal_library_client));
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction stop = {};
  stop.sa_handler = [](int) { connthrottle::stress::g_interrupted = true; };
  sigaction(SIGINT, &stop, nullptr);
  sigaction(SIGTERM, &stop, nullptr);
  return connthrottle::stress::Main();
}
