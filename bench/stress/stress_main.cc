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
#include "stress/clients.h"
#include "stress/cluster.h"
#include "stress/faults.h"
#include "stress/library_clients.h"
#include "stress/options.h"
#include "stress/run_data.h"
#include "stress/sampler.h"
#include "stress/sql_clients.h"
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

RunData Run(Cluster& cluster, const Options& options, const std::string& label, int limit,
            const std::string& transport, uint64_t seed) {
  const bool library = options.library();
  const int nclients = std::min(options.clients, kMaxClients);
  const absl::Duration duration = options.duration;
  RunData run;
  run.label = label;
  run.sample_interval = options.sample_interval;
  run.workers = WorkerFiguresBefore(cluster, limit);
  SetLimit(cluster, limit, transport);
  Sampler sampler(cluster, run.sample_interval);
  const bool show_progress = options.progress && isatty(2);
  std::atomic<bool> stop{false};
  std::unique_ptr<Clients> clients;
  if (library) {
    clients = std::make_unique<LibraryClients>(cluster, options, label, limit, seed, nclients);
  } else {
    clients = std::make_unique<SqlClients>(cluster, options, nclients, seed, stop, run);
  }
  const absl::Time start = absl::Now();
  sampler.Start(start);
  clients->Start(start);

  FaultInjector faults(cluster, *clients, run.faults, seed);
  faults.Start(options, start, stop);

  // The run, with its progress line.
  while (absl::Now() - start < duration && !g_interrupted) {
    absl::SleepFor(std::min(absl::Seconds(1), duration - (absl::Now() - start)));
    if (show_progress) {
      ShowProgress(absl::Now() - start, duration, clients->progress(), sampler.latest(),
                   run.workers);
    }
  }
  if (show_progress) std::fprintf(stderr, "\n");
  stop = true;
  faults.Join();
  run.duration = absl::Now() - start;

  // Stop the clients, then time how long until every shared counter is zero.
  clients->Finish(run);
  sampler.Stop();
  run.samples = sampler.samples();
  WorkerFiguresAfter(cluster, run);
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
  runs.push_back(
      Run(*cluster, options, label(transport), absl::GetFlag(FLAGS_limit), transport, seed));
  if (g_interrupted) {
    std::fprintf(stderr, "interrupted: the cluster is stopped and removed\n");
    cluster.reset();
    return 130;
  }
  // The shared pool's connections outlive its run: it goes last.
  if (absl::GetFlag(FLAGS_compare_unthrottled)) {
    std::fprintf(stderr, "unthrottled run (max_shared_pool_size = -1, direct) ...\n");
    runs.insert(transport == "direct" ? runs.end() : runs.begin(),
                Run(*cluster, options, "unthrottled", -1, "direct", seed));
  }
  if (absl::GetFlag(FLAGS_compare_transports) && !g_interrupted) {
    std::fprintf(stderr, "throttled run through %s ...\n", other.c_str());
    runs.push_back(Run(*cluster, options, label(other), absl::GetFlag(FLAGS_limit), other, seed));
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
    return connthrottle::stress::RunLibraryClient(connthrottle::stress::OptionsFromFlags(),
                                                  absl::GetFlag(FLAGS_internal_library_client));
  }
  signal(SIGPIPE, SIG_IGN);
  struct sigaction stop = {};
  stop.sa_handler = [](int) { connthrottle::stress::g_interrupted = true; };
  sigaction(SIGINT, &stop, nullptr);
  sigaction(SIGTERM, &stop, nullptr);
  return connthrottle::stress::Main();
}
