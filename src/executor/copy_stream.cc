#include "connthrottle/copy_stream.h"

#include <libpq-fe.h>

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "executor/connection.h"

namespace connthrottle {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

struct CopyStream::Target {
  NodeAddress node;
  std::unique_ptr<AdaptiveExecutor::Connection> conn;  // set once connected (or cached)
  bool in_copy = false;
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

absl::Status CopyStream::Open(Target& target) {
  ExecutionContext& ctx = executor_.context_;
  if (target.conn == nullptr) {
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
    c->connect_started = absl::Now();
    ConnParams params = ctx.ParamsFor(target.node);
    params.Set("connect_timeout",
               std::to_string(
                   std::max<int64_t>(1, absl::ToInt64Seconds(executor_.options_.connect_timeout))));
    c->pg = PQconnectdbParams(params.keywords(), params.values(), 0);
    if (c->pg == nullptr || PQstatus(c->pg) != CONNECTION_OK) {
      std::string why = c->pg != nullptr ? Trim(PQerrorMessage(c->pg)) : "out of memory";
      c->state = AdaptiveExecutor::Connection::State::kBroken;
      std::vector<std::unique_ptr<AdaptiveExecutor::Connection>> one;
      one.push_back(std::move(c));
      CloseAll(std::move(one), absl::ZeroDuration());
      return absl::UnavailableError(
          absl::StrCat("could not connect to node ", target.node.ToString(), ": ", why));
    }
    QuietNotices(c->pg);
    c->state = AdaptiveExecutor::Connection::State::kIdle;
    c->ready = absl::Now();
    target.conn = std::move(c);
  }
  PGconn* pg = target.conn->pg;
  PQsetnonblocking(pg, 0);
  PGresult* res = PQexec(pg, copy_sql_.c_str());
  const bool ok = res != nullptr && PQresultStatus(res) == PGRES_COPY_IN;
  std::string why = res != nullptr ? Trim(PQresultErrorMessage(res)) : Trim(PQerrorMessage(pg));
  PQclear(res);
  if (!ok) {
    return absl::UnknownError(absl::StrCat("node ", target.node.ToString(), ": ", why));
  }
  target.conn->state = AdaptiveExecutor::Connection::State::kBusy;
  target.in_copy = true;
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
  if (PQputCopyData(target.conn->pg, row.data(), static_cast<int>(row.size())) != 1) {
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
      if (PQputCopyEnd(pg, nullptr) != 1) {
        r.status = absl::UnavailableError(absl::StrCat(
            "ending COPY on node ", target->node.ToString(), ": ", Trim(PQerrorMessage(pg))));
      }
      while (PGresult* res = PQgetResult(pg)) {
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
    if (!finished_ && target->in_copy) {
      PQputCopyEnd(target->conn->pg, "COPY abandoned by connthrottle");
      while (PGresult* res = PQgetResult(target->conn->pg)) PQclear(res);
    }
    closing.push_back(std::move(target->conn));
  }
  CloseAll(std::move(closing));
  ledger_.EndTransaction();
}

}  // namespace connthrottle
