// connthrottle-stress: the stress-test driver and demo. Here: its flags, the
// checks of what they ask, and Main: the cluster, the throttled run and those
// it is compared with, their verdict and their report.

#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "stress/clients.h"
#include "stress/cluster.h"
#include "stress/library_clients.h"
#include "stress/options.h"
#include "stress/report.h"
#include "stress/run.h"
#include "stress/run_data.h"
#include "stress/workload.h"

// connthrottle-stress proves the connection limits hold under load and
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
// The parts, each a file: cluster (the servers), sampler (the monitor),
// workload and clients, sql_clients, library_clients (who runs what), faults,
// run (one run, step by step), run_data (the figures, the verdict and the
// report). See --help for every option.

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
          "shard table and its data) if missing. The limit counts per node, across databases: the "
          "monitor judges each worker's connections from every database together");
ABSL_FLAG(int, per_database_limit, -1,
          "sql mode: connthrottle.max_shared_pool_size_per_database of the throttled runs "
          "(-1: off). The monitor then also judges each worker's connections of each database "
          "(of all coordinators together) against it");
ABSL_FLAG(int, coordinators, 1,
          "sql mode, local cluster: start this many coordinators that send to the same workers, "
          "client i on coordinator i % N (coordinator_id c1..cN; their connections to the workers "
          "are named connthrottle/c1..cN, which the monitor counts apart). With "
          "--worker_budget they lease it (worker_leases = on) and the monitor judges every "
          "worker sample's sum over all coordinators against the budget");
ABSL_FLAG(int, worker_budget, -1,
          "with --coordinators above 1: connthrottle.worker_budget of every worker, which "
          "admits no coordinator connection without a lease (unleased_connections = 0); -1: "
          "none, each coordinator counts alone");
ABSL_FLAG(absl::Duration, idle_from, absl::ZeroDuration(),
          "with --coordinators above 1 and --idle_for: when, into each run, the last "
          "coordinator's clients stop running anything (and close their sessions)");
ABSL_FLAG(absl::Duration, idle_for, absl::ZeroDuration(),
          "how long the last coordinator stays idle from --idle_from (inf: to the end); 0: "
          "never idle");
