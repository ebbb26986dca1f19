#include "pg/bridge/pool_message.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "pg/bridge/message_codec.h"

namespace connthrottle::pg {
namespace {

constexpr uint32_t kRequestMagic = 0x43545251;   // "CTRQ"
constexpr uint32_t kResponseMagic = 0x43545253;  // "CTRS"

absl::Status Torn(const char* what) {
  return absl::DataLossError(absl::StrCat("connthrottle: a malformed ", what, " message"));
}

// The single value run_tasks shows, when the last result set has one.
// Null when there is none; a pointer, not a copy (values may be large).
const std::optional<std::string>* SingleValue(const TaskResult& t) {
  if (t.row_count == 1 && t.rows.size() == 1 && t.rows[0].size() == 1) return &t.rows[0][0];
  return nullptr;
}

void PutTask(Writer& w, const TaskResult& t, bool run_locally) {
  w.Put<uint8_t>(run_locally ? 1 : 0);
  w.Put<int32_t>(static_cast<int32_t>(t.status.code()));
  w.String(t.status.message());
  w.String(t.sqlstate);
  w.String(t.command_tag);
  w.Put<int64_t>(t.row_count);
  const auto value = SingleValue(t);
  w.Put<uint8_t>(value == nullptr ? 0 : value->has_value() ? 2 : 1);  // none, NULL, text
  if (value != nullptr && value->has_value()) w.String(**value);
  w.String(t.node.host);
  w.Put<int32_t>(t.node.port);
  w.Put<uint8_t>(t.ran_locally ? 1 : 0);
  w.Put<int32_t>(t.connection);
  w.Put<int64_t>(absl::ToInt64Microseconds(t.queued));
  w.Put<int64_t>(absl::ToInt64Microseconds(t.run));
}

void PutResponseHead(Writer& w, const PoolResponse& response) {
  w.Put(kResponseMagic);
  w.Put<int32_t>(0);
  w.Put<uint32_t>(static_cast<uint32_t>(response.tasks.size()));
  w.Put<int32_t>(response.tasks_retried);
}

size_t EncodeError(const absl::Status& status, absl::string_view sqlstate, char* out,
                   size_t capacity) {
  Writer w(out, capacity);
  w.Put(kResponseMagic);
  w.Put<int32_t>(static_cast<int32_t>(status.code()));
  w.String(status.message().substr(0, capacity / 2));
  w.String(sqlstate);
  return w.ok() ? w.size() : 0;
}

}  // namespace

absl::StatusOr<size_t> EncodeRequest(const SharedPool::Submission& request, char* out,
                                     size_t capacity) {
  Writer w(out, capacity);
  w.Put(kRequestMagic);
  w.Put<uint32_t>(request.database_id);
  w.Put<int64_t>(request.max_rows_kept);
  // Milliseconds; -1: none given.
  w.Put<int64_t>(request.slot_wait_timeout
                     ? std::max<int64_t>(0, absl::ToInt64Milliseconds(*request.slot_wait_timeout))
                     : -1);
  w.Put<uint32_t>(static_cast<uint32_t>(request.tasks.size()));
  for (size_t i = 0; i < request.tasks.size() && w.ok(); ++i) {
    const Task& t = request.tasks[i];
    w.String(t.node.host);
    w.Put<int32_t>(t.node.port);
    w.String(t.sql);
    w.Put<uint8_t>(t.allow_local ? 1 : 0);
    w.Put<uint8_t>(i < request.local.size() && request.local[i] ? 1 : 0);
    PutParams(w, i < request.params.size() ? request.params[i] : ConnParams());
  }
  if (!w.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the tasks of one execution need more than ", capacity, " bytes"));
  }
  return w.size();
}

absl::StatusOr<SharedPool::Submission> DecodeRequest(const char* in, size_t size) {
  Reader r(in, size);
  if (r.Get<uint32_t>() != kRequestMagic) return Torn("request");
  SharedPool::Submission s;
  s.database_id = r.Get<uint32_t>();
  s.max_rows_kept = r.Get<int64_t>();
  if (const int64_t wait_ms = r.Get<int64_t>(); wait_ms >= 0) {
    s.slot_wait_timeout = absl::Milliseconds(wait_ms);
  }
  const uint32_t n = r.Count(16);
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    Task t;
    t.node.host = r.String();
    t.node.port = r.Get<int32_t>();
    t.sql = r.String();
    t.allow_local = r.Get<uint8_t>() != 0;
    s.local.push_back(r.Get<uint8_t>() != 0);
    ConnParams params = GetParams(r);
    s.tasks.push_back(std::move(t));
    s.params.push_back(std::move(params));
  }
  if (!r.ok()) return Torn("request");
  return s;
}

