// distribute's COPY through the communicator's shared pool, as a backend
// sees it: Send gathers rows per node, at most one message area's worth,
// and sends them as one chunk, waiting for its acknowledgement (every
// node's part flushed to its worker); Finish sends the rest with the end of
// every node's COPY. The first chunk carries the open: the communicator
// first pins one pooled connection per node, in the global order, all or
// nothing (SharedPool::OpenCopy), waiting up to the wait timeout (53300),
// and only then sends rows. So a small COPY is one round trip.
// The backend's memory stays within one area, whatever the row count.
//
// Errors carry their SQLSTATE (kSqlstatePayload); Cancelled when the
// context was interrupted (the step is withdrawn, which cancels the COPY).
// The destructor abandons an unfinished COPY: the communicator ends every
// node's COPY with an error, nothing committed. One per backend at a time;
// the context must outlive it.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_POOL_COPY_CHANNEL_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_POOL_COPY_CHANNEL_H_

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"
#include "pg/bridge/channel_ops.h"
#include "pg/bridge/copy_message.h"
#include "pg/bridge/pool_channel.h"

namespace connthrottle::pg {

class PoolCopyChannel {
 public:
  // `wait_timeout`: how long the COPY may wait for a node's connection
  // (53300 after), and for the slot.
  static absl::StatusOr<std::unique_ptr<PoolCopyChannel>> Begin(ExecutionContext& context,
                                                                ChannelOps ops,
                                                                std::vector<NodeAddress> nodes,
                                                                std::string copy_sql,
                                                                absl::Duration wait_timeout);
  PoolCopyChannel(const PoolCopyChannel&) = delete;
  PoolCopyChannel& operator=(const PoolCopyChannel&) = delete;
  ~PoolCopyChannel();

  // One row, in COPY text format ending with '\n', for nodes[node].
  absl::Status Send(size_t node, std::string_view row);
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> Finish();

 private:
  PoolCopyChannel(ExecutionContext& context, ChannelOps ops, size_t nodes,
                  absl::Duration wait_timeout);
  // One step of the COPY: the gathered rows as a chunk (kCopyData) or the
  // last one with the end (kCopyEnd); the first step carries the open.
  absl::StatusOr<PoolResponse> Step(MessageKind kind);
  absl::Status SendGathered();

  ChannelOps ops_;
  PoolChannel channel_;
  std::vector<std::string> gathered_;  // per node
  size_t gathered_bytes_ = 0;
  size_t capacity_ = 0;              // the message area's
  SharedPool::CopyRequest request_;  // sent with the first step
  size_t open_bytes_ = 0;            // what the open takes of the area
  bool open_ = false;                // the communicator may hold the COPY: aborted unless finished
  bool failed_ = false;              // a step failed: the COPY is over for this session
  bool finished_ = false;
};

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_POOL_COPY_CHANNEL_H_
