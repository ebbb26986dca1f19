// pool_loop.h — the shared pool's event loop: its state and its steps, one
// file per concern (pool_loop.cc: the turn and the inbox; pool_queue.cc: the
// round-robin; pool_sharing.cc: a node's slots among pools and waiters;
// pool_connections.cc: slow start, connecting, closing; pool_tasks.cc:
// sending a task and its reset; pool_results.cc: reading what comes back).
// include/connthrottle/executor/shared_pool.h explains the policy.
//
// Ownership: a Batch (one Execute's tasks) is shared by its session and the
// loop. The session writes it before submitting and then reads only under
// Batch::mu; the loop reads the tasks and writes results under Batch::mu.
// Everything else of the loop (pools, connections, their results while they
// are being read) belongs to the loop's thread alone. Internal to
// src/executor.

#ifndef CONNTHROTTLE_SRC_EXECUTOR_POOL_LOOP_H_
#define CONNTHROTTLE_SRC_EXECUTOR_POOL_LOOP_H_

#include <libpq-fe.h>
#include <poll.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "connthrottle/executor/shared_pool.h"
#include "executor/libpq_conn.h"

namespace connthrottle {

struct SharedPool::Batch {
  // Written by the session before Submit; read-only afterwards.
  std::vector<Task> tasks;
  std::vector<ConnParams> params;  // per task
  std::vector<char> local;         // per task: its node is this coordinator
  uint32_t database_id = 0;
  int64_t max_rows_kept = -1;
  std::optional<absl::Duration> slot_wait_timeout;  // the session's own, if it gave one
  absl::Time submitted;

  // Set by the session when it gives up on the batch; the loop then drops
  // the batch's queued tasks and cancels its running ones.
  std::atomic<bool> cancelled{false};

  // std::mutex, not absl::Mutex: ThreadSanitizer sees through the former
  // only (the system's Abseil is not built with it).
  std::mutex mu;
  std::condition_variable changed;  // a result, a hand-back, the pool gone
  std::vector<TaskResult> results ABSL_GUARDED_BY(mu);
  std::vector<int> handed_back ABSL_GUARDED_BY(mu);  // local failover: run in-process
  int handed_back_total ABSL_GUARDED_BY(mu) = 0;     // every task ever handed back
  int remaining ABSL_GUARDED_BY(mu) = 0;             // tasks without a result yet
  int retried ABSL_GUARDED_BY(mu) = 0;
  bool pool_gone ABSL_GUARDED_BY(mu) = false;  // the pool shut down

  // Bytes of its settled results, counted in `*held_total` (the pool's
  // figure) until the session takes them or drops the batch.
  int64_t held_bytes ABSL_GUARDED_BY(mu) = 0;
  std::shared_ptr<std::atomic<int64_t>> held_total;

  // Called after each change, on the thread that made it, with no lock held.
  std::function<void()> on_change;

  ~Batch() {
    if (held_total) held_total->fetch_sub(held_bytes);
  }

  bool Settled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return remaining == handed_back_total || pool_gone;
  }
  void Notify() {
    changed.notify_all();
    if (on_change) on_change();
  }
};

// One COPY (OpenCopy). The session asks for its steps and reads their
// outcome under Copy::mu; the loop's own state of it (SharedPool::Loop::
// CopyRun) is the loop's alone.
struct SharedPool::Copy {
  // Written by the session before OpenCopy; read-only afterwards.
  CopyRequest request;
  absl::Time submitted;

  // Set by the session when it gives up on the COPY.
  std::atomic<bool> cancelled{false};

  std::mutex mu;
  std::condition_variable changed;  // a step done, the COPY failed or over
  // Steps asked for (Open is the first) and steps the loop completed.
  int asked ABSL_GUARDED_BY(mu) = 1;
  int done ABSL_GUARDED_BY(mu) = 0;
  bool finish_asked ABSL_GUARDED_BY(mu) = false;
  std::vector<CopyPart> chunk ABSL_GUARDED_BY(mu);  // SendCopy's, until the loop takes it
  bool over ABSL_GUARDED_BY(mu) = false;            // failed, cancelled or finished
  absl::Status status ABSL_GUARDED_BY(mu);
  std::string sqlstate ABSL_GUARDED_BY(mu);
  std::vector<CopyNodeResult> results ABSL_GUARDED_BY(mu);

  // Called after each change, on the loop's thread, with no lock held.
  std::function<void()> on_change;

  void Notify() {
    changed.notify_all();
    if (on_change) on_change();
  }
};

// Sets task `t`'s result and wakes the session when it was the last.
// `bytes` of the result are counted in the pool's held figure already; from
// here the batch gives them back.
void SettleTask(SharedPool::Batch& b, int t, TaskResult result, int64_t bytes = 0);