size_t ResponseBytes(const PoolResponse& response) {
  if (!response.status.ok())
    return EncodeError(response.status, response.sqlstate, nullptr, SIZE_MAX);
  Writer w(nullptr, SIZE_MAX);
  PutResponseHead(w, response);
  for (size_t i = 0; i < response.tasks.size(); ++i) {
    PutTask(w, response.tasks[i], i < response.run_locally.size() && response.run_locally[i]);
  }
  return w.size();
}

size_t EncodeResponse(const PoolResponse& response, char* out, size_t capacity,
                      const char* setting) {
  if (!response.status.ok()) {
    return EncodeError(response.status, response.sqlstate, out, capacity);
  }
  auto encode = [&](size_t max_text) {
    Writer w(out, capacity);
    PutResponseHead(w, response);
    for (size_t i = 0; i < response.tasks.size() && w.ok(); ++i) {
      const TaskResult& t = response.tasks[i];
      const bool local = i < response.run_locally.size() && response.run_locally[i];
      const auto value = SingleValue(t);
      const size_t text = std::max(t.status.message().size(),
                                   value != nullptr && value->has_value() ? (*value)->size() : 0);
      if (text <= max_text) {
        PutTask(w, t, local);
        continue;
      }
      TaskResult big;
      big.node = t.node;
      big.connection = t.connection;
      big.queued = t.queued;
      big.run = t.run;
      big.sqlstate = "54000";  // program_limit_exceeded
      big.status = absl::ResourceExhaustedError(absl::StrCat("node ", t.node.ToString(),
                                                             ": the task's result (", text,
                                                             " bytes) does not fit in ", setting));
      PutTask(w, big, local);
    }
    return w.ok() ? w.size() : 0;
  };
  // Everything as it is; if that does not fit, each text at most its share.
  if (size_t n = encode(capacity)) return n;
  const size_t share = capacity / (2 * std::max<size_t>(response.tasks.size(), 1));
  if (size_t n = encode(share)) return n;
  return EncodeError(absl::ResourceExhaustedError(
                         absl::StrCat("connthrottle: the results of one execution do not fit in ",
                                      setting, " (", capacity, " bytes)")),
                     "54000", out, capacity);
}

absl::StatusOr<PoolResponse> DecodeResponse(const char* in, size_t size) {
  Reader r(in, size);
  if (r.Get<uint32_t>() != kResponseMagic) return Torn("response");
  PoolResponse p;
  const int32_t code = r.Get<int32_t>();
  if (code != 0) {
    std::string message = r.String();
    p.sqlstate = r.String();
    if (!r.ok()) return Torn("response");
    p.status = absl::Status(static_cast<absl::StatusCode>(code), message);
    return p;
  }
  const uint32_t n = r.Count(32);
  p.tasks_retried = r.Get<int32_t>();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    TaskResult t;
    p.run_locally.push_back(r.Get<uint8_t>() != 0);
    const auto status_code = static_cast<absl::StatusCode>(r.Get<int32_t>());
    std::string message = r.String();
    t.status = absl::Status(status_code, message);
    t.sqlstate = r.String();
    t.command_tag = r.String();
    t.row_count = r.Get<int64_t>();
    switch (r.Get<uint8_t>()) {
      case 1:
        t.columns = {"value"};
        t.rows = {{std::nullopt}};
        break;
      case 2:
        t.columns = {"value"};
        t.rows = {{r.String()}};
        break;
      default:
        break;
    }
    t.node.host = r.String();
    t.node.port = r.Get<int32_t>();
    t.ran_locally = r.Get<uint8_t>() != 0;
    t.connection = r.Get<int32_t>();
    t.queued = absl::Microseconds(r.Get<int64_t>());
    t.run = absl::Microseconds(r.Get<int64_t>());
    p.tasks.push_back(std::move(t));
  }
  if (!r.ok()) return Torn("response");
  return p;
}

}  // namespace connthrottle::pg
