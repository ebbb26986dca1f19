// connthrottle/pooled_copy.h — a session's COPY through a SharedPool, row by
// row, as CopyStream does it on the direct transport:
//
//   auto copy = PooledCopy::Begin(pool, context, nodes, "COPY t FROM STDIN");
//   copy->Send(i, "42\tforty-two\n");   // COPY text format, one row per call
//   auto results = copy->Finish();       // rows per node, each node's outcome
//
// Begin returns once a pooled connection to every node is pinned to the
// COPY (SharedPool::OpenCopy: the global order, all or nothing). Rows are
// gathered per node, at most `chunk_bytes` in all, and handed to the pool as
// one chunk, which is acknowledged once every node's part reached its
// worker: the session's memory stays within a chunk, whatever the row
// count, and a slow worker slows this session only.
//
// Errors carry the SQLSTATE in sqlstate(). Cancelled when the context's
// Interrupted() said so (looked at every `tick`): the COPY is then cancelled,
// every node's COPY ended with an error. Without Finish, the destructor
// cancels it too. Not thread-safe; the pool and context must outlive it.

#ifndef CONNTHROTTLE_EXECUTOR_POOLED_COPY_H_
#define CONNTHROTTLE_EXECUTOR_POOLED_COPY_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "connthrottle/executor/shared_pool.h"

namespace connthrottle {

class PooledCopy {
 public:
  struct Options {
    size_t chunk_bytes = 64 * 1024;
    absl::Duration tick = absl::Milliseconds(10);
    std::optional<absl::Duration> slot_wait_timeout;  // as Submission's
  };

  static absl::StatusOr<std::unique_ptr<PooledCopy>> Begin(SharedPool& pool,
                                                           ExecutionContext& context,
                                                           std::vector<NodeAddress> nodes,
                                                           std::string copy_sql, Options options);
  static absl::StatusOr<std::unique_ptr<PooledCopy>> Begin(SharedPool& pool,
                                                           ExecutionContext& context,
                                                           std::vector<NodeAddress> nodes,
                                                           std::string copy_sql) {
    return Begin(pool, context, std::move(nodes), std::move(copy_sql), Options{});
  }
  PooledCopy(const PooledCopy&) = delete;
  PooledCopy& operator=(const PooledCopy&) = delete;
  ~PooledCopy();

  // Adds one row, in COPY text format ending with '\n', for nodes[node];
  // sends a chunk when `chunk_bytes` are gathered.
  absl::Status Send(size_t node, std::string_view row);
  // Sends what is gathered, ends every node's COPY and reports each node.
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> Finish();

  // The SQLSTATE of the last error (empty when none).
  const std::string& sqlstate() const { return sqlstate_; }

 private:
  PooledCopy(SharedPool& pool, ExecutionContext& context, size_t nodes, Options options);
  // Waits for the step asked last; its progress.
  absl::StatusOr<SharedPool::CopyProgress> Await();
  std::vector<SharedPool::CopyPart> Gathered() const;
  absl::Status SendGathered();
  absl::Status Refused(absl::Status status);

  SharedPool& pool_;
  ExecutionContext& context_;
  Options options_;
  SharedPool::CopyTicket ticket_;
  std::vector<std::string> gathered_;  // per node
  size_t gathered_bytes_ = 0;
  bool over_ = false;
  std::string sqlstate_;
};

}  // namespace connthrottle

#endif  // CONNTHROTTLE_EXECUTOR_POOLED_COPY_H_
