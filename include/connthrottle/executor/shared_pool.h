// connthrottle/shared_pool.h — long-lived worker connections shared by many
// sessions, and the transport through which a session uses them.
//
// A SharedPool runs one event loop, on a thread of its own, over every
// connection it holds. Connections are grouped in pools, one per (node,
// database, connection parameters). Sessions submit their tasks through a
// SharedPoolTransport and wait for their tasks' turn, never for a slot: no
// session holds anything while it waits, so there is no hold-and-wait.
//
//   * Every connection holds a slot of the shared CounterTable, taken
//     through the pool's Owner, for as long as it exists: the strict limit,
//     Holders() and Audit() keep their meaning, with the pool as the holder.
//   * Fairness: a free connection takes the next task of the next session in
//     a round-robin over the sessions with tasks queued for its pool, so one
//     session's thousand tasks do not starve another's one.
//   * Growth: a pool with tasks queued and no idle connection opens one more
//     if a slot is free now (an optional acquire: the loop never waits for a
//     slot; refused, it tries again at the next slow-start interval), at most
//     k new connections per interval (k grows by one each interval), up to
//     max_pool_size, and only while the queue would outlast twice a connect
//     time on the connections it has (measured task and connect times).
//   * A connection idle for idle_timeout is closed and its slot given back;
//     so is an idle connection while others queue for a slot of its node
//     (direct-transport sessions, COPY's reservations): the pool looks every
//     25 ms and gives back one idle connection per waiter no free slot
//     serves. A pool that always has work gives one back as a task ends
//     instead, keeping at least one connection for its own queue.
//   * After the limit is lowered, connections above it are closed as they
//     become idle (looked at every 25 ms, and as each task ends).
//   * A dead connection is found while idle (its socket turns readable) or
//     just before use, closed and replaced. A task not yet sent moves to
//     another connection; a task that was running fails with 08006.
//   * Isolation: every task runs as on a fresh connection. After a task,
//     its connection runs DISCARD ALL before it serves anyone again, so no
//     role, setting, temporary table, cursor, LISTEN, advisory lock,
//     sequence state or prepared statement a task leaves behind reaches
//     another task (its own session's included). A connection a task left
//     inside a transaction, or whose DISCARD ALL failed, is closed instead.
//     A single-statement task and its reset go in one write (libpq pipeline
//     mode, extended protocol: task, Sync, DISCARD ALL, Sync); a task of
//     several statements, or with a parameter symbol ($1), runs with the
//     simple protocol and its reset follows in a round trip of its own.
//     The pool prepares no statements of its own, so there is nothing a
//     task could replace. Notifications a task LISTENs for are read and
//     dropped with its results (tasks have no way to receive them).
//   * Pools of one node key (host, port, database) share its slots: a pool
//     refused a slot while another pool of the key holds an idle connection
//     gets that connection's slot at once (the idle one is closed); with k
//     pools busy, while a pool with queued tasks is below min(limit / k,
//     max_pool_size) no pool grows past that, and the pools with two or
//     more connections more than it close one each as a task ends, its
//     slot handed straight to it (not through the counter, where a waiting
//     direct-transport session would take it first): busy pools converge
//     to fair shares.
//   * Memory: the results a pool holds (read and not yet taken by their
//     sessions) stay within result_memory; a task whose result would go
//     beyond fails with 54000 naming result_memory_setting. An allocation
//     failure on the loop's thread fails the tasks it concerns with 53200
//     and the loop goes on.
//   * Cancel: a session's queued tasks are dropped and its running ones
//     cancelled (PQcancel); their connections are drained back to idle and
//     stay in the pool. The session does not wait for the drain.
//   * Local failover: when a local node's pool cannot get one connection,
//     its queued tasks go back to their sessions, which run them in-process
//     (ExecutionContext::RunLocally), as the direct transport does.
//   * A pool whose node cannot be connected to fails its queued tasks with
//     08001. While a pool has tasks queued and no connection, each
//     execution's tasks fail with 53300 once it has waited its own
//     Submission::slot_wait_timeout (SharedPoolOptions::slot_wait_timeout
//     when it brings none).
//
// Thread-safety: SharedPoolTransports of any threads may use one SharedPool
// at once; stats() and Connections() may be called from any thread. The
// pool's Owner is used by the loop's thread only (and by the destructor,
// after the loop has stopped); it and the limit function must outlive the
// pool, and the limit function must be callable from the loop's thread.