// Fails task `t` with `status` and `sqlstate`.
void FailTask(SharedPool::Batch& b, int t, absl::Status status, const char* sqlstate);

// Whether this thread is `sp`'s loop running its ExternalWork::serve (a
// Submit or Cancel there needs no wake-up: the inbox is taken next).
bool ServingOnLoopThread(const SharedPool& sp);

struct SharedPool::Loop {
  using Batch = SharedPool::Batch;
  using Connection = AdaptiveExecutor::Connection;
  using State = AdaptiveExecutor::Connection::State;

  // What a busy connection is waiting for: its task's results, the Sync
  // after them (pipelined), the reset's results, the Sync after those
  // (pipelined).
  enum class Step { kTask, kTaskSync, kReset, kResetSync };

  struct Pool;
  struct CopyRun;

  struct Conn {
    std::unique_ptr<Connection> c;
    std::shared_ptr<Batch> batch;  // whose task it runs while busy with one
    int task = -1;
    Step step = Step::kTask;
    TaskResult result;         // the running task's result, as it is read
    int64_t result_bytes = 0;  // of `result`, counted in the pool's held figure
    bool cancelling = false;   // its task was cancelled or failed: read and drop until idle
    bool reset_ok = false;     // its DISCARD ALL succeeded
    bool pipelined = false;    // task and reset went in one pipeline
    bool run_simple = false;   // the pipelined task had several statements: run it again
    Pool* give_to = nullptr;   // closed for this pool of the same key: its slot goes there
    CopyRun* copy = nullptr;   // the COPY it is pinned to (state kBusy once connected)
    int copy_target = -1;      // which of the COPY's nodes it serves
    absl::Time idle_since;
    absl::Time sent;
  };

  // One session's tasks queued for one pool.
  struct Queue {
    std::shared_ptr<Batch> batch;
    std::deque<int> tasks;
  };

  struct Pool {
    NodeAddress node;
    std::optional<NodeKey> key;
    std::string key_name;  // the node (host:port): pools of one node share its slots
    ConnParams params;
    bool local = false;
    // The round-robin over sessions. After a session is served it stays at
    // the front, marked, until the next pick moves it to the back: a session
    // that arrives meanwhile is then served before it again.
    std::deque<Queue> queues;
    bool front_served = false;
    int queued = 0;
    std::vector<std::unique_ptr<Conn>> conns;
    // Slow start: at most k new connections per interval, k += 1 each
    // interval while tasks stay queued.
    int k = 1;
    absl::Time interval_start;
    int opened_in_interval = 0;
    absl::Time retry_at;             // after a refused slot: the next interval
    absl::Duration refused_backoff;  // after the worker refused a connection for lack of a slot
    absl::Time starving_since = absl::InfiniteFuture();  // tasks queued, no connection
    absl::Time next_yield_check;  // when to look for waiters to yield idle connections to
    // Its last try for one more connection was refused: no slot was free.
    bool wants_slot = false;
    // Set by Rebalance each turn: the most connections it may grow to while
    // another pool of its key is below its fair share, and how many it is to
    // give back as tasks end for such a pool.
    int share = std::numeric_limits<int>::max();
    int surplus = 0;
    Pool* surplus_to = nullptr;  // the pool below its share that gets them
    // Cost model. A pooled connection lives long, so what it costs (a
    // connect, a worker backend) is weighed against the waiting it saves
    // over time: the integral of the queue's length since the pool last
    // grew, i.e. the task-time spent queued.
    absl::Duration waited;
    absl::Time waited_at;  // when `waited` was last brought up to date
    absl::Duration connect_time_total;
    int64_t connects_done = 0;
    // Task texts of several statements: they take the simple protocol.
    absl::flat_hash_set<std::string> simple_only;
    int copies = 0;  // COPYs with a node in it: it stays while they do
  };

  // One COPY's node (pool_copy.cc): waiting for a connection, pinned, its
  // COPY starting, in COPY, ending, done.
  struct CopyTarget {
    enum class Phase { kWaiting, kPinned, kStarting, kIn, kEnding, kDone };
    Pool* pool = nullptr;
    std::optional<NodeKey> key;
    Conn* conn = nullptr;  // pinned: its Conn::copy is this COPY
    Phase phase = Phase::kWaiting;
    std::string_view pending;  // of the chunk being sent: not yet given to libpq
    bool flushed = true;       // what libpq was given has reached the worker
    bool started = false;
    int64_t rows = 0;
    absl::Status status;  // this node's outcome
    std::string sqlstate;
    std::string command_tag;
  };

  using Phase = CopyTarget::Phase;

