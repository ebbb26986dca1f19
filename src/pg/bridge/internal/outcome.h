// The bridge-only half of outcome.h: how an absl::Status becomes an
// Outcome (the SQLSTATE chosen for each status code), the Guard that keeps
// C++ exceptions from leaving the bridge, and a Wait's deadline.
// Included by the bridge's .cc files only, never by the glue.

#ifndef CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_OUTCOME_H_
#define CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_OUTCOME_H_

#include <exception>
#include <new>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "pg/bridge/outcome.h"

namespace connthrottle::pg {

// SQLSTATE packing, as PostgreSQL's MAKE_SQLSTATE does it.
constexpr int Sqlstate(const char* s) {
  auto six = [](char c) { return (c - '0') & 0x3F; };
  return six(s[0]) + (six(s[1]) << 6) + (six(s[2]) << 12) + (six(s[3]) << 18) + (six(s[4]) << 24);
}
inline constexpr int kTooManyConnections = Sqlstate("53300");
inline constexpr int kConfigurationLimitExceeded = Sqlstate("53400");
inline constexpr int kOutOfMemory = Sqlstate("53200");
inline constexpr int kInvalidParameterValue = Sqlstate("22023");
inline constexpr int kObjectNotInPrerequisiteState = Sqlstate("55000");
inline constexpr int kDataCorrupted = Sqlstate("XX001");
inline constexpr int kConnectionFailure = Sqlstate("08006");
inline constexpr int kInternalError = Sqlstate("XX000");

// An Outcome that raises `sqlstate` with `message` (and `detail`), each cut
// to its buffer.
Outcome Fail(int sqlstate, std::string_view message, std::string_view detail = {});

// The Outcome of `status`: ok for OK; else the SQLSTATE the status carries
// as a kSqlstatePayload (pool_channel.h), or the one its code maps to —
// ResourceExhausted and DeadlineExceeded to `exhausted_sqlstate`, a full
// table to 53400 with a hint, InvalidArgument to 22023, FailedPrecondition
// to 55000, DataLoss to XX001, Unavailable to 08006, anything else XX000.
// The message is prefixed "connthrottle: ".
Outcome FromStatus(const absl::Status& status, int exhausted_sqlstate = kTooManyConnections);

// An Outcome that says the call stopped for an interrupt.
Outcome Interrupted();

// Runs `body`, turning any C++ exception into an Outcome: nothing may leave
// this layer but an Outcome.
template <typename Body>
Outcome Guard(Body body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Fail(kOutOfMemory, "connthrottle: out of memory");
  } catch (const std::exception& e) {
    return Fail(kInternalError, absl::StrCat("connthrottle: internal error: ", e.what()));
  } catch (...) {
    return Fail(kInternalError, "connthrottle: internal error");
  }
}

// ---- waits ----

// When `wait` began, and when it runs out (InfiniteFuture for no limit).
absl::Time Began(const Wait& wait);
absl::Time Deadline(const Wait& wait);
// What a waiting call that stopped for an interrupt returns: marks `wait`
// resumed, so that the next attempt continues the same wait.
Outcome Resume(Wait& wait);
// The Outcome of a waiting call that failed with `status`; a deadline that
// passed names the timeout, and the setting when it came from one.
Outcome WaitTimedOut(const absl::Status& status, const Wait& wait);

}  // namespace connthrottle::pg

#endif  // CONNTHROTTLE_SRC_PG_BRIDGE_INTERNAL_OUTCOME_H_