ABSL_FLAG(bool, compare_static_split, false,
          "with --worker_budget: also run the workload on a static split of the budget, as "
          "without leases (each coordinator's limit budget / coordinators, no worker budget, "
          "no leases)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(30), "length of each run");
ABSL_FLAG(std::string, mix, "fanout=2,router=2,copy=1",
          "workload mix as name=weight: fanout (run_tasks on every worker), router (one task "
          "on one worker), copy (distribute rows with COPY and reservations; sql mode)");
ABSL_FLAG(int, tasks_per_worker, 4, "tasks per worker in a fan-out execution");
ABSL_FLAG(std::string, fanout_task, "scan",
          "what each fan-out task runs: scan (count a sixteenth of the shard table, a few "
          "ms), short (a primary-key lookup, well under a millisecond) or sleep (a lookup and "
          "pg_sleep(0.01): work bound by the connections, not the workers' CPUs, as a remote "
          "query waiting on I/O)");
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
  o.per_database_limit = absl::GetFlag(FLAGS_per_database_limit);
  o.coordinators = absl::GetFlag(FLAGS_coordinators);
  o.worker_budget = absl::GetFlag(FLAGS_worker_budget);
  o.idle_from = absl::GetFlag(FLAGS_idle_from);
  o.idle_for = absl::GetFlag(FLAGS_idle_for);
  o.compare_static_split = absl::GetFlag(FLAGS_compare_static_split);
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

// Refuses --roles and --databases that cannot be run: below 1, in library
// mode (no coordinator sessions), or with fewer clients than combinations
// (some role would not run in some database).
void CheckRolesAndDatabases(const Options& options) {
  const int64_t roles = options.roles;
  const int64_t databases = options.databases;
  if (roles < 1 || databases < 1) Die("--roles and --databases must be at least 1");
  if (options.per_database_limit == 0 || options.per_database_limit < -1) {
    Die("--per_database_limit must be -1 (off) or at least 1");
  }
  if (options.per_database_limit > 0 && options.library()) {
    Die("--per_database_limit is for sql mode");
  }
  if (options.library() && (roles > 1 || databases > 1)) {
    Die("--roles and --databases are for sql mode");
  }
  if (roles * databases * options.coordinators > options.clients) {
    Die("--clients must be at least --coordinators x --roles x --databases, so that every role "
        "runs in every database on every coordinator");
  }
}

// Refuses --coordinators, --worker_budget, the idle window and the static
// split where they cannot be run.
void CheckCoordinators(const Options& options) {
  if (options.coordinators < 1 || options.coordinators > 16) Die("--coordinators must be 1..16");
  const bool several = options.several_coordinators();
  if (several && options.library()) Die("--coordinators is for sql mode");
  if (several && !options.coordinator.empty()) {
    Die("--coordinators starts its own cluster: it does not take --coordinator");
  }
  if (several && options.terminate_coordinator_backends > 0) {
    Die("--terminate_coordinator_backends is for one coordinator");
  }
  if (options.worker_budget != -1 && (!several || options.worker_budget < 1)) {
    Die("--worker_budget is 1 or more, with --coordinators above 1");
  }
  if (options.compare_static_split && options.worker_budget < options.coordinators) {
    Die("--compare_static_split needs a --worker_budget of at least one per coordinator");
  }
  if (options.idle_for < absl::ZeroDuration() || options.idle_from < absl::ZeroDuration()) {
    Die("--idle_from and --idle_for must not be negative");
  }
  if (options.idle_for > absl::ZeroDuration() && !several) {
    Die("--idle_for needs --coordinators above 1 (the last one idles)");
  }
}

// Refuses what cannot be run, before anything starts.
void CheckOptions(const Options& options) {
  if (!options.library() && options.mode != "sql") Die("--mode is sql or library");
  if (options.clients < 1 || options.clients > kMaxClients) {
    Die(absl::StrCat("--clients must be 1..", kMaxClients));
  }
  if (options.sample_interval > absl::Milliseconds(20) ||
      options.sample_interval <= absl::ZeroDuration()) {
    Die("--sample_interval must be at most 20ms");
  }
  if (options.limit < 1) Die("--limit must be at least 1");
  if (options.fanout_task != "scan" && options.fanout_task != "short" &&
      options.fanout_task != "sleep") {
    Die("--fanout_task is scan, short or sleep");
  }
  if (options.tasks_per_worker < 1 || options.tasks_per_worker > 1000) {
    Die("--tasks_per_worker must be 1..1000");
  }
  if (options.duration <= absl::ZeroDuration()) Die("--duration must be positive");
  CheckRolesAndDatabases(options);
  CheckCoordinators(options);
  (void)Mix::Parse(options.mix, options.library());
}

// The transport of the throttled run: library mode's clients are the
// direct transport; sql mode's, --transport or the extension's default.
std::string ThrottledTransport(const Options& options) {
  if (options.library() && (!options.transport.empty() || options.compare_transports)) {
    Die("--transport and --compare_transports are for sql mode");
  }
  const std::string transport = options.library()           ? "direct"
                                : options.transport.empty() ? "shared_pool"
                                                            : options.transport;
  if (transport != "direct" && transport != "shared_pool") {
    Die("--transport is direct or shared_pool");
  }
  return transport;
}

std::string ThrottledLabel(const std::string& transport, const Options& options) {
  const std::string leased = options.worker_budget > 0 ? ", leased" : "";
  return transport == "direct" ? absl::StrCat("throttled", leased)
                               : absl::StrCat("throttled, ", transport, leased);
}

// The throttled run, then those it is compared with; nullopt when the
// throttled run was interrupted.
std::optional<std::vector<RunData>> RunAll(Cluster& cluster, const Options& options,
                                           uint64_t seed) {
  std::vector<RunData> runs;
  std::fprintf(stderr, "throttled run: %d clients, limit %d, %s ...\n", options.clients,
               options.limit, absl::FormatDuration(options.duration).c_str());
  const std::string transport = ThrottledTransport(options);
  const std::string other = transport == "direct" ? "shared_pool" : "direct";
  runs.push_back(
      Run(cluster, options, {ThrottledLabel(transport, options), options.limit, transport, seed}));
  if (g_interrupted) return std::nullopt;
  // The shared pool's connections outlive its run: it goes last.
  if (options.compare_unthrottled) {
    std::fprintf(stderr, "unthrottled run (max_shared_pool_size = -1, direct) ...\n");
    runs.insert(transport == "direct" ? runs.end() : runs.begin(),
                Run(cluster, options, {"unthrottled", -1, "direct", seed, /*leases=*/false}));
  }
  if (options.compare_transports && !g_interrupted) {
    std::fprintf(stderr, "throttled run through %s ...\n", other.c_str());
    runs.push_back(
        Run(cluster, options, {ThrottledLabel(other, options), options.limit, other, seed}));
  }
  if (options.compare_static_split && !g_interrupted) {
    const int share = options.worker_budget / options.coordinators;
    std::fprintf(stderr, "static split run (limit %d per coordinator, no leases) ...\n", share);
    runs.push_back(Run(cluster, options, {"static split", share, transport, seed, false}));
  }
  return runs;
}

// Every throttled run is judged; the unthrottled one is the baseline.
Verdict JudgeRuns(const std::vector<RunData>& runs, const Options& options) {
  Verdict verdict;
  for (const RunData& r : runs) {
    if (r.label == "unthrottled") continue;
    const Verdict v = Judge(r, options.settle, options.stall_window, options.judge_timing);
    verdict.passed = verdict.passed && v.passed;
    for (const std::string& why : v.violations) {
      verdict.violations.push_back(runs.size() > 1 ? absl::StrCat(r.label, ": ", why) : why);
    }
  }
  return verdict;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// --out: both reports, each run's connection series and their chart.
void WriteOutDirectory(const std::string& out, const std::vector<RunData>& runs,
                       const std::string& text, const std::string& json) {
  std::filesystem::create_directories(out);
  WriteFile(absl::StrCat(out, "/report.txt"), text);
  WriteFile(absl::StrCat(out, "/report.json"), json);
  std::vector<std::string> csvs, throughputs;
  for (const RunData& r : runs) {
    csvs.push_back(absl::StrCat(out, "/connections-", r.label, ".csv"));
    WriteFile(csvs.back(), SeriesCsv(r));
    if (r.coordinators.size() > 1) {
      throughputs.push_back(absl::StrCat(out, "/throughput-", r.label, ".csv"));
      WriteFile(throughputs.back(), ThroughputCsv(r));
    }
  }
  const std::string png = absl::StrCat(out, "/chart.png");
  WriteFile(absl::StrCat(out, "/chart.gnuplot"), GnuplotScript(runs, csvs, png, throughputs));
  const std::string command = absl::StrCat("gnuplot ", out, "/chart.gnuplot 2>/dev/null");
  if (std::system(command.c_str()) == 0) {
    std::fprintf(stderr, "chart: %s\n", png.c_str());
  } else {
    std::fprintf(stderr, "gnuplot is not installed: no chart (scripts/install-deps.sh)\n");
  }
}

// The report on stdout (text or --json), and in --out.
void Report(const std::vector<RunData>& runs, const Verdict& verdict, const Options& options) {
  const std::string text = TextReport(runs, verdict);
  const std::string json = JsonReport(runs, verdict);
  if (!options.out.empty()) WriteOutDirectory(options.out, runs, text, json);
  std::fflush(stderr);
  std::printf("%s", options.json ? json.c_str() : text.c_str());
  std::fflush(stdout);
}

int Main() {
  const Options options = OptionsFromFlags();
  CheckOptions(options);  // bad input fails before anything starts
  const uint64_t seed =
      options.seed != 0 ? options.seed : static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  std::unique_ptr<Cluster> cluster = StartCluster(options, /*need_coordinator=*/!options.library());
  WarnIfWorkersMayRefuse(*cluster, options.limit);
  const std::optional<std::vector<RunData>> runs = RunAll(*cluster, options, seed);
  if (!runs) {
    std::fprintf(stderr, "interrupted: the cluster is stopped and removed\n");
    cluster.reset();
    return 130;
  }
  const Verdict verdict = JudgeRuns(*runs, options);
  Report(*runs, verdict, options);
  cluster.reset();
  return verdict.passed && !g_interrupted ? 0 : 1;
}

}  // namespace
}  // namespace connthrottle::stress

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "stress/main.cc");
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