  // The loop's side of a COPY.
  struct CopyRun {
    enum class Stage { kOpening, kReady, kSending, kFinishing, kAborting };
    std::shared_ptr<Copy> copy;
    std::vector<CopyTarget> targets;  // in the request's order
    std::vector<int> order;           // the targets in the global node order
    int reserved = 0;                 // of `order`: pinned
    int step = 0;                     // the last step taken from the session
    Stage stage = Stage::kOpening;
    std::optional<absl::Time> wait_began;  // waited for a slot since
    bool waiting = false;                  // its next node has no connection yet
    bool failed = false;                   // told the session it failed
    // A node was sent CopyDone: from here each node's outcome is its own,
    // and the COPY no longer fails (or is cancelled) as a whole.
    bool ending_sent = false;
  };

  // Why a pooled connection is closed: each reason has its counter in
  // SharedPoolStats (or none, where the task's failure says it).
  enum class CloseReason {
    kConnectFailed,  // connections_failed
    kIdleTimeout,    // closed_idle
    kOverLimit,      // closed_over_limit: the node's limit was lowered
    kForWaiters,     // closed_for_waiters: others wait for the node
    kForPool,        // closed_for_pools: its slot goes to another pool of the key
    kDead,           // closed_dead: the worker closed it, or it could not be written
    kInTransaction,  // closed_in_transaction: a task left a transaction open
    kResetFailed,    // closed_reset_failed: DISCARD ALL failed
    kOutOfMemory,    // out_of_memory: its event could not be handled
    kTaskFailed,     // no counter: lost while running a task, or the task entered COPY
  };

  explicit Loop(SharedPool& pool)
      : sp(pool), options(pool.options_), external_ready(pool.external_.fd >= 0) {}

  SharedPool& sp;
  SharedPoolOptions options;  // as of the last turn (set_options)
  uint64_t options_version = 0;
  std::map<std::string, Pool> pools;
  std::vector<std::vector<Pool*>> shared_keys;  // see Regroup
  bool regroup = false;                         // pools came or went since
  SharedPoolStats stats;
  int next_connection_id = 0;
  absl::Time published_at = absl::InfinitePast();
  // The COPYs (pool_copy.cc): a list, so that a pinned Conn's CopyRun* stays
  // valid; the keys and pools a COPY waits for a connection of, made again
  // each turn (Grow does not take a slot a waiting COPY needs; Release gives
  // a waiting COPY's key its connection).
  using Stage = CopyRun::Stage;
  std::list<CopyRun> copies;
  absl::flat_hash_set<std::string> copy_waiting_keys;
  absl::flat_hash_set<const Pool*> copy_waiting_pools;
  // WaitForEvents' descriptors and whose each is, reused turn after turn.
  std::vector<pollfd> poll_fds;
  std::vector<std::pair<Pool*, Conn*>> poll_owners;
  // What the last poll found readable (both, before the first; the external
  // descriptor only when there is one).
  bool inbox_ready = true;
  bool external_ready;

  template <typename Body>
  void Guarded(Body body) {
    try {
      body();
    } catch (const std::bad_alloc&) {
      ++stats.out_of_memory;
    }
  }

  // Marks `conn` to be closed for `why` and counts it: Reap closes it and
  // gives its slot back, or hands the slot to `to` (kForPool). The one
  // place a pooled connection is retired.
  void Close(Conn& conn, CloseReason why, Pool* to = nullptr);

  // ---- pool_loop.cc: the loop: a turn, the inbox, waiting for events, the end ----

  void Run();
  bool TakeInbox();
  void ServeExternal();
  void Enqueue(const std::shared_ptr<Batch>& b);
  void FailUnqueued(Batch& b);
  static void FailOutOfMemory(Batch& b, int t);
  void Cancel(Batch& b);
  void Service(Pool& pool, absl::Time now);
  absl::Time NextWake(absl::Time now) const;
  void WaitForEvents(absl::Time now);
  void HandleEvent(Pool& pool, Conn& conn, short revents, absl::Time now);
  void Shutdown();
  void Publish(absl::Time now);

  // ---- pool_copy.cc: COPY: reserving in the global order, pinning, streaming with backpressure,
  // ending, aborting ----

  Pool& PoolFor(const NodeAddress& node, uint32_t database, const ConnParams& params, bool local,
                const NodeKey& key, absl::Time now);
  void TakeCopy(const std::shared_ptr<Copy>& copy, absl::Time now);
  void StartCopy(const std::shared_ptr<Copy>& copy, absl::Time now);
  void TakeStep(CopyRun& run);
  void ServiceCopies(absl::Time now);
  bool Advance(CopyRun& run, absl::Time now);
  void Reserve(CopyRun& run, absl::Time now);
  Conn* IdleConnection(Pool& pool);
  void Pin(CopyRun& run, int t, Conn& conn);
  void Unpin(CopyTarget& target, absl::Time now);
  void Pump(CopyRun& run, CopyTarget& target, absl::Time now);
  void StartNodeCopy(CopyRun& run, CopyTarget& target);
  void ReadCopyResults(CopyRun& run, CopyTarget& target, absl::Time now);
  void PutData(CopyRun& run, CopyTarget& target);
  void EndNodeCopy(CopyRun& run, CopyTarget& target, const char* error);
  void ReleaseTarget(CopyTarget& target, absl::Time now);
  void TargetLost(CopyRun& run, CopyTarget& target, const std::string& why);
  void FailCopyRun(CopyRun& run, absl::Status status, const char* sqlstate);
  void StepDone(CopyRun& run);
  void FinishCopyRun(CopyRun& run);
  void CopyEvent(Conn& conn, short revents, absl::Time now);
  void CopyConnectFailed(Conn& conn, absl::Status why, const char* sqlstate);
  bool CopyWaitsFor(const Pool& pool) const;
  void ShutdownCopies();