#ifndef CONNTHROTTLE_EXECUTOR_SHARED_POOL_H_
#define CONNTHROTTLE_EXECUTOR_SHARED_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/conn_params.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/task.h"
#include "connthrottle/executor/transport.h"
#include "connthrottle/limit.h"
#include "connthrottle/owner.h"

namespace connthrottle {

// How an option of shared_pool_settings.def comes from its setting's
// integer, by the setting's unit: its type and value.
namespace pool_setting_unit {
inline absl::Duration ms(int value) { return absl::Milliseconds(value); }
inline size_t kB(int value) { return static_cast<size_t>(value) * 1024; }
inline int count(int value) { return value; }
}  // namespace pool_setting_unit

struct SharedPoolOptions {
  int max_pool_size = 16;  // connections per pool at most (the limit caps them too)
  absl::Duration connect_timeout = absl::Seconds(30);  // node_connection_timeout
  absl::Duration slow_start_interval = absl::Milliseconds(10);
  // How long a pool with queued tasks may go without a single connection
  // because no slot is free before its queued tasks fail with 53300.
  absl::Duration slot_wait_timeout = absl::Minutes(1);
  FullTablePolicy when_table_full = FullTablePolicy::kAdmitUncounted;
  // Named in the error of a task whose results would go beyond result_memory.
  std::string result_memory_setting = "SharedPoolOptions::result_memory";

  // The members the extension fills from its settings (idle_timeout,
  // result_memory, ...), declared with what they mean in
  // shared_pool_settings.def.
#define CONNTHROTTLE_POOL_SETTING(field, unit, default_value, ...) \
  decltype(pool_setting_unit::unit(0)) field = pool_setting_unit::unit(default_value);
#include "connthrottle/executor/shared_pool_settings.def"
};

// Cumulative figures of a SharedPool since it started: one per
// CONNTHROTTLE_POOL_STAT of shared_pool_stats.def, which says what each
// counts.
struct SharedPoolStats {
#define CONNTHROTTLE_POOL_STAT(name) int64_t name = 0;
#define CONNTHROTTLE_COMMUNICATOR_STAT(name)
#include "connthrottle/executor/shared_pool_stats.def"
};

class SharedPool {
 public:
  // Where the limit of a node comes from; read at every decision.
  using LimitFunction = std::function<Limit(const NodeAddress& node, bool local)>;

  // Work that reaches the pool from outside this process's threads (the
  // extension's backends): whenever `fd` is readable the loop reads it once
  // (an eventfd: the read drains it) and then calls `serve` on the loop's
  // own thread, with no lock of the pool held. `serve` may Submit and
  // Cancel; what it submits is taken in the same turn, without another
  // wake-up. Because the read comes first, work published while `serve`
  // runs and signalled on `fd` afterwards is served at the next turn: a
  // publisher that makes its work visible and then writes to `fd` is never
  // missed. `fd` stays the caller's (it is not closed). Both or neither:
  // without a descriptor or without `serve` there is no external work.
  struct ExternalWork {
    int fd = -1;
    std::function<void()> serve;
  };

  // Starts the loop's thread. `owner` takes and holds every connection's slot.
  SharedPool(Owner& owner, LimitFunction limit, SharedPoolOptions options = {});
  SharedPool(Owner& owner, LimitFunction limit, SharedPoolOptions options, ExternalWork external);
  SharedPool(const SharedPool&) = delete;
  SharedPool& operator=(const SharedPool&) = delete;
  // Stops the loop: tasks still queued or running fail with 08006
  // ("shared pool shut down"), running queries are cancelled, and every
  // connection is closed, its slot given back.
  ~SharedPool();

  SharedPoolStats stats() const;
  // Connections open now (connecting, idle or busy), per node.
  std::map<NodeAddress, int> Connections() const;
  // Tasks waiting for a connection now, per node.
  std::map<NodeAddress, int> Queued() const;
  // Connections idle in the pools now (open, no task, no COPY), per node:
  // what the pool holds without needing it at this moment.
  std::map<NodeAddress, int> Idle() const;

  // New options while the pool runs (a configuration reload); the loop
  // applies them at its next turn.
  void set_options(const SharedPoolOptions& options);

