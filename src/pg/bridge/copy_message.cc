#include "pg/bridge/copy_message.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "pg/bridge/message_codec.h"

namespace connthrottle::pg {
namespace {

constexpr uint32_t kTasksMagic = 0x43545251;      // "CTRQ" (pool_message.cc)
constexpr uint32_t kCopyOpenMagic = 0x4354434f;   // "CTCO"
constexpr uint32_t kCopyDataMagic = 0x43544344;   // "CTCD"
constexpr uint32_t kCopyEndMagic = 0x43544345;    // "CTCE"
constexpr uint32_t kCopyAbortMagic = 0x43544341;  // "CTCA"

absl::Status Torn(const char* what) {
  return absl::DataLossError(absl::StrCat("connthrottle: a malformed ", what, " message"));
}

}  // namespace

MessageKind KindOf(const char* in, size_t size) {
  Reader r(in, size);
  switch (r.Get<uint32_t>()) {
    case kTasksMagic:
      return MessageKind::kTasks;
    case kCopyOpenMagic:
      return MessageKind::kCopyOpen;
    case kCopyDataMagic:
      return MessageKind::kCopyData;
    case kCopyEndMagic:
      return MessageKind::kCopyEnd;
    case kCopyAbortMagic:
      return MessageKind::kCopyAbort;
    default:
      return MessageKind::kUnknown;
  }
}

absl::StatusOr<size_t> EncodeCopyOpen(const SharedPool::CopyRequest& request, char* out,
                                      size_t capacity) {
  Writer w(out, capacity);
  w.Put(kCopyOpenMagic);
  w.Put<uint32_t>(request.database_id);
  w.Put<int64_t>(request.slot_wait_timeout
                     ? std::max<int64_t>(0, absl::ToInt64Milliseconds(*request.slot_wait_timeout))
                     : -1);
  w.String(request.copy_sql);
  w.Put<uint32_t>(static_cast<uint32_t>(request.nodes.size()));
  for (size_t i = 0; i < request.nodes.size() && w.ok(); ++i) {
    w.String(request.nodes[i].host);
    w.Put<int32_t>(request.nodes[i].port);
    w.Put<uint8_t>(i < request.local.size() && request.local[i] ? 1 : 0);
    PutParams(w, i < request.params.size() ? request.params[i] : ConnParams());
  }
  if (!w.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the COPY's nodes and statement need more than ", capacity, " bytes"));
  }
  return w.size();
}

absl::StatusOr<SharedPool::CopyRequest> DecodeCopyOpen(const char* in, size_t size,
                                                       size_t* consumed) {
  Reader r(in, size);
  if (r.Get<uint32_t>() != kCopyOpenMagic) return Torn("COPY open");
  SharedPool::CopyRequest c;
  c.database_id = r.Get<uint32_t>();
  if (const int64_t wait_ms = r.Get<int64_t>(); wait_ms >= 0) {
    c.slot_wait_timeout = absl::Milliseconds(wait_ms);
  }
  c.copy_sql = r.String();
  const uint32_t n = r.Count(13);
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    NodeAddress node;
    node.host = r.String();
    node.port = r.Get<int32_t>();
    c.local.push_back(r.Get<uint8_t>() != 0);
    ConnParams params = GetParams(r);
    c.nodes.push_back(std::move(node));
    c.params.push_back(std::move(params));
  }
  if (!r.ok()) return Torn("COPY open");
  if (consumed != nullptr) *consumed = r.pos();
  return c;
}

size_t CopyChunkOverhead(size_t parts) { return 8 + parts * 8; }

absl::StatusOr<size_t> EncodeCopyChunk(MessageKind kind, const std::vector<std::string>& per_node,
                                       char* out, size_t capacity) {
  Writer w(out, capacity);
  w.Put(kind == MessageKind::kCopyEnd ? kCopyEndMagic : kCopyDataMagic);
  uint32_t parts = 0;
  for (const std::string& rows : per_node) parts += rows.empty() ? 0 : 1;
  w.Put(parts);
  for (size_t i = 0; i < per_node.size(); ++i) {
    if (per_node[i].empty()) continue;
    w.Put<int32_t>(static_cast<int32_t>(i));
    w.String(per_node[i]);
  }
  if (!w.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a COPY chunk needs more than ", capacity, " bytes"));
  }
  return w.size();
}

absl::StatusOr<std::vector<SharedPool::CopyPart>> DecodeCopyChunk(const char* in, size_t size) {
  Reader r(in, size);
  if (const uint32_t magic = r.Get<uint32_t>(); magic != kCopyDataMagic && magic != kCopyEndMagic) {
    return Torn("COPY data");
  }
  std::vector<SharedPool::CopyPart> parts;
  const uint32_t n = r.Count(8);
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    SharedPool::CopyPart part;
    part.node = r.Get<int32_t>();
    const absl::string_view data = r.View();
    part.data = std::string_view(data.data(), data.size());
    parts.push_back(part);
  }
  if (!r.ok()) return Torn("COPY data");
  return parts;
}

size_t EncodeCopyAbort(char* out, size_t capacity) {
  Writer w(out, capacity);
  w.Put(kCopyAbortMagic);
  return w.ok() ? w.size() : 0;
}

PoolResponse CopyResultsResponse(std::vector<SharedPool::CopyNodeResult> results) {
  PoolResponse r;
  for (SharedPool::CopyNodeResult& n : results) {
    TaskResult t;
    t.node = std::move(n.node);
    t.status = std::move(n.status);
    t.sqlstate = std::move(n.sqlstate);
    t.command_tag = std::move(n.command_tag);
    t.row_count = n.rows;
    t.connection = n.started ? 1 : -1;
    r.tasks.push_back(std::move(t));
  }
  r.run_locally.assign(r.tasks.size(), false);
  return r;
}

std::vector<SharedPool::CopyNodeResult> CopyResultsOf(PoolResponse response) {
  std::vector<SharedPool::CopyNodeResult> out;
  for (TaskResult& t : response.tasks) {
    out.push_back({std::move(t.node), t.row_count, t.connection >= 0, std::move(t.status),
                   std::move(t.sqlstate), std::move(t.command_tag)});
  }
  return out;
}

}  // namespace connthrottle::pg
