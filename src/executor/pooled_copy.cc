// pooled_copy.cc — a session's COPY through a SharedPool (pooled_copy.h).

#include "connthrottle/executor/pooled_copy.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace connthrottle {

PooledCopy::PooledCopy(SharedPool& pool, ExecutionContext& context, size_t nodes, Options options)
    : pool_(pool), context_(context), options_(options), gathered_(nodes) {}

absl::StatusOr<std::unique_ptr<PooledCopy>> PooledCopy::Begin(SharedPool& pool,
                                                              ExecutionContext& context,
                                                              std::vector<NodeAddress> nodes,
                                                              std::string copy_sql,
                                                              Options options) {
  auto copy = std::unique_ptr<PooledCopy>(new PooledCopy(pool, context, nodes.size(), options));
  SharedPool::CopyRequest request;
  request.database_id = context.DatabaseId();
  request.copy_sql = std::move(copy_sql);
  request.slot_wait_timeout = options.slot_wait_timeout;
  for (const NodeAddress& node : nodes) {
    request.params.push_back(context.ParamsFor(node));
    request.local.push_back(context.IsLocal(node));
  }
  request.nodes = std::move(nodes);
  copy->ticket_ = pool.OpenCopy(std::move(request));
  if (absl::StatusOr<SharedPool::CopyProgress> opened = copy->Await(); !opened.ok()) {
    return opened.status();
  }
  return copy;
}

PooledCopy::~PooledCopy() {
  if (ticket_ != nullptr && !over_) pool_.CancelCopy(ticket_);
}

absl::StatusOr<SharedPool::CopyProgress> PooledCopy::Await() {
  while (true) {
    SharedPool::CopyProgress p = pool_.AwaitCopy(ticket_, options_.tick);
    if (!p.status.ok()) {
      over_ = true;
      sqlstate_ = p.sqlstate;
      return p.status;
    }
    if (p.done) return p;
    if (context_.Interrupted()) {
      pool_.CancelCopy(ticket_);
      // The chunk in flight is in gathered_: the pool must let go of it
      // before this object may go (it does as it takes the cancel).
      while (!pool_.AwaitCopy(ticket_, options_.tick).done) {
      }
      over_ = true;
      sqlstate_ = "57014";  // query_canceled
      return absl::CancelledError("the COPY was cancelled");
    }
  }
}

std::vector<SharedPool::CopyPart> PooledCopy::Gathered() const {
  std::vector<SharedPool::CopyPart> chunk;
  for (size_t n = 0; n < gathered_.size(); ++n) {
    if (!gathered_[n].empty()) chunk.push_back({static_cast<int>(n), gathered_[n]});
  }
  return chunk;
}

// A step the pool refused: the COPY failed between two steps (its error and
// SQLSTATE), or it is over.
absl::Status PooledCopy::Refused(absl::Status status) {
  over_ = true;
  sqlstate_ = pool_.PollCopy(ticket_).sqlstate;
  return status;
}

absl::Status PooledCopy::SendGathered() {
  std::vector<SharedPool::CopyPart> chunk = Gathered();
  if (chunk.empty()) return absl::OkStatus();
  if (absl::Status s = pool_.SendCopy(ticket_, std::move(chunk)); !s.ok()) return Refused(s);
  absl::StatusOr<SharedPool::CopyProgress> sent = Await();
  if (!sent.ok()) return sent.status();
  for (std::string& g : gathered_) g.clear();
  gathered_bytes_ = 0;
  return absl::OkStatus();
}

absl::Status PooledCopy::Send(size_t node, std::string_view row) {
  if (over_) return absl::FailedPreconditionError("the COPY is over");
  if (node >= gathered_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no node ", node, " in this COPY"));
  }
  gathered_[node].append(row);
  gathered_bytes_ += row.size();
  if (gathered_bytes_ < options_.chunk_bytes) return absl::OkStatus();
  return SendGathered();
}

absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> PooledCopy::Finish() {
  if (over_) return absl::FailedPreconditionError("the COPY is over");
  // The last rows go with the end: one step.
  if (absl::Status s = pool_.FinishCopy(ticket_, Gathered()); !s.ok()) return Refused(s);
  absl::StatusOr<SharedPool::CopyProgress> finished = Await();
  over_ = true;
  if (!finished.ok()) return finished.status();
  return std::move(finished->results);
}

}  // namespace connthrottle
