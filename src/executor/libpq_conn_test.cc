// What a failed connect attempt says: libpq's verbose message parsed into
// the default message and the server's SQLSTATE.

#include "executor/libpq_conn.h"

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace connthrottle {
namespace {

TEST(ParseConnectErrorTest, TakesTheServersSqlstateOutOfAVerboseMessage) {
  const ConnectError e = ParseConnectError(
      "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  53300: connthrottle: "
      "this worker's budget of 2 coordinator connections is in use\n"
      "DETAIL:  connthrottle.worker_budget is 2; 2 coordinator connections are open.\n"
      "LOCATION:  Authenticate, admission.cc:85\n");
  EXPECT_EQ(e.sqlstate, "53300");
  EXPECT_TRUE(e.no_slot());
  EXPECT_EQ(e.message,
            "connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  connthrottle: this "
            "worker's budget of 2 coordinator connections is in use\n"
            "DETAIL:  connthrottle.worker_budget is 2; 2 coordinator connections are open.");
}

TEST(ParseConnectErrorTest, TooManyClientsIsNoSlotToo) {
  const ConnectError e = ParseConnectError(
      "connection to server at \"w1\" (10.0.0.1), port 5432 failed: FATAL:  53300: sorry, too "
      "many clients already\nLOCATION:  BackendStartup, postmaster.c:4012\n");
  EXPECT_TRUE(e.no_slot());
  EXPECT_EQ(e.message,
            "connection to server at \"w1\" (10.0.0.1), port 5432 failed: FATAL:  sorry, too many "
            "clients already");
}

TEST(ParseConnectErrorTest, OtherRefusalsKeepTheirCode) {
  const ConnectError e = ParseConnectError(
      "connection to server at \"w1\", port 5432 failed: FATAL:  28P01: password authentication "
      "failed for user \"app\"\n");
  EXPECT_EQ(e.sqlstate, "28P01");
  EXPECT_FALSE(e.no_slot());
  EXPECT_EQ(e.message,
            "connection to server at \"w1\", port 5432 failed: FATAL:  password authentication "
            "failed for user \"app\"");
}

// libpq tried twice (SSL, then without): both codes out, the last kept.
TEST(ParseConnectErrorTest, EveryAttemptsCodeIsTakenOut) {
  const ConnectError e = ParseConnectError(
      "connection to server at \"w1\", port 5432 failed: FATAL:  53300: sorry, too many clients "
      "already\nLOCATION:  BackendStartup, postmaster.c:4012\nconnection to server at \"w1\", "
      "port 5432 failed: FATAL:  53300: sorry, too many clients already\nLOCATION:  "
      "BackendStartup, postmaster.c:4012\n");
  EXPECT_TRUE(e.no_slot());
  EXPECT_EQ(e.message,
            "connection to server at \"w1\", port 5432 failed: FATAL:  sorry, too many clients "
            "already\nconnection to server at \"w1\", port 5432 failed: FATAL:  sorry, too many "
            "clients already");
}

// A server speaking another language: its severity word and the location
// label are translated, the code is not.
TEST(ParseConnectErrorTest, ATranslatedSeverityStillGivesTheCode) {
  const ConnectError e = ParseConnectError(
      "connection to server at \"w1\", port 5432 failed: FATAL:  53300: connthrottle: ...\n"
      "ORT:  Authenticate, admission.cc:85\n");
  EXPECT_EQ(ParseConnectError("...failed: SCHWERWIEGEND:  53300: zu viele Verbindungen\n").sqlstate,
            "53300");
  EXPECT_EQ(e.message,
            "connection to server at \"w1\", port 5432 failed: FATAL:  connthrottle: ...");
}

TEST(ParseConnectErrorTest, ANetworkFailureHasNoSqlstate) {
  const std::string refused =
      "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server "
      "running on that host and accepting TCP/IP connections?\n";
  const ConnectError e = ParseConnectError(refused);
  EXPECT_EQ(e.sqlstate, "");
  EXPECT_FALSE(e.no_slot());
  EXPECT_EQ(e.message + "\n", refused);
  // Text after a severity that is not a code stays as it is.
  EXPECT_EQ(ParseConnectError("FATAL:  no: such code").sqlstate, "");
}

TEST(NoSlotBackoffTest, DoublesFromTheSlowStartIntervalUpTo500Ms) {
  absl::Duration b = absl::ZeroDuration();
  const absl::Duration interval = absl::Milliseconds(10);
  std::vector<int64_t> ms;
  for (int i = 0; i < 8; ++i)
    ms.push_back(absl::ToInt64Milliseconds(b = NoSlotBackoff(b, interval)));
  EXPECT_EQ(ms, (std::vector<int64_t>{10, 20, 40, 80, 160, 320, 500, 500}));
  // An interval longer than 500 ms is the back-off itself.
  EXPECT_EQ(NoSlotBackoff(absl::ZeroDuration(), absl::Seconds(2)), absl::Seconds(2));
  EXPECT_EQ(NoSlotBackoff(absl::Seconds(2), absl::Seconds(2)), absl::Seconds(2));
}

}  // namespace
}  // namespace connthrottle
