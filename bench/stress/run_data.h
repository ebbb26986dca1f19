// The stress driver's record of one run and the pure logic over it:
// percentiles, fairness, stalls and the invariant verdicts (the report of it
// is report.h). No servers, threads or clocks here, so all of it is
// unit-tested (run_data_test.cc).

#ifndef CONNTHROTTLE_BENCH_STRESS_RUN_DATA_H_
#define CONNTHROTTLE_BENCH_STRESS_RUN_DATA_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace connthrottle::stress {

// Latencies in microseconds; percentiles by the nearest-rank method.
class LatencyRecorder {
 public:
  void Add(int64_t micros) {
    samples_.push_back(micros);
    sorted_ = false;
  }
  void Merge(const LatencyRecorder& other);
  size_t count() const { return samples_.size(); }
  // The p-th percentile (0 < p <= 100) by nearest rank; 0 when empty.
  int64_t Percentile(double p) const;
  int64_t Max() const;

 private:
  mutable std::vector<int64_t> samples_;
  mutable bool sorted_ = true;
};

// Jain's fairness index of per-client throughputs: (sum x)^2 / (n * sum x^2),
// 1 when all are equal, 1/n when one client did everything. 1 for no clients.
double JainIndex(const std::vector<double>& values);

// Clients that completed nothing in some `window` of the run [0, duration):
// `completions[c]` are client c's completion times since the start. Windows
// slide by a tenth of their length; a window that does not fit wholly in the
// run is not judged.
std::vector<int> StalledClients(const std::vector<std::vector<absl::Duration>>& completions,
                                absl::Duration duration, absl::Duration window);

// The longest stretch of [0, duration) with no time of `times` in it.
struct Gap {
  absl::Duration from, to;
};
Gap LongestGap(std::vector<absl::Duration> times, absl::Duration duration);

// One sample of every worker's own view of its connections.
struct Sample {
  absl::Duration at;
  std::vector<int> coordinator_connections;  // per worker, from pg_stat_activity
  // The same per worker and database (RunData::databases' order) when the
  // run used more than one database; empty otherwise.
  std::vector<std::vector<int>> per_database = {};
  // The same per worker and coordinator (RunData::coordinators' order) when
  // the run used more than one coordinator; empty otherwise.
  std::vector<std::vector<int>> per_coordinator = {};
};

// The highest count per worker over `samples` (`workers` entries; a sample
// with fewer columns contributes to the ones it has).
std::vector<int> PeakPerWorker(const std::vector<Sample>& samples, size_t workers);

// The highest count per worker and database over `samples`' per_database
// (`workers` entries of `databases` each; missing columns count as 0).
std::vector<std::vector<int>> PeakPerWorkerAndDatabase(const std::vector<Sample>& samples,
                                                       size_t workers, size_t databases);

// The highest count per worker and coordinator over `samples`'
// per_coordinator (as PeakPerWorkerAndDatabase).
std::vector<std::vector<int>> PeakPerWorkerAndCoordinator(const std::vector<Sample>& samples,
                                                          size_t workers, size_t coordinators);

// The longest time with no sample: between the run's start, consecutive
// samples and the run's end (`duration`).
absl::Duration LongestSampleGap(const std::vector<Sample>& samples, absl::Duration duration);

struct WorkerFigures {
  std::string name;
  // What the worker's peak is judged against (-1: off). One coordinator:
  // its max_shared_pool_size, the node's across all databases. Several:
  // the worker's connthrottle.worker_budget, or with none the sum of the
  // coordinators' limits.
  int limit = 0;
  int max_connections = 0;      // the worker's own max_connections
  int peak = 0;                 // peak connections from the coordinator, sampled
  int forced = 0;               // forced connections reported by the coordinator
  int64_t sessions_opened = 0;  // pg_stat_database.sessions delta over the run
  // Backends the worker started for others than the driver's own monitor and
  // setup connections: every connection attempt, including those abandoned
  // before authentication, which pg_stat_database.sessions does not count
  // ("connection received" in the worker's log; -1 where the driver cannot
  // read the log, i.e. a cluster it did not start).
  int64_t backends_started = -1;
  // The peak per database (RunData::databases' order) when the run used more
  // than one; empty otherwise. Reported; the limit is judged against `peak`.
  std::vector<int> peak_per_database = {};
  // With several coordinators: each one's max_shared_pool_size (-1: off)
  // and its peak here (RunData::coordinators' order), judged against it.
  int coordinator_limit = -1;
  std::vector<int> peak_per_coordinator = {};
  // Whether `limit` is the worker's connthrottle.worker_budget.
  bool budget = false;
  // max_shared_pool_size_per_database times the coordinators (-1: off):
  // each of peak_per_database is judged against it.
  int database_limit = -1;
};