  // ---- pool_queue.cc: the queue: the round-robin over sessions, requeue, failing and handing back
  // queued tasks ----

  static void Rotate(Pool& pool);
  std::pair<std::shared_ptr<Batch>, int> NextTask(Pool& pool);
  void Requeue(Pool& pool, std::shared_ptr<Batch> b, int t);
  void FailQueued(Pool& pool, const absl::Status& why, const char* sqlstate);
  absl::Duration WaitTimeoutOf(const Batch& b) const;
  absl::Time StarvedAt(const Pool& pool, const Queue& q) const;
  void FailStarved(Pool& pool, absl::Time now);
  void HandBack(Pool& pool);

  // ---- pool_sharing.cc: sharing a node's slots: between pools of a key, with the node's other
  // waiters, within a lowered limit ----

  void Rebalance();
  void Regroup();
  static bool Busy(const Pool& pool);
  // The longest idle connection of the group's pools other than `except`
  // with nothing queued; with `same_database`, only of `except`'s database.
  static Conn* LongestIdle(const std::vector<Pool*>& group, const Pool* except,
                           bool same_database = false);
  int OverLimit(const Pool& pool);
  bool AtDatabaseBound(const Pool& pool, const Limit& limit);
  bool CountedForDatabase(Pool& pool, Conn& conn, std::optional<Limit>& limit);
  void CloseIdle(Pool& pool, int n, CloseReason why);
  void ShrinkToLimit(Pool& pool);
  int UnservedWaiters(const Pool& pool);
  void YieldToWaiters(Pool& pool);

  // ---- pool_connections.cc: connections: slow start and the cost model, connecting, closing and
  // reaping ----

  static int LiveConnections(const Pool& pool);
  static int TaskConnections(const Pool& pool);  // live and not pinned to a COPY
  void Grow(Pool& pool, absl::Time now);
  void StartConnect(Pool& pool, Slot slot, absl::Time now);
  void Connecting(Pool& pool, Conn& conn, absl::Time now);
  void ConnectFailed(Pool& pool, Conn& conn, const ConnectError& why, absl::Time now);
  void ExpireIdle(Pool& pool, absl::Time now);
  void Reap(Pool& pool);
  void IdleReadable(Conn& conn);
  void OutOfMemory(Conn& conn);

  // ---- pool_tasks.cc: running a task: sending it with its reset, the connection's release
  // afterwards ----

  void Dispatch(Pool& pool, absl::Time now);
  void Send(Pool& pool, Conn& conn, std::shared_ptr<Batch> b, int t, absl::Time now);
  static bool SendPipelined(Conn& conn, const std::string& sql, int64_t max_rows_kept);
  static bool SendSimple(Conn& conn, const std::string& sql, int64_t max_rows_kept);
  static bool HasParameterSymbol(absl::string_view sql);
  static bool Flush(Connection& c, bool sent);
  void FinishTask(Conn& conn, absl::Time now);
  void SendReset(Conn& conn, absl::Time now);
  void Release(Pool& pool, Conn& conn, absl::Time now);

  // ---- pool_results.cc: reading a task's results: the pipeline's steps, result memory, failures
  // ----

  void ReadResults(Pool& pool, Conn& conn, absl::Time now);
  bool QueryEnded(Pool& pool, Conn& conn, absl::Time now);
  bool TaskResultIn(Pool& pool, Conn& conn, PGresult* res);
  void Complete(Pool& pool, Conn& conn, absl::Time now);
  void PipelineDone(Pool& pool, Conn& conn, absl::Time now);
  void Lost(Pool& pool, Conn& conn, const std::string& why);
  void FailCopy(Pool& pool, Conn& conn, ExecStatusType copy);
  static bool BackendEnding(const PGresult* res);
  static bool SeveralStatements(const PGresult* res);
  void Uncount(Conn& conn);
  bool Hold(Conn& conn, int64_t bytes);
  void FailOverMemory(Pool& pool, Conn& conn);
  void DropNotifications(PGconn* pg);
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_EXECUTOR_POOL_LOOP_H_
