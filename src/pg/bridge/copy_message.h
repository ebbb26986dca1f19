// The messages of a COPY through the communicator (distribute with the
// shared_pool transport), in a session slot's message area beside the
// task requests of pool_message.h: open (the nodes, how to reach them and
// the COPY statement), a chunk of rows (each node's part), end, and abort.
// Each gets a PoolResponse: OK or one error for the COPY, and for the end
// one TaskResult per node (CopyResultsResponse says how a node's outcome is
// carried). Same format rules as pool_message.h; plain C++.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_COPY_MESSAGE_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_COPY_MESSAGE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "connthrottle/executor/shared_pool.h"
#include "pg/bridge/pool_message.h"

namespace connthrottle::pg {

enum class MessageKind { kTasks, kCopyOpen, kCopyData, kCopyEnd, kCopyAbort, kUnknown };

// What the request in `in` is, by its magic number.
MessageKind KindOf(const char* in, size_t size);

// An open may be followed in the same message by the COPY's first chunk (a
// kCopyData or kCopyEnd message, EncodeCopyChunk's, from `*consumed`): the
// session's first rows travel with the open.
absl::StatusOr<size_t> EncodeCopyOpen(const SharedPool::CopyRequest& request, char* out,
                                      size_t capacity);
absl::StatusOr<SharedPool::CopyRequest> DecodeCopyOpen(const char* in, size_t size,
                                                       size_t* consumed = nullptr);

// The bytes a chunk takes beyond its rows, with `parts` parts.
size_t CopyChunkOverhead(size_t parts);
// A chunk (kCopyData), or the last one with the end (kCopyEnd): the
// non-empty strings of `per_node` (rows of node i), one part each.
absl::StatusOr<size_t> EncodeCopyChunk(MessageKind kind, const std::vector<std::string>& per_node,
                                       char* out, size_t capacity);
// A chunk's parts (kCopyData or kCopyEnd), pointing into `in` (no copy):
// valid while `in` is unchanged.
absl::StatusOr<std::vector<SharedPool::CopyPart>> DecodeCopyChunk(const char* in, size_t size);

// An abort (kCopyAbort): the kind alone.
size_t EncodeCopyAbort(char* out, size_t capacity);

// The end's response: a TaskResult per node, in the request's order, with
// its status, sqlstate, command tag, rows sent (row_count) and whether its
// COPY started (connection 1, else -1).
PoolResponse CopyResultsResponse(std::vector<SharedPool::CopyNodeResult> results);
std::vector<SharedPool::CopyNodeResult> CopyResultsOf(PoolResponse response);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_COPY_MESSAGE_H_