struct ClientFigures {
  // Indexes into RunData::roles, RunData::databases and
  // RunData::coordinators (AssignClient).
  int role = 0;
  int database = 0;
  int coordinator = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  std::vector<absl::Duration> completion_times;
  // When operations failed and with what (the first kMaxFailuresKept), to
  // explain a stall.
  std::vector<std::pair<absl::Duration, std::string>> failures;
};
inline constexpr size_t kMaxFailuresKept = 2000;

struct FaultFigures {
  int clients_killed = 0;  // SIGKILL (library mode)
  int coordinator_backends_terminated = 0;
  int worker_backends_terminated = 0;
  int worker_restarts = 0;
};

// Everything one run produced.
struct RunData {
  std::string label;  // "throttled" / "unthrottled"
  absl::Duration duration;
  absl::Duration sample_interval;
  std::vector<WorkerFigures> workers;
  std::vector<ClientFigures> clients;
  // The roles and databases the clients ran as (sql mode; empty in library
  // mode). With more than one of either the report shows completions per
  // role and per database and Jain's index across roles, and Judge checks
  // that no role starved.
  std::vector<std::string> roles;
  std::vector<std::string> databases;
  // The coordinators the clients used, when more than one (--coordinators),
  // and when the last of them was idle (--idle_from, --idle_for): its
  // clients ran nothing then, and are not judged for stalls.
  std::vector<std::string> coordinators;
  std::optional<Gap> idle;
  std::vector<Sample> samples;
  LatencyRecorder latency;
  std::map<std::string, LatencyRecorder> latency_by_kind;  // "fanout", "router", "copy"
  int64_t too_many_clients_errors = 0;  // SQLSTATE 53300 or "too many clients" anywhere
  // Operations that failed with SQLSTATE 53300 (too_many_connections) as
  // their error's (a failed task's) SQLSTATE: a worker's "too many clients",
  // or the coordinator's own "no connection slot ... became free" after
  // connection_wait_timeout, which too_many_clients_errors does not count.
  // Sql mode; distribute's per-node errors carry no SQLSTATE.
  int64_t sqlstate_53300_errors = 0;
  int64_t other_errors = 0;
  int64_t hung = 0;     // operations past their deadline
  int64_t queries = 0;  // executed queries (executions) in total
  // Waiting acquires that queued during the run, and the times a queued
  // waiter was woken and re-checked (the coordinator's table_stats; -1: not
  // read). Waiters woken by the release that frees their slot show about
  // one wake-up per wait; polling shows many.
  int64_t waits = -1;
  int64_t wakeups = -1;
  // Error messages seen, with how often (at most kMaxErrorKinds kinds; the
  // rest are counted under "(other messages)").
  std::map<std::string, int64_t> errors;
  FaultFigures faults;
  // After the clients stopped: how long until every shared counter was zero
  // (nullopt: not within the allowed time), and what was left then.
  std::optional<absl::Duration> counters_zero_after;
  std::string counters_left;
};

// A duration as a person reads it: "1.234s", "10.4ms".
std::string HumanDuration(absl::Duration d);

inline constexpr absl::Duration kMaxSampleInterval = absl::Milliseconds(20);
// A scheduler hiccup on a loaded machine is tolerated; a stuck monitor is not.
inline constexpr absl::Duration kMaxSampleGap = absl::Milliseconds(200);

// Whether the clients ran as more than one role or in more than one database.
bool SeveralRolesOrDatabases(const RunData& run);

