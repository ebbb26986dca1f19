// transport_benchmark.cc — the two transports on real PostgreSQL workers,
// with more sessions than slots, against running unthrottled.
//
// Two workers (LocalServer, max_connections 200) are started once. Each
// benchmark thread is one coordinator session; one iteration is one
// execution. Transports:
//
//   direct       AdaptiveExecutor, limit 8 per worker (the shared table).
//   shared_pool  SharedPoolTransport over one SharedPool (limit 8 per worker)
//                that lives for the whole run, as the communicator would.
//   unthrottled  AdaptiveExecutor with throttling off: the baseline.
//
// Workloads:
//   FanOut  16 tasks, 8 per worker, `SELECT 1` (a 16-task fan-out).
//   Router  1 task, `SELECT 1` on one worker (a single-row router query).
//
// Every session's executor keeps up to 4 connections per worker
// (max_adaptive_executor_pool_size 4), so the unthrottled run at 32 sessions
// stays within max_connections. Reported per case: executions per second
// (items_per_second), the worker backends started per execution (counter
// backends_per_exec, from the workers' own log), Jain's fairness index over
// the sessions' rates (counter jain; 1 = all equal), the slowest single
// execution of any session (slowest_ms), and where one session's time goes
// (exec_us per execution; task_queued_us from Execute to a task's start,
// task_run_us from sending it to its last result). A failed task is an
// error of the case. Compare the transports within one run:
//
//   build/bench/transport_benchmark --benchmark_repetitions=3

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/counter_table.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/standalone_context.h"
#include "connthrottle/owner.h"
#include "connthrottle/shared_segment.h"
#include "tests/testing/local_server.h"

