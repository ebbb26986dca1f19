#include "pg/bridge/pool_copy_channel.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pg/bridge/copy_message.h"

namespace connthrottle::pg {

PoolCopyChannel::PoolCopyChannel(ExecutionContext& context, ChannelOps ops, size_t nodes,
                                 absl::Duration wait_timeout)
    : ops_(ops), channel_(context, ops, /*max_rows_kept=*/0, wait_timeout), gathered_(nodes) {
  ops_.area(&capacity_);
}

absl::StatusOr<std::unique_ptr<PoolCopyChannel>> PoolCopyChannel::Begin(
    ExecutionContext& context, ChannelOps ops, std::vector<NodeAddress> nodes, std::string copy_sql,
    absl::Duration wait_timeout) {
  auto copy = std::unique_ptr<PoolCopyChannel>(
      new PoolCopyChannel(context, ops, nodes.size(), wait_timeout));
  SharedPool::CopyRequest& request = copy->request_;
  request.database_id = context.DatabaseId();
  request.copy_sql = std::move(copy_sql);
  request.slot_wait_timeout = wait_timeout;
  for (const NodeAddress& node : nodes) {
    request.params.push_back(context.ParamsFor(node));
    request.local.push_back(context.IsLocal(node));
  }
  request.nodes = std::move(nodes);
  // The open travels with the first chunk, in the same area: what is left
  // of it is the first chunk's room.
  absl::StatusOr<size_t> open_bytes = EncodeCopyOpen(request, nullptr, SIZE_MAX);
  if (!open_bytes.ok()) return open_bytes.status();
  copy->open_bytes_ = *open_bytes;
  if (copy->open_bytes_ + CopyChunkOverhead(copy->gathered_.size()) >= copy->capacity_) {
    return PoolChannel::WithSqlstate(
        absl::ResourceExhaustedError(
            absl::StrCat("the COPY's nodes and statement (", copy->open_bytes_,
                         " bytes) leave no room for rows in connthrottle.pool_message_bytes (",
                         copy->capacity_, " bytes)")),
        "54000");
  }
  ops.lost_copy();  // what an earlier COPY of this slot left
  return copy;
}

PoolCopyChannel::~PoolCopyChannel() {
  if (!open_) return;
  // Between two steps the slot is ours: an abort, not waited for (the
  // session's next request claims the slot once it is answered).
  if (ops_.claim() != ChannelState::kReady) return;
  size_t capacity = 0;
  char* area = ops_.area(&capacity);
  if (const size_t n = EncodeCopyAbort(area, capacity); n > 0) {
    ops_.submit(n);
  }
}

absl::StatusOr<PoolResponse> PoolCopyChannel::Step(MessageKind kind) {
  if (ChannelState lost = ops_.lost_copy(); lost != ChannelState::kReady) {
    open_ = false;
    return PoolChannel::WithSqlstate(
        absl::UnavailableError(
            absl::StrCat("the connthrottle communicator ",
                         lost == ChannelState::kTerminated ? "was terminated" : "restarted",
                         " during this COPY; every node's COPY was rolled back")),
        lost == ChannelState::kTerminated ? "57P01" : "08006");
  }
  // The first step opens the COPY: the communicator pins the nodes'
  // connections, then takes the chunk.
  const bool opening = !open_;
  open_ = true;
  absl::StatusOr<PoolResponse> response =
      channel_.Call([&](char* area, size_t capacity) -> absl::StatusOr<size_t> {
        size_t opened = 0;
        if (opening) {
          absl::StatusOr<size_t> n = EncodeCopyOpen(request_, area, capacity);
          if (!n.ok()) return n.status();
          opened = *n;
        }
        absl::StatusOr<size_t> n =
            EncodeCopyChunk(kind, gathered_, area + opened, capacity - opened);
        if (!n.ok()) return n.status();
        return opened + *n;
      });
  // After an error the COPY is over for this session. The communicator
  // ended it if the error was its answer, or if the step was withdrawn (a
  // cancel); but a step answered just before its withdrawal, or never
  // submitted (no slot in time), left it open: open_ stays, so that the
  // destructor sends an abort (which changes nothing for a COPY the
  // communicator no longer has).
  if (!response.ok()) failed_ = true;
  return response;
}

absl::Status PoolCopyChannel::Send(size_t node, std::string_view row) {
  if (failed_) return absl::FailedPreconditionError("connthrottle: the COPY is over");
  if (node >= gathered_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no node ", node, " in this COPY"));
  }
  const size_t room = capacity_ - std::min(capacity_, CopyChunkOverhead(gathered_.size()) +
                                                          (open_ ? 0 : open_bytes_));
  if (row.size() > room) {
    return PoolChannel::WithSqlstate(
        absl::ResourceExhaustedError(absl::StrCat(
            "a row of ", row.size(), " bytes does not fit in connthrottle.pool_message_bytes (",
            capacity_, " bytes)")),
        "54000");
  }
  if (gathered_bytes_ + row.size() > room) {
    if (absl::Status s = SendGathered(); !s.ok()) return s;
  }
  gathered_[node].append(row);
  gathered_bytes_ += row.size();
  return absl::OkStatus();
}

absl::Status PoolCopyChannel::SendGathered() {
  if (gathered_bytes_ == 0) return absl::OkStatus();
  absl::StatusOr<PoolResponse> sent = Step(MessageKind::kCopyData);
  if (!sent.ok()) return sent.status();
  for (std::string& g : gathered_) g.clear();
  gathered_bytes_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> PoolCopyChannel::Finish() {
  if (failed_ || finished_) return absl::FailedPreconditionError("connthrottle: the COPY is over");
  // The last rows go with the end: one step.
  absl::StatusOr<PoolResponse> ended = Step(MessageKind::kCopyEnd);
  if (!ended.ok()) return ended.status();
  open_ = false;
  finished_ = true;
  return CopyResultsOf(*std::move(ended));
}

}  // namespace connthrottle::pg