// The coordinator, role and database client `client` runs on and as, of
// `coordinators`, `roles` and `databases` (each at least 1): coordinator
// client % coordinators; of the rest r = client / coordinators, role
// r % roles and database (r / roles) % databases. Every coordinators x roles
// x databases consecutive clients cover each combination once, and the
// coordinators' client counts differ by at most one (the roles' too with
// one coordinator).
struct ClientGroup {
  int role = 0;
  int database = 0;
  int coordinator = 0;
};
ClientGroup AssignClient(int client, int roles, int databases, int coordinators = 1);

// The clients and completions of one role or one database.
struct GroupFigures {
  std::string name;
  int clients = 0;
  int64_t completed = 0;
  int64_t failed = 0;
};
// One entry per name of run.roles (PerRole) or run.databases (PerDatabase),
// in that order, summing run.clients by their role or database.
std::vector<GroupFigures> PerRole(const RunData& run);
std::vector<GroupFigures> PerDatabase(const RunData& run);
std::vector<GroupFigures> PerCoordinator(const RunData& run);

// How fast a worker's budget moved between coordinators around the last
// coordinator's idle window (run.idle), from the workers' samples:
// `taken`, how long after it went idle the others first held more than
// their static share (budget x others / coordinators, rounded down) on
// every worker; `given_back`, how long after it came back it first held its
// own static share (budget / coordinators) on every worker. nullopt: not
// seen (or no idle window, one coordinator, no budget).
struct ShareTimes {
  std::optional<absl::Duration> taken, given_back;
};
ShareTimes MeasureShareTimes(const RunData& run);

// Completions per second of each coordinator's clients, in whole seconds
// of the run: [second][coordinator].
std::vector<std::vector<int64_t>> ThroughputPerSecond(const RunData& run);

// Jain's index over the groups' completions per client, so that a role with
// more clients is not favoured for completing more; groups without clients
// are left out. 1 when every group's clients completed as much on average.
double GroupJainIndex(const std::vector<GroupFigures>& groups);

// A group of clients (a role) that completed nothing for a whole `window`
// while the other groups completed something in that window: the group's
// silent stretch around the first such window (from its previous completion,
// or the run's start, to its next one, or the run's end) and how many the
// other groups completed in that stretch.
struct Starvation {
  int group = 0;
  absl::Duration from, to;
  int64_t others_completed = 0;
};
// `completions[g]` are group g's completion times since the start of a run
// of `duration`. Windows slide as in StalledClients; a window in which no
// group completed anything starves nobody (the whole run stalled: that is
// the stall check's business). Fewer than two groups: nobody.
std::vector<Starvation> StarvedGroups(const std::vector<std::vector<absl::Duration>>& completions,
                                      absl::Duration duration, absl::Duration window);

// The run's duration divided by its number of samples.
absl::Duration MeanSampleInterval(const RunData& run);

inline constexpr size_t kMaxErrorKinds = 12;

// Counts `message` in `run.errors`: trimmed to 200 characters, digits
// masked so that pids, ports and durations do not make every one distinct.
void NoteError(RunData& run, const std::string& message);

struct Verdict {
  bool passed = true;
  std::vector<std::string> violations;  // each invariant that failed, explained
};

// The invariants of DESIGN.md, judged on a throttled run:
//   the monitor sampled every `kMaxSampleInterval` on average and never
//   paused longer than `kMaxSampleGap` (else a peak could hide unseen);
//   peak coordinator connections per worker <= limit + forced (with
//   several coordinators: their sum <= the worker's budget, and each one's
//   <= its own limit + forced);
//   no "too many clients" error; no operation hung past its deadline;
//   every shared counter back to zero within `settle` after the clients stop;
//   no client stalled for a whole `stall_window` (the idle coordinator's
//   clients are not judged);
//   with two roles or more, no role starved (StarvedGroups) for a whole
//   `stall_window`.
// With several databases the limit is judged per worker across all of
// them, as the extension counts it (the per-database peaks are reported).
// With `judge_timing` false the monitor's cadence, stalls and starved roles
// are not judged (they are still reported): on a shared, busy machine they
// measure the machine rather than connthrottle. The smoke tests run so.
Verdict Judge(const RunData& run, absl::Duration settle, absl::Duration stall_window,
              bool judge_timing = true);

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_RUN_DATA_H_
