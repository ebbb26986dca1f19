// Library mode: the client processes' body (RunLibraryClient), the results
// file they share with the driver (a slot each), and the driver's side,
// which starts, kills and replaces them and reads their slots after the run.

#include "stress/library_clients.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/standalone_context.h"
#include "stress/workload.h"

namespace connthrottle::stress {

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

namespace {

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

// The first error of an execution that failed.
std::string FirstError(const absl::StatusOr<ExecutionResult>& r) {
  std::string error = r.ok() ? std::string() : std::string(r.status().message());
  for (size_t i = 0; r.ok() && i < r->tasks.size() && error.empty(); ++i) {
    if (!r->tasks[i].status.ok()) {
      error = absl::StrCat(r->tasks[i].sqlstate, " ", r->tasks[i].status.message());
    }
  }
  return error;
}

// Records in `me` an execution that ran from `start` to `end`.
void RecordExecution(const absl::StatusOr<ExecutionResult>& r, absl::Time start, absl::Time end,
                     const Options& options, const SharedResults& results, ClientSlot& me) {
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
    int64_t bucket = (absl::ToUnixNanos(end) - results.start_ns.load()) / 100'000'000;
    if (bucket >= 0 && bucket < kBuckets) me.per_bucket[bucket].fetch_add(1);
  } else {
    me.failed.fetch_add(1);
  }
  if (!ok) std::snprintf(me.last_error, sizeof(me.last_error), "%s", FirstError(r).c_str());
  if (too_many) me.too_many_clients.fetch_add(1);
  if (end - start > options.statement_timeout) me.hung.fetch_add(1);
  int64_t n = me.latencies_written.fetch_add(1);
  me.latency_us[n % kLatencySamples].store(micros);
}

}  // namespace

