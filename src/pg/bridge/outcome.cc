// outcome.cc — absl::Status to Outcome (SQLSTATEs and messages), and the
// time of a Wait.

#include "pg/bridge/internal/outcome.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "connthrottle/counter_table.h"
#include "pg/bridge/pool_channel.h"

namespace connthrottle::pg {
namespace {

void SetMessage(Outcome& o, std::string_view message, std::string_view detail = {}) {
  size_t n = std::min(message.size(), sizeof(o.message) - 1);
  std::memcpy(o.message, message.data(), n);
  o.message[n] = '\0';
  n = std::min(detail.size(), sizeof(o.detail) - 1);
  std::memcpy(o.detail, detail.data(), n);
  o.detail[n] = '\0';
}

}  // namespace

Outcome Fail(int sqlstate, std::string_view message, std::string_view detail) {
  Outcome o;
  o.sqlstate = sqlstate;
  SetMessage(o, message, detail);
  return o;
}

Outcome FromStatus(const absl::Status& status, int exhausted_sqlstate) {
  if (status.ok()) return Outcome{};
  std::string message = absl::StrCat("connthrottle: ", std::string(status.message()));
  // A SQLSTATE chosen where the error arose (the shared pool's channel).
  if (auto state = status.GetPayload(kSqlstatePayload)) {
    const std::string text(*state);
    if (text.size() == 5) {
      char code[6];
      std::memcpy(code, text.data(), 6);
      return Fail(
          Sqlstate(code),
          absl::StrCat("connthrottle: ", absl::StripPrefix(status.message(), "connthrottle: ")));
    }
  }
  if (IsTableFullError(status)) {
    return Fail(kConfigurationLimitExceeded, message,
                "connthrottle.full_table_policy is 'refuse'; raise connthrottle.max_tracked_nodes "
                "(needs a restart) or set the policy to 'admit_uncounted'.");
  }
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
      return Fail(exhausted_sqlstate, message);
    case absl::StatusCode::kInvalidArgument:
      return Fail(kInvalidParameterValue, message);
    case absl::StatusCode::kFailedPrecondition:
      return Fail(kObjectNotInPrerequisiteState, message);
    case absl::StatusCode::kDataLoss:
      return Fail(kDataCorrupted, message);
    case absl::StatusCode::kUnavailable:  // a worker could not be reached or was lost
      return Fail(kConnectionFailure, message);
    default:
      return Fail(kInternalError, message);
  }
}

Outcome Interrupted() {
  Outcome o;
  o.interrupted = true;
  return o;
}

Wait BeginWait(int64_t timeout_ms, bool from_setting) noexcept {
  Wait wait;
  wait.began_us = absl::ToUnixMicros(absl::Now());
  wait.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
  wait.from_setting = from_setting;
  return wait;
}

absl::Time Began(const Wait& wait) { return absl::FromUnixMicros(wait.began_us); }

absl::Time Deadline(const Wait& wait) {
  return wait.timeout_ms < 0 ? absl::InfiniteFuture()
                             : Began(wait) + absl::Milliseconds(wait.timeout_ms);
}

Outcome Resume(Wait& wait) {
  wait.resumed = true;
  return Interrupted();
}

Outcome WaitTimedOut(const absl::Status& status, const Wait& wait) {
  Outcome o = FromStatus(status);
  if (absl::IsDeadlineExceeded(status)) {
    SetMessage(o, absl::StrCat("connthrottle: ", std::string(status.message())),
               wait.from_setting ? absl::StrCat("connthrottle.connection_wait_timeout is ",
                                                wait.timeout_ms, " ms.")
                                 : absl::StrCat("The timeout given was ", wait.timeout_ms, " ms."));
  }
  return o;
}

}  // namespace connthrottle::pg
