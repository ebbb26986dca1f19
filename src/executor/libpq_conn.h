// libpq_conn.h — one libpq connection and the slot it holds, and each libpq
// action the executor's transports take on one (connect, poll, cancel, read a
// result, refuse a COPY, close), written once for the adaptive executor, the
// shared pool's loop and CopyStream. Internal to src/executor; not
// thread-safe: a connection belongs to one thread at a time.

#ifndef CONNTHROTTLE_SRC_EXECUTOR_LIBPQ_CONN_H_
#define CONNTHROTTLE_SRC_EXECUTOR_LIBPQ_CONN_H_

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "connthrottle/conn_params.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/slot.h"

namespace connthrottle {

struct AdaptiveExecutor::Connection {
  enum class State { kConnecting, kIdle, kBusy, kBroken };

  int id = -1;
  NodeAddress node;
  PGconn* pg = nullptr;
  Slot slot;  // given back only after the connection is closed (CloseAll)
  State state = State::kConnecting;
  PostgresPollingStatusType poll = PGRES_POLLING_WRITING;
  bool want_write = false;  // a query is still being flushed
  bool reused = false;      // came from the cache in this execution
  absl::Time connect_started;
  absl::Time ready;  // when the connection became usable
  int task = -1;     // the task it runs while kBusy
  bool task_got_result = false;
  bool in_result_set = false;  // single-row mode: rows of a result set are arriving

  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();  // closes abruptly if CloseAll did not run
};

// Starts connecting `c` (its id, node and slot already set) with `params`,
// without blocking: kConnecting, to be driven by ContinueConnecting when its
// socket is ready for `c.poll`. When libpq cannot even start (out of memory,
// bad parameters) `c` is kBroken and the reason is returned.
std::optional<std::string> StartConnecting(AdaptiveExecutor::Connection& c,
                                           const ConnParams& params, absl::Time now);

enum class ConnectProgress { kPending, kReady, kFailed };

// One step of the connection's handshake, after its socket was ready: on
// kReady it is non-blocking and kIdle, `ready` set to `now`; on kFailed
// ConnectError says why (the caller decides what the failure means).
ConnectProgress ContinueConnecting(AdaptiveExecutor::Connection& c, absl::Time now);

// Why a connect attempt failed: libpq's message as it shows it by default,
// and the SQLSTATE of the server's refusal when the server sent one (the
// handshake runs with verbose errors to learn it; empty for a network
// failure).
struct ConnectError {
  std::string message;
  std::string sqlstate;
  // The worker refused for lack of a slot (53300): its max_connections, or
  // its connthrottle.worker_budget. The caller treats it as a refused slot:
  // it tries again later, and fails tasks only at their wait timeout.
  bool no_slot() const { return sqlstate == "53300"; }
};
ConnectError ReadConnectError(PGconn* pg);
// How long to wait before asking a worker that refused for lack of a slot
// again: one slow-start interval, doubling at each refusal in a row (each
// try costs the worker a backend start), at most 500 ms (or the interval,
// when that is longer). `previous` is zero after a connect that succeeded.
absl::Duration NoSlotBackoff(absl::Duration previous, absl::Duration slow_start);
// The same, from the text of a verbose libpq message.
ConnectError ParseConnectError(std::string text);

// The message of a connect attempt given up after `timeout`.
std::string ConnectTimedOut(absl::Duration timeout);

// What a task's pool reports when it has no connection at all: 08001.
absl::Status CouldNotConnect(const NodeAddress& node, const std::string& why);

// The socket events a connection waits for now: a connect's next step, or a
// busy connection's results (and the rest of its query, while unsent); 0
// otherwise.
short AwaitedEvents(const AdaptiveExecutor::Connection& c);

// A busy connection's socket reported `revents`: the rest of its query
// is flushed if the socket is writable. False when that failed (libpq's
// message says why).
bool FlushWhenWritable(AdaptiveExecutor::Connection& c, short revents);

// Whether a busy connection's socket has results (or an error) to read.
bool ResultsReadable(short revents);

// Asks the worker to cancel what `pg` runs. PostgreSQL 15's libpq has only
// the blocking cancel: one short connection to the worker's postmaster.
void SendCancel(PGconn* pg);

// A task entered COPY, which tasks cannot do: the worker's COPY is ended
// (COPY FROM STDIN with an error, others cancelled). The connection must be
// closed.
void StopCopy(PGconn* pg, ExecStatusType copy);

// The task's error for that: 0A000 (kUnimplemented), naming the node.
absl::Status CopyRefused(const NodeAddress& node, ExecStatusType copy);

// Drops the notices a worker sends (libpq would print them on stderr, which
// in a PostgreSQL backend is the server log): a task's outcome is its result
// or its error, and errors reach the caller through TaskResult.
void QuietNotices(PGconn* pg);

// libpq's message without its trailing newline.
std::string Trim(std::string s);

// An idle connection's socket has something to read while nobody asked
// anything: the worker closed it or is about to (a FATAL message, EOF).
bool IdleConnectionIsDead(PGconn* pg);

// Local failover of a pooled transport: runs a task the pool handed back
// in-process, timed from `submitted` (when the execution was submitted).
TaskResult RunHandedBack(ExecutionContext& context, const Task& task, absl::Time submitted);

// What one PGresult of a running task was.
enum class Fold { kData, kCopy };

// Folds one PGresult of a running task into `r`: the columns and rows of its
// last result set (at most `max_rows_kept` rows kept when that is >= 0, every
// row counted), its command tag, and its first error with the SQLSTATE (the
// message names `node`). `in_result_set` carries single-row mode's state
// between calls: true while rows of a result set are arriving. Returns kCopy,
// leaving `r` alone, when the task entered COPY (which a task cannot do; the
// caller ends it).
Fold FoldResult(const PGresult* res, const NodeAddress& node, int64_t max_rows_kept,
                bool& in_result_set, TaskResult& r);

// Closes connections so that their slots are given back only once the worker
// backends are gone: each socket is duplicated, libpq sends Terminate (on an
// established connection) and closes its copy, our side of the duplicate is
// shut down (so that a backend still authenticating sees EOF too), and the
// duplicate is read until the worker closes it (a backend leaves
// pg_stat_activity and its PGPROC before its socket closes at exit), for at
// most `wait`, all connections at once. Then the slots are released.
void CloseAll(std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> connections,
              absl::Duration wait = absl::Milliseconds(500));

}  // namespace connthrottle

#endif  // CONNTHROTTLE_SRC_EXECUTOR_LIBPQ_CONN_H_