int RunLibraryClient(const Options& options, int index) {
  auto segment = SharedSegment::Attach(options.internal_segment);
  if (!segment.ok()) return 10;
  SharedResults* results = MapResults(options.internal_segment, false);
  ClientSlot& me = results->clients[index];
  auto owner = (*segment)->table().RegisterOwner();
  if (!owner.ok()) return 11;
  StandaloneContext::Settings settings;
  settings.application_name = "connthrottle";
  settings.limits.max_shared_pool_size = options.limit;
  StandaloneContext context(settings);
  ExecutorOptions executor_options;
  executor_options.slot_wait_timeout = options.statement_timeout;
  AdaptiveExecutor executor(**owner, context, executor_options);
  const std::vector<NodeAddress> workers = WorkerAddresses(options.worker_nodes);
  const Mix mix = Mix::Parse(options.mix, /*library=*/true);
  std::mt19937_64 rng(options.seed * 7919 + static_cast<uint64_t>(getpid()));
  while (!results->stop.load()) {
    const int key = RandomKey(rng);
    const Op op = mix.Pick(rng);
    std::vector<Task> tasks;
    for (WorkerTask& t : OperationTasks(options, op, key, workers.size(), rng)) {
      tasks.push_back({workers[t.worker], std::move(t.sql)});
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<ExecutionResult> r = executor.Execute(std::move(tasks));
    RecordExecution(r, start, absl::Now(), options, *results, me);
  }
  return 0;
}

LibraryClients::LibraryClients(const Cluster& cluster, const Options& options,
                               const std::string& label, int limit, uint64_t seed, int count)
    : Clients(count),
      cluster_(cluster),
      options_(options),
      limit_(limit),
      seed_(seed),
      segment_name_(absl::StrCat("connthrottle-stress-", getpid(), "-", label)),
      pids_(count, 0) {
  (void)SharedSegment::Remove(segment_name_);
  auto s = SharedSegment::CreateOrAttach(
      segment_name_, {.capacity = 64, .max_owners = static_cast<uint32_t>(count + 16)});
  if (!s.ok()) Die(std::string(s.status().message()));
  segment_ = *std::move(s);
  auto o = segment_->table().RegisterOwner();
  if (!o.ok()) Die(std::string(o.status().message()));
  observer_ = *std::move(o);
  results_ = MapResults(segment_name_, true);
  results_->stop.store(0);
  results_->start_ns.store(absl::ToUnixNanos(absl::Now()));
  for (int c = 0; c < count; ++c) pids_[c] = Spawn(c, seed_);
}

// Client process `index`: this binary again, told the segment, the workers
// and the workload.
pid_t LibraryClients::Spawn(int index, uint64_t seed) const {
  std::vector<std::string> hosts;
  for (const Endpoint& w : cluster_.workers) hosts.push_back(absl::StrCat(w.host, ":", w.port));
  std::vector<std::string> args = {
      "/proc/self/exe",
      absl::StrCat("--internal_library_client=", index),
      absl::StrCat("--internal_segment=", segment_name_),
      absl::StrCat("--worker_nodes=", absl::StrJoin(hosts, ",")),
      absl::StrCat("--limit=", limit_),
      absl::StrCat("--mix=", options_.mix),
      absl::StrCat("--tasks_per_worker=", options_.tasks_per_worker),
      absl::StrCat("--fanout_task=", options_.fanout_task),
      absl::StrCat("--statement_timeout=", absl::FormatDuration(options_.statement_timeout)),
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

bool LibraryClients::KillAndReplace(int client, std::mt19937_64& rng) {
  std::lock_guard<std::mutex> lock(pids_mu_);
  if (pids_[client] <= 0 || kill(pids_[client], SIGKILL) != 0) return false;
  waitpid(pids_[client], nullptr, 0);
  pids_[client] = Spawn(client, seed_ + rng());
  return true;
}

void LibraryClients::Finish(RunData& run) {
  results_->stop.store(1);
  for (pid_t pid : pids_) {
    if (pid > 0) waitpid(pid, nullptr, 0);
  }
  // Every counter of the run's segment back to zero, once the killed
  // clients' slots are reclaimed.
  AwaitCountersZero(
      absl::Now(), options_.settle,
      [&]() -> std::optional<std::string> {
        observer_->ReclaimDeadOwners();
        std::string text;
        for (const KeyStats& k : segment_->table().Snapshot()) {
          absl::StrAppend(&text, k.host, ":", k.port, "=", k.connections, " ");
        }
        return text;
      },
      run);
  Collect(run);
  const TableStats table = segment_->table().Stats();  // the segment is this run's
  run.waits = static_cast<int64_t>(table.waited);
  run.wakeups = static_cast<int64_t>(table.wakeups);
  observer_.reset();
  munmap(results_, sizeof(SharedResults));
  unlink(ResultsPath(segment_name_).c_str());
  segment_.reset();
  (void)SharedSegment::Remove(segment_name_);
  tally_.RecordIn(run);
}

// The clients' slots into the tally (and their errors into `run`).
void LibraryClients::Collect(RunData& run) {
  for (int c = 0; c < count(); ++c) {
    ClientSlot& slot = results_->clients[c];
    ClientFigures& figures = tally_.figures[c];
    figures.completed = slot.completed.load();
    figures.failed = slot.failed.load();
    for (int b = 0; b < kBuckets; ++b) {
      for (int32_t i = 0; i < slot.per_bucket[b].load(); ++i) {
        figures.completion_times.push_back(absl::Milliseconds(100 * b + 50));
      }
    }
    tally_.too_many += slot.too_many_clients.load();
    tally_.hung += slot.hung.load();
    tally_.other_errors += slot.failed.load();
    // Client processes keep only their last error: it stands for them all.
    if (slot.failed.load() > 0) {
      NoteError(run, absl::StrCat("(a client's last) ", slot.last_error));
    }
    tally_.queries += slot.completed.load();
    int64_t n = std::min<int64_t>(slot.latencies_written.load(), kLatencySamples);
    for (int64_t i = 0; i < n; ++i) tally_.latencies[c].Add(slot.latency_us[i].load());
  }
}

}  // namespace connthrottle::stress