namespace connthrottle {
namespace {

constexpr int kLimit = 8;
constexpr int kPoolPerSession = 4;

struct World {
  std::string root;
  std::vector<std::unique_ptr<cluster::LocalServer>> workers;
  std::unique_ptr<SharedSegment> segment;
  std::unique_ptr<Owner> pool_owner;
  std::unique_ptr<StandaloneContext> pool_limits;
  std::unique_ptr<SharedPool> pool;
};
World* world = nullptr;

StandaloneContext::Settings SettingsFor(bool throttled) {
  StandaloneContext::Settings s;
  s.limits.max_shared_pool_size = throttled ? kLimit : kThrottlingOff;
  return s;
}

// Backends the workers authorized for the executor's connections so far.
int64_t BackendsStarted() {
  int64_t n = 0;
  for (const auto& w : world->workers) {
    std::ifstream in(w->log_file());
    std::string line;
    while (std::getline(in, line)) {
      if (absl::StrContains(line, "connection authorized:") &&
          absl::EndsWith(line, "application_name=connthrottle")) {
        ++n;
      }
    }
  }
  return n;
}

std::vector<Task> Workload(bool fan_out, int thread) {
  std::vector<Task> tasks;
  const int n = fan_out ? 16 : 1;
  for (int i = 0; i < n; ++i) {
    const auto& w = world->workers[(i + thread) % 2];
    tasks.push_back(Task{NodeAddress{w->host(), w->port()}, "SELECT 1"});
  }
  return tasks;
}

enum class Kind { kDirect, kSharedPool, kUnthrottled };

// Per session of the case that runs now: its executions per second (each
// thread runs as many executions as the others; a starved one takes longer)
// and its slowest execution.
std::vector<double> session_rate(64);
std::vector<double> session_slowest_ms(64);

// Jain's fairness index over the sessions' rates, (sum x)^2 / (n sum x^2):
// 1 when every session went as fast.
double JainIndex(int sessions) {
  double sum = 0, squares = 0;
  for (int i = 0; i < sessions; ++i) {
    sum += session_rate[i];
    squares += session_rate[i] * session_rate[i];
  }
  return squares > 0 ? sum * sum / (sessions * squares) : 0;
}

void Run(benchmark::State& state, Kind kind, bool fan_out) {
  static std::atomic<int64_t> backends_before{0};
  static std::atomic<int> ended{0};
  if (state.thread_index() == 0) {
    backends_before = BackendsStarted();
    ended = 0;
  }
  StandaloneContext context(SettingsFor(kind != Kind::kUnthrottled));
  std::unique_ptr<Owner> owner;
  std::unique_ptr<Transport> transport;
  if (kind == Kind::kSharedPool) {
    transport = std::make_unique<SharedPoolTransport>(*world->pool, context);
  } else {
    owner = *world->segment->table().RegisterOwner();
    ExecutorOptions options;
    options.max_pool_size = kPoolPerSession;
    transport = std::make_unique<AdaptiveExecutor>(*owner, context, options);
  }
  const std::vector<Task> tasks = Workload(fan_out, state.thread_index());
  // This session's own time: from its first execution's start to its last
  // one's end (the loop's end waits for every thread).
  absl::Time first = absl::InfiniteFuture(), last;
  absl::Duration slowest, queued, run, total;
  int64_t tasks_seen = 0;
  for (auto _ : state) {
    const absl::Time began = absl::Now();
    first = std::min(first, began);
    absl::StatusOr<ExecutionResult> r = transport->Execute(tasks);
    last = absl::Now();
    slowest = std::max(slowest, last - began);
    total += last - began;
    bool ok = r.ok();
    if (ok) {
      for (const TaskResult& t : r->tasks) ok = ok && t.status.ok();
    }
    if (!ok) {
      state.SkipWithError(r.ok() ? "a task failed" : "the execution failed");
      break;
    }
    for (const TaskResult& t : r->tasks) {
      queued += t.queued;
      run += t.run;
      ++tasks_seen;
    }
  }
  transport.reset();
  owner.reset();
  state.SetItemsProcessed(state.iterations());
  session_rate[state.thread_index()] =
      static_cast<double>(state.iterations()) / absl::ToDoubleSeconds(last - first);
  session_slowest_ms[state.thread_index()] = absl::ToDoubleMilliseconds(slowest);
  ++ended;
  if (state.thread_index() == 0) {
    while (ended.load() < state.threads()) {
      std::this_thread::yield();
    }
    state.counters["jain"] = JainIndex(state.threads());
    // Where an execution's time goes (thread 0's tasks): queued, from the
    // start of Execute to the task's start; run, from sending it to its last
    // result; and the execution's whole time.
    const double n = static_cast<double>(std::max<int64_t>(1, tasks_seen));
    state.counters["task_queued_us"] = absl::ToDoubleMicroseconds(queued) / n;
    state.counters["task_run_us"] = absl::ToDoubleMicroseconds(run) / n;
    state.counters["exec_us"] = absl::ToDoubleMicroseconds(total) /
                                static_cast<double>(std::max<int64_t>(1, state.iterations()));
    if (kind == Kind::kSharedPool) {
      int pooled = 0;
      for (const auto& [node, n] : world->pool->Connections()) pooled += n;
      state.counters["pooled"] = pooled;
    }
    state.counters["slowest_ms"] =
        *std::max_element(session_slowest_ms.begin(), session_slowest_ms.begin() + state.threads());
    // Counted by thread 0 after its own loop; the others may still close
    // their cached connections, which start no backend.
    state.counters["backends_per_exec"] =
        benchmark::Counter(static_cast<double>(BackendsStarted() - backends_before.load()) /
                               std::max<int64_t>(1, state.iterations() * state.threads()),
                           benchmark::Counter::kDefaults);
  }
}

void BM_FanOut_Direct(benchmark::State& s) { Run(s, Kind::kDirect, true); }
void BM_FanOut_SharedPool(benchmark::State& s) { Run(s, Kind::kSharedPool, true); }
void BM_FanOut_Unthrottled(benchmark::State& s) { Run(s, Kind::kUnthrottled, true); }
void BM_Router_Direct(benchmark::State& s) { Run(s, Kind::kDirect, false); }
void BM_Router_SharedPool(benchmark::State& s) { Run(s, Kind::kSharedPool, false); }
void BM_Router_Unthrottled(benchmark::State& s) { Run(s, Kind::kUnthrottled, false); }

#define SESSIONS(b) BENCHMARK(b)->Threads(1)->Threads(8)->Threads(32)->UseRealTime()->MinTime(3.0)

SESSIONS(BM_FanOut_Unthrottled);
SESSIONS(BM_FanOut_Direct);
SESSIONS(BM_FanOut_SharedPool);
SESSIONS(BM_Router_Unthrottled);
SESSIONS(BM_Router_Direct);
SESSIONS(BM_Router_SharedPool);

absl::Status Setup() {
  absl::StatusOr<std::string> root = cluster::MakeServerRoot("ct-transport-bench");
  if (!root.ok()) return root.status();
  world->root = *root;
  for (const char* name : {"worker1", "worker2"}) {
    absl::StatusOr<std::unique_ptr<cluster::LocalServer>> server = cluster::LocalServer::Start(
        world->root,
        cluster::ServerConfig{
            .name = name, .max_connections = 200, .settings = {{"log_connections", "on"}}});
    if (!server.ok()) return server.status();
    world->workers.push_back(*std::move(server));
  }
  absl::StatusOr<std::unique_ptr<SharedSegment>> segment =
      SharedSegment::CreateOrAttach(absl::StrCat("ct-transport-bench-", getpid()), TableOptions{});
  if (!segment.ok()) return segment.status();
  world->segment = *std::move(segment);
  absl::StatusOr<std::unique_ptr<Owner>> owner = world->segment->table().RegisterOwner();
  if (!owner.ok()) return owner.status();
  world->pool_owner = *std::move(owner);
  world->pool_limits = std::make_unique<StandaloneContext>(SettingsFor(true));
  StandaloneContext* limits = world->pool_limits.get();
  world->pool = std::make_unique<SharedPool>(
      *world->pool_owner,
      [limits](const NodeAddress& node, bool local) { return limits->LimitFor(node, local); });
  return absl::OkStatus();
}

}  // namespace
}  // namespace connthrottle

int main(int argc, char** argv) {
  using connthrottle::world;
  benchmark::Initialize(&argc, argv);
  world = new connthrottle::World;
  if (absl::Status s = connthrottle::Setup(); !s.ok()) {
    std::fprintf(stderr, "transport_benchmark: setup failed: %s\n", s.ToString().c_str());
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  world->pool.reset();
  world->pool_owner.reset();
  const std::string segment = world->segment->name();
  world->segment.reset();
  (void)connthrottle::SharedSegment::Remove(segment);
  world->workers.clear();
  connthrottle::cluster::RemoveTree(world->root);
  delete world;
  return 0;
}