  // ---- Submitting tasks (SharedPoolTransport, the extension's communicator) ----

  // One execution's tasks, and how to reach each task's node.
  struct Submission {
    std::vector<Task> tasks;
    std::vector<ConnParams> params;  // per task
    std::vector<bool> local;         // per task: its node is this coordinator
    uint32_t database_id = 0;
    int64_t max_rows_kept = -1;  // as ExecutorOptions::max_rows_kept
    // How long the tasks may wait while their pool has no connection before
    // they fail with 53300 (the session's connthrottle.connection_wait_timeout);
    // absent: SharedPoolOptions::slot_wait_timeout.
    std::optional<absl::Duration> slot_wait_timeout;
  };
  // What a submitted execution has come to.
  struct Progress {
    std::vector<int> handed_back;  // tasks given back since the last look: run them in-process
    bool settled = false;          // every task has a result or was handed back
    bool pool_gone = false;        // the pool shut down: no more results will come
  };
  struct Batch;  // one execution's tasks; defined in src/executor/shared_pool.cc
  using Ticket = std::shared_ptr<Batch>;

  // Queues the tasks. `on_change`, when given, is called on the loop's
  // thread each time the execution progresses (a result settles it, a task
  // is handed back, the pool stops), with no lock of the pool held. It holds
  // up the loop while it runs, so it must be quick; it may call Poll and
  // TakeResults (they take only the execution's own lock).
  Ticket Submit(Submission submission, std::function<void()> on_change = {});
  // Takes the progress made so far; Await waits up to `timeout` for some.
  Progress Poll(const Ticket& ticket);
  Progress Await(const Ticket& ticket, absl::Duration timeout);
  // Once settled: the results in task order (handed-back tasks' results are
  // left for the caller to fill) and tasks_retried. Call once.
  ExecutionResult TakeResults(const Ticket& ticket);
  // Drops the execution's queued tasks and cancels its running ones; the
  // ticket gets no more results.
  void Cancel(const Ticket& ticket);

  // ---- COPY through the pool (pool_copy.cc; a session's side: pooled_copy.h) ----
  //
  // One COPY ... FROM STDIN to several nodes on pooled connections, pinned to
  // it from OpenCopy until it ends. Open takes one connection per node in the
  // global node order (NodeKey's), all or nothing, before any row: an idle
  // connection of the node's pool, else one opened on a slot free now. A node
  // with neither makes the COPY wait for that node only (it holds the nodes
  // before it, as ReservationLedger::ReserveAll does): the node's next
  // connection to finish a task is pinned to it, the pool does not grow for
  // its own tasks meanwhile, and once it has waited its wait timeout (from
  // its first wait, for all its nodes together) it fails with 53300
  // (everything given back). A node's COPY starts with its first data. Each
  // chunk is acknowledged once it is flushed to every node: the pool holds no
  // copy of it, and a worker that reads slowly holds up that COPY only. At
  // the end each node's COPY commits or fails on its own (its own
  // transaction on the worker); its connection then runs DISCARD ALL and
  // goes back to its pool. A connection lost, a node refused or a worker's
  // error before the end fails the COPY as a whole; cancelling it ends every
  // node's COPY with an error, so that nothing is committed.
  struct CopyRequest {
    std::vector<NodeAddress> nodes;  // no node twice
    std::vector<ConnParams> params;  // per node
    std::vector<bool> local;         // per node: this coordinator
    uint32_t database_id = 0;
    std::string copy_sql;                             // COPY ... FROM STDIN
    std::optional<absl::Duration> slot_wait_timeout;  // as Submission's
  };
  // Whole rows in COPY's text format for nodes[node]: the bytes stay the
  // caller's, unchanged, until the step is done (after CancelCopy too: the
  // step is done once the loop has taken the cancel).
  struct CopyPart {
    int node = 0;
    std::string_view data;
  };
  struct CopyNodeResult {
    NodeAddress node;
    int64_t rows = 0;      // rows sent (lines of COPY data)
    bool started = false;  // data came for it, so its COPY ran
    absl::Status status;   // its COPY's outcome
    std::string sqlstate;
    std::string command_tag;  // "COPY n"
  };
  struct CopyProgress {
    bool done = false;    // the last step (open, send, finish) is complete
    absl::Status status;  // not OK: the COPY failed or was cancelled, and is over
    std::string sqlstate;
    std::vector<CopyNodeResult> results;  // once FinishCopy's step is done
  };
  struct Copy;  // defined in src/executor/pool_loop.h
  using CopyTicket = std::shared_ptr<Copy>;

