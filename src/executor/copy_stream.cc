#include "connthrottle/executor/copy_stream.h"

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "executor/libpq_conn.h"

namespace connthrottle {
namespace {

// How often a wait on a worker's socket looks at the interrupt check.
constexpr int kTickMs = 10;

// How often a worker's backend checks, while our COPY runs on it, whether
// we have gone (client_connection_check_interval, PostgreSQL 14 and later).
// An abandoned COPY — the coordinator's statement was cancelled or failed —
// then ends within this long of our closing the connection, even while it
// waits for a lock on the worker, and with no cancel request (which costs
// the worker a process of its own and us a blocking connect).
constexpr int kHangupCheckMs = 10;

// Waits until `pg`'s socket is ready for `events`, `interrupted()` says stop
// (Cancelled), or `deadline` passes (DeadlineExceeded).
absl::Status WaitSocket(PGconn* pg, short events, const std::function<bool()>& interrupted,
                        absl::Time deadline) {
  for (;;) {
    if (interrupted && interrupted()) return absl::CancelledError("the COPY was cancelled");
    const absl::Time now = absl::Now();
    if (now >= deadline) return absl::DeadlineExceededError("timed out");
    pollfd p{PQsocket(pg), events, 0};
    if (p.fd < 0) return absl::UnavailableError("no socket");
    // (deadline may be InfiniteFuture: no arithmetic on the raw figure.)
    const int64_t left = absl::ToInt64Milliseconds(deadline - now);
    const int wait = left >= kTickMs ? kTickMs : static_cast<int>(left) + 1;
    if (poll(&p, 1, wait) > 0) return absl::OkStatus();
  }
}

// Flushes what libpq has queued on a non-blocking connection.
absl::Status FlushAll(PGconn* pg, const std::function<bool()>& interrupted) {
  for (;;) {
    const int r = PQflush(pg);
    if (r == 0) return absl::OkStatus();
    if (r < 0) return absl::UnavailableError(Trim(PQerrorMessage(pg)));
    // Reading too: the worker may be sending an error while we write.
    if (absl::Status s = WaitSocket(pg, POLLOUT | POLLIN, interrupted, absl::InfiniteFuture());
        !s.ok()) {
      return s;
    }
    if (!PQconsumeInput(pg)) return absl::UnavailableError(Trim(PQerrorMessage(pg)));
  }
}

// The next result of a non-blocking connection, waiting for it on the socket.
absl::StatusOr<PGresult*> NextResult(PGconn* pg, const std::function<bool()>& interrupted) {
  while (PQisBusy(pg)) {
    if (absl::Status s = WaitSocket(pg, POLLIN, interrupted, absl::InfiniteFuture()); !s.ok()) {
      return s;
    }
    if (!PQconsumeInput(pg)) return absl::UnavailableError(Trim(PQerrorMessage(pg)));
  }
  return PQgetResult(pg);
}

}  // namespace

struct CopyStream::Target {
  NodeAddress node;
  std::unique_ptr<AdaptiveExecutor::Connection> conn;  // set once connected (or cached)
  bool in_copy = false;
  // The worker checks that we are still there every kHangupCheckMs while
  // its COPY runs (client_connection_check_interval): closing our side ends
  // the COPY, without a cancel request.
  bool ends_on_hangup = false;
  uint64_t rows = 0;
  absl::Status status;
  std::string command_tag;
};

CopyStream::CopyStream(AdaptiveExecutor& executor, std::vector<NodeAddress> nodes,
                       std::string copy_sql)
    : executor_(executor),
      nodes_(std::move(nodes)),
      copy_sql_(std::move(copy_sql)),
      ledger_(executor.owner_) {}

absl::StatusOr<std::unique_ptr<CopyStream>> CopyStream::Begin(
    AdaptiveExecutor& executor, std::vector<NodeAddress> nodes, std::string copy_sql,
    absl::Time deadline, absl::FunctionRef<bool()> interrupted,
    std::optional<absl::Time> wait_began) {
  auto stream =
      std::unique_ptr<CopyStream>(new CopyStream(executor, std::move(nodes), std::move(copy_sql)));
  ExecutionContext& ctx = executor.context_;
  std::vector<NodeKey> keys;
  for (const NodeAddress& node : stream->nodes_) {
    absl::StatusOr<NodeKey> key = NodeKey::Create(node.host, node.port, ctx.DatabaseId());
    if (!key.ok()) return key.status();
    keys.push_back(*std::move(key));
    auto target = std::make_unique<Target>();
    target->node = node;
    stream->targets_.push_back(std::move(target));
  }
  // Nodes are taken in the global order, as the executor takes first
  // connections: an idle cached connection if there is one (it needs no
  // reservation), else a reservation. Only when a reservation must wait are
  // the other idle connections given back (DESIGN.md: no session sits on
  // slots others wait for); what is held while waiting is then for nodes
  // earlier in the order, which keeps concurrent sessions from deadlocking.
  std::vector<size_t> order(keys.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return keys[a] < keys[b]; });
  AcquireOptions options;
  options.when_full = ctx.WhenTableFull();
  auto limit = [&](const NodeKey& key) {
    NodeAddress node{std::string(key.host()), key.port()};
    return ctx.LimitFor(node, ctx.IsLocal(node));
  };
  auto none = [](const ReservationKey&) { return false; };
  for (size_t n = 0; n < order.size(); ++n) {
    const size_t i = order[n];
    if (n > 0 && keys[order[n - 1]] == keys[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", stream->nodes_[i].ToString(), " is given more than once"));
    }
    Target& target = *stream->targets_[i];
    int discarded = 0;
    target.conn = executor.TakeCached(target.node, &discarded);
    if (target.conn != nullptr) continue;
    const ReservationKey reservation{keys[i], 0};
    absl::Status reserved = stream->ledger_.TryReserve(reservation, limit(keys[i]), false, options);
    if (absl::IsResourceExhausted(reserved) && !IsTableFullError(reserved)) {
      executor.CloseIdle();
      AcquireOptions waiting = options;
      waiting.wait_began = wait_began;
      reserved =
          stream->ledger_.ReserveAll({reservation}, limit, deadline, interrupted, none, waiting);
    }
    if (!reserved.ok()) return reserved;
  }
  return stream;
}

// Connects `target` on its reservation's slot, without blocking and
// looking at interrupts every tick.
absl::Status CopyStream::Connect(Target& target) {
  ExecutionContext& ctx = executor_.context_;
  absl::StatusOr<NodeKey> key =
      NodeKey::Create(target.node.host, target.node.port, ctx.DatabaseId());
  std::optional<Slot> slot = ledger_.Consume({*key, 0});
  if (!slot.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no reservation for node ", target.node.ToString()));
  }
  auto c = std::make_unique<AdaptiveExecutor::Connection>();
  c->id = executor_.next_connection_id_++;
  c->node = target.node;
  c->slot = std::move(*slot);
  ConnParams params = ctx.ParamsFor(target.node);
  params.Set("connect_timeout", std::to_string(std::max<int64_t>(
                                    1, absl::ToInt64Seconds(executor_.options_.connect_timeout))));
  const std::optional<std::string> not_started = StartConnecting(*c, params, absl::Now());
  // Connect without blocking, looking at interrupts every tick.
  const absl::Time deadline = c->connect_started + executor_.options_.connect_timeout;
  absl::Status waited = absl::OkStatus();
  ConnectProgress progress = not_started ? ConnectProgress::kFailed : ConnectProgress::kPending;
  while (progress == ConnectProgress::kPending) {
    waited = WaitSocket(c->pg, AwaitedEvents(*c), interrupted_, deadline);
    if (!waited.ok()) break;
    progress = ContinueConnecting(*c, absl::Now());
  }
  if (absl::IsCancelled(waited)) {
    std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> one;
    one.push_back(std::move(c));
    CloseAll(std::move(one), absl::ZeroDuration());
    return waited;
  }
  if (progress != ConnectProgress::kReady) {
    std::string why = not_started   ? *not_started
                      : waited.ok() ? ReadConnectError(c->pg).message
                                    : "timed out (node_connection_timeout)";
    c->state = AdaptiveExecutor::Connection::State::kBroken;
    std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> one;
    one.push_back(std::move(c));
    CloseAll(std::move(one), absl::ZeroDuration());
    return CouldNotConnect(target.node, why);
  }
  target.conn = std::move(c);
  return absl::OkStatus();
}

absl::Status CopyStream::Open(Target& target) {
  if (target.conn == nullptr) {
    if (absl::Status s = Connect(target); !s.ok()) return s;
  }
  PGconn* pg = target.conn->pg;
  // Non-blocking from here on: the COPY may wait for a lock on the worker,
  // and its rows for the worker to read them; every wait looks at
  // interrupts.
  PQsetnonblocking(pg, 1);
  target.conn->state = AdaptiveExecutor::Connection::State::kBusy;
  // The setting stays on the connection (it may be cached and re-used): it
  // only makes the worker notice sooner that we went away.
  const bool check_hangup = PQserverVersion(pg) >= 140000;
  const std::string sql =
      check_hangup
          ? absl::StrCat("SET client_connection_check_interval = ", kHangupCheckMs, "; ", copy_sql_)
          : copy_sql_;
  if (!PQsendQuery(pg, sql.c_str())) {
    return absl::UnavailableError(
        absl::StrCat("node ", target.node.ToString(), ": ", Trim(PQerrorMessage(pg))));
  }
  target.in_copy = true;  // from here on, an abandoned stream ends it
  if (absl::Status s = FlushAll(pg, interrupted_); !s.ok()) return s;
  absl::StatusOr<PGresult*> res = NextResult(pg, interrupted_);
  if (!res.ok()) return res.status();
  if (check_hangup && *res != nullptr && PQresultStatus(*res) == PGRES_COMMAND_OK) {
    target.ends_on_hangup = true;  // the SET took
    PQclear(*res);
    res = NextResult(pg, interrupted_);
    if (!res.ok()) return res.status();
  }
  const bool ok = *res != nullptr && PQresultStatus(*res) == PGRES_COPY_IN;
  std::string why = *res != nullptr ? Trim(PQresultErrorMessage(*res)) : Trim(PQerrorMessage(pg));
  PQclear(*res);
  if (!ok) {
    target.in_copy = false;
    target.conn->state = AdaptiveExecutor::Connection::State::kBroken;
    return absl::UnknownError(absl::StrCat("node ", target.node.ToString(), ": ", why));
  }
  return absl::OkStatus();
}

absl::Status CopyStream::Send(size_t node, std::string_view row) {
  if (finished_) return absl::FailedPreconditionError("the COPY stream is finished");
  if (node >= targets_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no node ", node, " in this COPY stream"));
  }
  Target& target = *targets_[node];
  if (!target.status.ok()) return target.status;
  if (!target.in_copy) {
    target.status = Open(target);
    if (!target.status.ok()) return target.status;
  }
  for (;;) {
    const int put = PQputCopyData(target.conn->pg, row.data(), static_cast<int>(row.size()));
    if (put == 1) break;
    if (put == 0) {  // libpq's buffer is full: wait until the worker reads
      if (absl::Status s = FlushAll(target.conn->pg, interrupted_); !s.ok()) {
        if (absl::IsCancelled(s)) return s;
        target.status = absl::UnavailableError(
            absl::StrCat("sending a row to node ", target.node.ToString(), ": ", s.message()));
        target.conn->state = AdaptiveExecutor::Connection::State::kBroken;
        return target.status;
      }
      continue;
    }
    target.status =
        absl::UnavailableError(absl::StrCat("sending a row to node ", target.node.ToString(), ": ",
                                            Trim(PQerrorMessage(target.conn->pg))));
    target.conn->state = AdaptiveExecutor::Connection::State::kBroken;
    return target.status;
  }
  ++target.rows;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CopyStream::NodeResult>> CopyStream::Finish() {
  if (finished_) return absl::FailedPreconditionError("the COPY stream is finished");
  finished_ = true;
  std::vector<NodeResult> results;
  std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> closing;
  for (auto& target : targets_) {
    NodeResult r{target->node, target->rows, target->in_copy, target->status, ""};
    if (target->in_copy && target->status.ok()) {
      PGconn* pg = target->conn->pg;
      absl::Status ended = PQputCopyEnd(pg, nullptr) == 1
                               ? FlushAll(pg, interrupted_)
                               : absl::UnavailableError(Trim(PQerrorMessage(pg)));
      if (absl::IsCancelled(ended)) {
        finished_ = false;  // the destructor cancels what is still open
        return ended;
      }
      if (!ended.ok()) {
        r.status = absl::UnavailableError(
            absl::StrCat("ending COPY on node ", target->node.ToString(), ": ", ended.message()));
      }
      for (;;) {
        absl::StatusOr<PGresult*> next = NextResult(pg, interrupted_);
        if (absl::IsCancelled(next.status())) {
          finished_ = false;
          return next.status();
        }
        if (!next.ok() || *next == nullptr) break;
        PGresult* res = *next;
        if (PQresultStatus(res) == PGRES_COMMAND_OK) {
          r.command_tag = PQcmdStatus(res);
        } else if (r.status.ok()) {
          r.status = absl::UnknownError(absl::StrCat("node ", target->node.ToString(), ": ",
                                                     Trim(PQresultErrorMessage(res))));
        }
        PQclear(res);
      }
      target->conn->state = r.status.ok() && PQstatus(pg) == CONNECTION_OK
                                ? AdaptiveExecutor::Connection::State::kIdle
                                : AdaptiveExecutor::Connection::State::kBroken;
    }
    if (target->conn != nullptr) {
      if (auto rejected = executor_.Cache(std::move(target->conn))) {
        closing.push_back(std::move(rejected));
      }
    }
    results.push_back(std::move(r));
  }
  ledger_.EndTransaction();  // unused reservations
  CloseAll(std::move(closing));
  return results;
}

CopyStream::~CopyStream() {
  std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> closing;
  for (auto& target : targets_) {
    if (target->conn == nullptr) continue;
    if (!finished_ && target->in_copy && !target->ends_on_hangup) {
      // A worker that does not check for us (before PostgreSQL 14): cancel
      // its COPY (which may be waiting for a lock and read nothing), then
      // close. Otherwise closing is enough. Either way CloseAll waits a
      // bounded time for the worker backend to go.
      SendCancel(target->conn->pg);
    }
    closing.push_back(std::move(target->conn));
  }
  CloseAll(std::move(closing));
  ledger_.EndTransaction();
}

}  // namespace connthrottle