  // Opens the COPY: its first step, Open, is done once every node's
  // connection is pinned to it. `on_change` as for Submit. Then, one step at
  // a time: SendCopy with a chunk (at most one part per node), and
  // FinishCopy with the last chunk (maybe empty), whose step's progress
  // brings the results. The first of them may be asked for right after
  // OpenCopy, before Open is done: it is taken once the COPY is open, and
  // Poll and Await then report on it. Either refuses (nothing done) while
  // the last step is not done (FailedPrecondition) or once the COPY is over: its own error
  // when it failed between two steps (PollCopy has its SQLSTATE). Poll and
  // Await report on the last step (results are taken once). CancelCopy at
  // any time, and before the ticket is dropped unless it finished: the pool
  // otherwise keeps the COPY's connections. No node's COPY ends before every
  // node has taken its last rows, so an error before then (a node refusing
  // its COPY, a lost connection) leaves nothing committed anywhere.
  CopyTicket OpenCopy(CopyRequest request, std::function<void()> on_change = {});
  absl::Status SendCopy(const CopyTicket& ticket, std::vector<CopyPart> chunk);
  absl::Status FinishCopy(const CopyTicket& ticket, std::vector<CopyPart> last = {});
  CopyProgress PollCopy(const CopyTicket& ticket);
  CopyProgress AwaitCopy(const CopyTicket& ticket, absl::Duration timeout);
  void CancelCopy(const CopyTicket& ticket);

 private:
  struct Loop;

  void Wake();
  // SendCopy's and FinishCopy's step: asked for, then put in the inbox.
  absl::Status QueueCopyStep(const CopyTicket& ticket, std::vector<CopyPart> chunk, bool finish);

  Owner& owner_;
  LimitFunction limit_;
  SharedPoolOptions options_ ABSL_GUARDED_BY(mu_);
  uint64_t options_version_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by set_options
  int wake_fd_ = -1;  // eventfd the loop polls: new work, cancels, stop
  const ExternalWork external_;

  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Batch>> submitted_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Batch>> cancelled_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Copy>> copies_ ABSL_GUARDED_BY(mu_);  // with a new step or cancel
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SharedPoolStats stats_ ABSL_GUARDED_BY(mu_);
  std::map<NodeAddress, int> connections_ ABSL_GUARDED_BY(mu_);
  std::map<NodeAddress, int> queued_ ABSL_GUARDED_BY(mu_);
  std::map<NodeAddress, int> idle_ ABSL_GUARDED_BY(mu_);

  // Bytes of results held for sessions: read by the loop, released as the
  // sessions take them (TakeResults) or drop their tickets.
  std::shared_ptr<std::atomic<int64_t>> held_ = std::make_shared<std::atomic<int64_t>>(0);

  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

// The session side of a SharedPool: Execute() submits the tasks and waits,
// consulting the context's Interrupted() at least every `tick`, for their
// results. On an interrupt it cancels them and returns Cancelled at once. A
// SharedPoolTransport belongs to one session (one thread); the pool and the
// context must outlive it.
class SharedPoolTransport : public Transport {
 public:
  struct Options {
    absl::Duration tick = absl::Milliseconds(10);
    int64_t max_rows_kept = -1;                       // as ExecutorOptions::max_rows_kept
    std::optional<absl::Duration> slot_wait_timeout;  // as Submission::slot_wait_timeout
  };

  SharedPoolTransport(SharedPool& pool, ExecutionContext& context, Options options);
  SharedPoolTransport(SharedPool& pool, ExecutionContext& context)
      : SharedPoolTransport(pool, context, Options{}) {}

  // Connection figures in the result's stats stay zero (connections are the
  // pool's: SharedPool::stats()); tasks_run_locally and tasks_retried count.
  absl::StatusOr<ExecutionResult> Execute(std::vector<Task> tasks) override;

 private:
  SharedPool& pool_;
  ExecutionContext& context_;
  Options options_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_SHARED_POOL_H_
