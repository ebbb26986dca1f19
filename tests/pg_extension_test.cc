// The connthrottle extension inside a real PostgreSQL 15 server: waiting
// acquires that another session's release, a query cancel, statement_timeout,
// connthrottle.connection_wait_timeout, pg_terminate_backend or a raised limit
// ends; slots and reservations given back when a holder dies or vanishes or
// its transaction ends; the strict limit under concurrent sessions; and the
// error CREATE EXTENSION gives without shared_preload_libraries.
//
// One server (with connthrottle preloaded) serves every case; each case uses
// its own fake worker host ("worker-<test name>"), synchronises only by
// polling SQL state with deadlines, and ends with no busy node, no leftover
// session and a clean connthrottle.audit().
//
// Timings (wake-up after release, cancel to error, statement_timeout and
// reload delays) are printed for a person to judge; the assertions on them are
// only generous liveness bounds, as machines under load vary.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <latch>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/local_server.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_test_support.h"

namespace connthrottle::cluster {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// The port of every fake worker node; no server listens there. local_node is
// 'none', so no host name is ever resolved.
constexpr int kWorkerPort = 6001;
constexpr char kPort[] = "6001";

std::string Summary(std::vector<double> ms) {
  if (ms.empty()) return "no samples";
  std::sort(ms.begin(), ms.end());
  return absl::StrCat("min ", absl::StrFormat("%.2f", ms.front()), " ms, median ",
                      absl::StrFormat("%.2f", ms[ms.size() / 2]), " ms, max ",
                      absl::StrFormat("%.2f", ms.back()), " ms (n=", ms.size(), ")");
}

int ToInt(const std::optional<std::string>& v) { return v.has_value() ? std::stoi(*v) : 0; }

class PgExtensionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-pgext");
    if (!root.ok()) {
      *startup_error_ = root.status().ToString();
      return;
    }
    *root_ = *root;
    ServerConfig config;
    config.name = "coordinator";
    config.max_connections = 40;
    config.preload_connthrottle = true;
    config.settings = {{"connthrottle.local_node", "'none'"},
                       {"connthrottle.max_shared_pool_size", "1"}};
    absl::StatusOr<std::unique_ptr<LocalServer>> server = LocalServer::Start(*root_, config);
    if (!server.ok()) {
      *startup_error_ = server.status().ToString();
      return;
    }
    absl::StatusOr<QueryResult> created = (*server)->Query("CREATE EXTENSION connthrottle");
    if (!created.ok()) {
      *startup_error_ = created.status().ToString();
      return;
    }
    server_ = server->release();
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (!root_->empty()) RemoveTree(*root_);
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr) << "server did not start: " << *startup_error_;
    // Lower case: the extension canonicalises host names, and the counters
    // are looked up by the name as connthrottle.nodes shows it.
    host_ = absl::AsciiStrToLower(
        absl::StrCat("worker-", ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
    obs_ = Connect();
    ASSERT_NE(obs_, nullptr);
    ASSERT_EQ(Counters(), NodeCounters{}) << "host " << host_ << " busy before the test";
  }

  // Every case ends with its sessions gone, no busy node and a clean audit.
  void TearDown() override {
    if (server_ == nullptr || obs_ == nullptr) return;
    EXPECT_TRUE(PollUntil([&] {
      return Value(*obs_,
                   "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()") == "0";
    })) << "sessions of the test did not end";
    EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; }))
        << "busy nodes left: "
        << Rows(*obs_,
                "SELECT host, port, connections, forced, reserved, waiters "
                "FROM connthrottle.nodes");
    EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok())
        << obs_->Exec("SELECT connthrottle.audit()");
    obs_.reset();
  }

  static std::unique_ptr<PgClient> Connect() {
    absl::StatusOr<std::unique_ptr<PgClient>> c = server_->Connect();
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Sets a PGC_SIGHUP setting with ALTER SYSTEM + reload, and waits until a
  // new session sees it (the postmaster has re-read its configuration, so
  // every running backend has been signalled).
  static bool SetSetting(const std::string& name, const std::string& value) {
    auto shows = [&] {
      absl::StatusOr<QueryResult> r = server_->Query(absl::StrCat("SHOW ", name));
      return r.ok() && r->Value() == value;
    };
    if (shows()) return true;
    absl::Status s = server_->SetAndReload(name, value);
    EXPECT_TRUE(s.ok()) << s;
    return s.ok() && PollUntil(shows);
  }

  // The single value of `sql`; "" and a test failure on error.
  static std::string Value(PgClient& c, const std::string& sql,
                           const std::vector<std::optional<std::string>>& params = {}) {
    absl::StatusOr<QueryResult> r = c.Query(sql, params);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->Value() : "";
  }

  static std::string Rows(PgClient& c, const std::string& sql) {
    absl::StatusOr<QueryResult> r = c.Query(sql);
    if (!r.ok()) return r.status().ToString();
    std::vector<std::string> rows;
    for (const auto& row : r->rows) {
      std::vector<std::string> cells;
      for (const auto& cell : row) cells.push_back(cell.value_or("NULL"));
      rows.push_back(absl::StrCat("(", absl::StrJoin(cells, ","), ")"));
    }
    return rows.empty() ? "none" : absl::StrJoin(rows, " ");
  }

  // The counters of `host` (every port and database), as another session sees them.
  NodeCounters Counters(const std::string& host) {
    absl::StatusOr<QueryResult> r = obs_->Query(
        "SELECT count(*), sum(connections), sum(forced), sum(reserved), sum(waiters) "
        "FROM connthrottle.nodes WHERE host = $1",
        {host});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->rows.empty()) return {};
    const auto& row = r->rows[0];
    return {ToInt(row[0]), ToInt(row[1]), ToInt(row[2]), ToInt(row[3]), ToInt(row[4])};
  }
  NodeCounters Counters() { return Counters(host_); }

  static bool LogHas(const std::string& text) {
    std::ifstream log(server_->log_file());
    std::stringstream content;
    content << log.rdbuf();
    return content.str().find(text) != std::string::npos;
  }

  bool WaitForWaiters(int n, const std::string& host) {
    return PollUntil([&] { return Counters(host).waiters == n; });
  }
  bool WaitForWaiters(int n) { return WaitForWaiters(n, host_); }

  std::string Acquire() const {
    return absl::StrCat("SELECT connthrottle.acquire('", host_, "', ", kWorkerPort, ")");
  }

  // Session `a` takes the only slot of host_.
  void HoldTheSlot(PgClient& a) {
    ASSERT_EQ(Value(a, "SELECT connthrottle.try_acquire($1, $2)", {host_, kPort}), "t");
    ASSERT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
  }

  static constexpr char kCountNodes[] = "SELECT count(*) FROM connthrottle.nodes";

  static inline LocalServer* server_ = nullptr;
  static inline std::string* root_ = new std::string;
  static inline std::string* startup_error_ = new std::string;

  std::string host_;
  std::unique_ptr<PgClient> obs_;  // observes from a session of its own
};

// ---------------------------------------------------------------------------

TEST_F(PgExtensionTest, WaiterGetsTheSlotAnotherSessionReleases) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::vector<double> from_send, from_return;
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
    AsyncQuery wait(*b, Acquire());
    ASSERT_TRUE(WaitForWaiters(1)) << Counters();
    EXPECT_FALSE(wait.done());
    const std::string b_pid = std::to_string(b->BackendPid());
    EXPECT_EQ(Rows(*obs_, absl::StrCat("SELECT wait_event_type, wait_event FROM pg_stat_activity "
                                       "WHERE pid = ",
                                       b_pid)),
              "(Extension,Extension)");

    const Clock::time_point sent = Clock::now();
    ASSERT_EQ(Value(*a, "SELECT connthrottle.release($1, $2)", {host_, kPort}), "t");
    const Clock::time_point returned = Clock::now();
    // Woken before its connection_wait_timeout (60s): the acquire succeeded.
    // How soon is reported below, not asserted.
    ASSERT_TRUE(wait.WaitDone(50s)) << "the waiter was not woken by the release";
    ASSERT_TRUE(wait.result().ok()) << wait.result().status();
    from_send.push_back(Ms(wait.ended() - sent));
    from_return.push_back(Ms(wait.ended() - returned));

    EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
    EXPECT_EQ(Rows(*b, "SELECT host, kind FROM connthrottle.session_slots()"),
              absl::StrCat("(", host_, ",connection)"));
    EXPECT_EQ(Value(*a, "SELECT count(*) FROM connthrottle.session_slots()"), "0");
    ASSERT_EQ(Value(*b, "SELECT connthrottle.release($1, $2)", {host_, kPort}), "t");
    EXPECT_EQ(Counters(), NodeCounters{});
  }
  Report("wake-up: A's release sent -> B's acquire returned (incl. A's round trip)",
         Summary(from_send));
  Report("wake-up: A's release returned -> B's acquire returned (can be < 0)",
         Summary(from_return));
}

TEST_F(PgExtensionTest, CancelledWaitEndsPromptlyAndLeavesCountersExact) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  const std::string b_pid = std::to_string(b->BackendPid());
  // Two ways to cancel: the client's cancel request, and pg_cancel_backend
  // from another session (A).
  const std::vector<std::pair<std::string, std::function<absl::Status()>>> methods = {
      {"PgClient::Cancel", [&] { return b->Cancel(); }},
      {"pg_cancel_backend",
       [&] {
         absl::StatusOr<std::string> r =
             a->QueryValue(absl::StrCat("SELECT pg_cancel_backend(", b_pid, ")"));
         if (!r.ok()) return r.status();
         return *r == "t" ? absl::OkStatus() : absl::InternalError("pg_cancel_backend: " + *r);
       }},
  };
  for (const auto& [name, cancel] : methods) {
    std::vector<double> delays;
    for (int round = 0; round < 5; ++round) {
      SCOPED_TRACE(absl::StrCat(name, " round ", round));
      AsyncQuery wait(*b, Acquire());
      ASSERT_TRUE(WaitForWaiters(1)) << Counters();
      const Clock::time_point start = Clock::now();
      ASSERT_TRUE(cancel().ok());
      // Ended by the cancel (57014), not by its 60s connection_wait_timeout.
      ASSERT_TRUE(wait.WaitDone(50s)) << "the cancelled wait did not end";
      delays.push_back(Ms(wait.ended() - start));
      ASSERT_FALSE(wait.result().ok());
      EXPECT_EQ(SqlState(wait.result().status()), "57014") << wait.result().status();
      EXPECT_THAT(std::string(wait.result().status().message()),
                  HasSubstr("canceling statement due to user request"));
      // Exact at once: the waiter left the queue before B's error was sent.
      EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
      EXPECT_EQ(Value(*b, "SELECT count(*) FROM connthrottle.session_slots()"), "0");
      EXPECT_EQ(Value(*a, "SELECT count(*) FROM connthrottle.session_slots()"), "1");
    }
    Report(absl::StrCat("cancel -> error via ", name, " (requirement < 50 ms)"), Summary(delays));
  }
  EXPECT_EQ(Value(*obs_, "SELECT connthrottle.audit()"), "");
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
  EXPECT_EQ(Counters(), NodeCounters{});
}

TEST_F(PgExtensionTest, StatementTimeoutEndsTheWait) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  ASSERT_TRUE(b->Exec("SET statement_timeout = '100ms'").ok());
  std::vector<double> elapsed;
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const Clock::time_point start = Clock::now();
    absl::StatusOr<QueryResult> r = b->Query(Acquire());
    const Clock::duration took = Clock::now() - start;
    elapsed.push_back(Ms(took));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(SqlState(r.status()), "57014") << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("statement timeout"));
    EXPECT_GE(took, 100ms);
    EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
    EXPECT_EQ(Value(*b, "SELECT count(*) FROM connthrottle.session_slots()"), "0");
  }
  Report("statement_timeout 100ms: acquire's error after (client side)", Summary(elapsed));
  ASSERT_TRUE(b->Exec("RESET statement_timeout").ok());
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
  EXPECT_EQ(Counters(), NodeCounters{});
}

// Several rounds: the deadline is computed twice a few microseconds apart, so
// a mistake in rounding it shows only in some calls.
TEST_F(PgExtensionTest, ConnectionWaitTimeoutErrorNamesNodeAndSetting) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  ASSERT_TRUE(b->Exec("SET connthrottle.connection_wait_timeout = '50ms'").ok());
  constexpr int kRounds = 20;
  std::vector<double> elapsed;
  int wrong_detail = 0;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    const Clock::time_point start = Clock::now();
    absl::StatusOr<QueryResult> r = b->Query(Acquire());
    const Clock::duration took = Clock::now() - start;
    elapsed.push_back(Ms(took));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(SqlState(r.status()), "53300") << r.status();
    EXPECT_GE(took, 50ms) << "waited less than connection_wait_timeout";
    // libpq's error message carries the primary message and, on lines of
    // their own, the DETAIL and HINT.
    const std::string text(r.status().message());
    const size_t detail_at = text.find("\nDETAIL:");
    ASSERT_NE(detail_at, std::string::npos) << text;
    const std::string primary = text.substr(0, detail_at);
    const std::string detail = text.substr(detail_at);
    EXPECT_THAT(primary, HasSubstr(absl::StrCat(host_, ":", kWorkerPort))) << text;
    EXPECT_THAT(detail, HasSubstr("connthrottle.connection_wait_timeout is 50 ms.")) << text;
    if (detail.find("connthrottle.connection_wait_timeout") == std::string::npos) ++wrong_detail;
    EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
  }
  Report("connection_wait_timeout 50ms: acquire's error after",
         absl::StrCat(Summary(elapsed), "; DETAIL without the setting in ", wrong_detail, "/",
                      kRounds));
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
}

TEST_F(PgExtensionTest, TerminatedWaiterLeavesCountersExact) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  const std::string b_pid = std::to_string(b->BackendPid());
  {
    AsyncQuery wait(*b, Acquire());
    ASSERT_TRUE(WaitForWaiters(1)) << Counters();
    const Clock::time_point start = Clock::now();
    ASSERT_EQ(Value(*a, absl::StrCat("SELECT pg_terminate_backend(", b_pid, ")")), "t");
    ASSERT_TRUE(wait.WaitDone(50s)) << "the terminated wait did not end";
    Report("pg_terminate_backend -> waiter's error", absl::StrCat(Ms(wait.ended() - start), " ms"));
    ASSERT_FALSE(wait.result().ok());
    // libpq reports the lost connection (for any statement, pg_sleep too);
    // the server log shows B ended by the termination.
    EXPECT_THAT(std::string(wait.result().status().message()),
                AnyOf(HasSubstr("terminating connection due to administrator command"),
                      HasSubstr("server closed the connection unexpectedly")));
    EXPECT_TRUE(PollUntil([&] {
      return LogHas(absl::StrCat("[", b_pid,
                                 "] coordinator FATAL:  terminating connection due to "
                                 "administrator command"));
    })) << "no termination of "
        << b_pid << " in " << server_->log_file();
  }
  EXPECT_FALSE(b->Exec("SELECT 1").ok()) << "B's connection should be gone";
  EXPECT_TRUE(PollUntil([&] {
    return Value(*obs_,
                 absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE pid = ", b_pid)) == "0";
  }));
  EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
  EXPECT_EQ(Value(*obs_, "SELECT connthrottle.audit()"), "");
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
}

class PgHolderTest : public PgExtensionTest {
 protected:
  std::string TableFigures() {
    return Rows(*obs_, "SELECT entries_in_use, owners FROM connthrottle.table_stats()");
  }

  // B holds a slot on each of two nodes plus a forced one, and an unused
  // reservation in an open transaction; `end_b` makes B go away.
  void HoldEverythingThenLose(const std::function<void(PgClient& b)>& end_b) {
    const std::string h1 = host_ + "-1", h2 = host_ + "-2", h3 = host_ + "-3";
    std::unique_ptr<PgClient> b = Connect();
    ASSERT_NE(b, nullptr);
    const std::string before_nodes = Rows(*obs_, "SELECT host FROM connthrottle.nodes");
    const std::string before_table = TableFigures();

    ASSERT_EQ(Value(*b, "SELECT connthrottle.try_acquire($1, $2)", {h1, kPort}), "t");
    ASSERT_EQ(Value(*b, "SELECT connthrottle.try_acquire($1, $2)", {h2, kPort}), "t");
    ASSERT_TRUE(
        b->Exec(absl::StrCat("SELECT connthrottle.force_acquire('", h1, "', ", kPort, ")")).ok());
    ASSERT_TRUE(b->Exec("BEGIN").ok());
    ASSERT_EQ(Value(*b, "SELECT connthrottle.reserve(ARRAY[$1], ARRAY[6001])", {h3}), "1");
    EXPECT_EQ(Counters(h1), (NodeCounters{1, 2, 1, 0, 0}));
    EXPECT_EQ(Counters(h2), (NodeCounters{1, 1, 0, 0, 0}));
    EXPECT_EQ(Counters(h3), (NodeCounters{1, 1, 0, 1, 0}));

    const std::string b_pid = std::to_string(b->BackendPid());
    const Clock::time_point start = Clock::now();
    end_b(*b);
    EXPECT_TRUE(PollUntil([&] {
      return Counters(h1) == NodeCounters{} && Counters(h2) == NodeCounters{} &&
             Counters(h3) == NodeCounters{};
    })) << Counters(h1)
        << Counters(h2) << Counters(h3);
    Report(absl::StrCat(host_, ": B gone -> its slots given back"),
           absl::StrCat(Ms(Clock::now() - start), " ms (poll granularity ~1 ms)"));
    EXPECT_TRUE(PollUntil([&] {
      return Value(*obs_, absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE pid = ",
                                       b_pid)) == "0";
    }));
    EXPECT_EQ(Rows(*obs_, "SELECT host FROM connthrottle.nodes"), before_nodes);
    EXPECT_TRUE(PollUntil([&] { return TableFigures() == before_table; }))
        << TableFigures() << " vs " << before_table;
    EXPECT_EQ(Value(*obs_, "SELECT connthrottle.audit()"), "");
  }
};

TEST_F(PgHolderTest, TerminatedHolderGivesBackSlotsAndReservation) {
  ASSERT_NO_FATAL_FAILURE(HoldEverythingThenLose([&](PgClient& b) {
    EXPECT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", b.BackendPid(), ")")), "t");
  }));
}

TEST_F(PgHolderTest, AbruptClientDisconnectGivesBackEverything) {
  ASSERT_NO_FATAL_FAILURE(HoldEverythingThenLose([](PgClient& b) { b.Abandon(); }));
}

TEST_F(PgExtensionTest, ReservationGivenBackAtCommitAndAbort) {
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(b, nullptr);
  const std::string reserve =
      absl::StrCat("SELECT connthrottle.reserve(ARRAY['", host_, "'], ARRAY[", kWorkerPort, "])");
  const NodeCounters reserved_one{1, 1, 0, 1, 0};

  // Commit.
  ASSERT_TRUE(b->Exec("BEGIN").ok());
  ASSERT_EQ(Value(*b, reserve), "1");
  EXPECT_EQ(Counters(), reserved_one) << "a reservation is visible to other sessions";
  EXPECT_EQ(Rows(*b, "SELECT host, used FROM connthrottle.reservations()"),
            absl::StrCat("(", host_, ",f)"));
  EXPECT_EQ(Value(*b, reserve), "0") << "already reserved";
  EXPECT_EQ(Counters(), reserved_one);
  ASSERT_TRUE(b->Exec("COMMIT").ok());
  EXPECT_EQ(Counters(), NodeCounters{}) << "given back at commit";
  EXPECT_EQ(Value(*b, "SELECT count(*) FROM connthrottle.reservations()"), "0");

  // Rollback.
  ASSERT_TRUE(b->Exec("BEGIN").ok());
  ASSERT_EQ(Value(*b, reserve), "1");
  EXPECT_EQ(Counters(), reserved_one);
  ASSERT_TRUE(b->Exec("ROLLBACK").ok());
  EXPECT_EQ(Counters(), NodeCounters{}) << "given back at rollback";

  // Abort by an error: given back when the transaction aborts, before ROLLBACK.
  ASSERT_TRUE(b->Exec("BEGIN").ok());
  ASSERT_EQ(Value(*b, reserve), "1");
  EXPECT_EQ(Counters(), reserved_one);
  EXPECT_EQ(SqlState(b->Exec("SELECT 1/0")), "22012");
  EXPECT_EQ(Counters(), NodeCounters{}) << "given back when the transaction failed";
  ASSERT_TRUE(b->Exec("ROLLBACK").ok());
  EXPECT_EQ(Counters(), NodeCounters{});

  // Outside a transaction block the reservation lasts for the statement only.
  ASSERT_EQ(Value(*b, reserve), "1");
  EXPECT_EQ(Counters(), NodeCounters{});
  EXPECT_EQ(Value(*b, "SELECT count(*) FROM connthrottle.session_slots()"), "0");
}

TEST_F(PgExtensionTest, RaisingTheLimitWakesAWaiter) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  ASSERT_TRUE(b->Exec("SET connthrottle.connection_wait_timeout = '60s'").ok());
  {
    AsyncQuery wait(*b, Acquire());
    ASSERT_TRUE(WaitForWaiters(1)) << Counters();
    ASSERT_TRUE(obs_->Exec("ALTER SYSTEM SET connthrottle.max_shared_pool_size = 2").ok());
    const Clock::time_point start = Clock::now();
    ASSERT_EQ(Value(*obs_, "SELECT pg_reload_conf()"), "t");
    // Woken before its 60s timeout: the acquire succeeded.
    ASSERT_TRUE(wait.WaitDone(50s)) << "raising the limit did not wake the waiter";
    Report("pg_reload_conf() sent -> waiter's acquire returned",
           absl::StrCat(Ms(wait.ended() - start), " ms"));
    ASSERT_TRUE(wait.result().ok()) << wait.result().status();
  }
  EXPECT_EQ(Counters(), (NodeCounters{1, 2, 0, 0, 0}));
  EXPECT_EQ(Value(*a, "SELECT count(*) FROM connthrottle.session_slots()"), "1");
  EXPECT_EQ(Value(*b, "SELECT count(*) FROM connthrottle.session_slots()"), "1");
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
  ASSERT_EQ(Value(*b, "SELECT connthrottle.release_all()"), "1");
  EXPECT_EQ(Counters(), NodeCounters{});
  EXPECT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
}

// A configuration reload interrupts the wait (so that a raised limit is seen
// at once); the wait must then go on with the same deadline, and its error
// still name the setting the deadline came from. Reloads keep coming for the
// whole wait: a wait that restarted its timeout at each would never end.
TEST_F(PgExtensionTest, ReloadDuringWaitKeepsTimeoutAndItsDetail) {
  std::unique_ptr<PgClient> a = Connect();
  std::unique_ptr<PgClient> b = Connect();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NO_FATAL_FAILURE(HoldTheSlot(*a));
  ASSERT_TRUE(b->Exec("SET connthrottle.connection_wait_timeout = '1s'").ok());
  const Clock::time_point start = Clock::now();
  AsyncQuery wait(*b, Acquire());
  ASSERT_TRUE(WaitForWaiters(1)) << Counters();
  int reloads = 0;
  const Clock::time_point give_up = start + 60s;
  while (!wait.done() && Clock::now() < give_up) {
    ASSERT_EQ(Value(*obs_, "SELECT pg_reload_conf()"), "t");
    ++reloads;
    std::this_thread::sleep_for(50ms);  // spacing of the reloads only
  }
  ASSERT_TRUE(wait.WaitDone(1s)) << "the wait did not end within 60 s of " << reloads
                                 << " reloads: each restarted its 1 s timeout";
  const Clock::duration took = wait.ended() - start;
  Report("connection_wait_timeout 1s with reloads every 50 ms during the wait: error after",
         absl::StrCat(Ms(took), " ms, ", reloads, " reloads"));
  ASSERT_FALSE(wait.result().ok());
  EXPECT_EQ(SqlState(wait.result().status()), "53300") << wait.result().status();
  EXPECT_GE(took, 1s);
  EXPECT_GE(reloads, 2);
  EXPECT_THAT(std::string(wait.result().status().message()),
              HasSubstr("DETAIL:  connthrottle.connection_wait_timeout is 1000 ms."));
  EXPECT_EQ(Counters(), (NodeCounters{1, 1, 0, 0, 0}));
  ASSERT_EQ(Value(*a, "SELECT connthrottle.release_all()"), "1");
}

TEST_F(PgExtensionTest, CreateExtensionWithoutPreloadFailsClearly) {
  absl::StatusOr<std::string> root = MakeServerRoot("connthrottle-nopreload");
  ASSERT_TRUE(root.ok()) << root.status();
  {
    ServerConfig config;
    config.name = "plain";
    config.max_connections = 10;
    config.preload_connthrottle = false;
    absl::StatusOr<std::unique_ptr<LocalServer>> plain = LocalServer::Start(*root, config);
    ASSERT_TRUE(plain.ok()) << plain.status();
    absl::StatusOr<QueryResult> r = (*plain)->Query("CREATE EXTENSION connthrottle");
    ASSERT_FALSE(r.ok()) << "CREATE EXTENSION succeeded without shared_preload_libraries";
    EXPECT_EQ(SqlState(r.status()), "55000") << r.status();
    const std::string text(r.status().message());
    EXPECT_THAT(text, HasSubstr("connthrottle must be loaded via shared_preload_libraries"));
    EXPECT_THAT(text, HasSubstr("HINT:"));
    EXPECT_THAT(text, HasSubstr("Add connthrottle to shared_preload_libraries"));
    absl::StatusOr<QueryResult> ext =
        (*plain)->Query("SELECT count(*) FROM pg_extension WHERE extname = 'connthrottle'");
    ASSERT_TRUE(ext.ok()) << ext.status();
    EXPECT_EQ(ext->Value(), "0");
  }
  RemoveTree(*root);
}

TEST_F(PgExtensionTest, ManyWaitersOneSlotAllServedInTurn) {
  constexpr int kSessions = 6;
  constexpr int kRounds = 5;
  std::vector<std::unique_ptr<PgClient>> clients;
  for (int i = 0; i < kSessions; ++i) {
    clients.push_back(Connect());
    ASSERT_NE(clients.back(), nullptr);
  }
  std::unique_ptr<PgClient> sampler_client = Connect();
  ASSERT_NE(sampler_client, nullptr);
  const std::string before_acquired =
      Value(*obs_, "SELECT acquired FROM connthrottle.table_stats()");

  std::atomic<int> running{kSessions};
  std::atomic<int> max_holding{0}, max_waiters{0}, samples{0};
  std::atomic<bool> sample_failed{false};
  std::thread sampler([&] {
    while (running.load() > 0) {
      absl::StatusOr<QueryResult> r = sampler_client->Query(
          "SELECT coalesce(sum(connections - forced), 0), coalesce(sum(waiters), 0) "
          "FROM connthrottle.nodes WHERE host = $1",
          {host_});
      if (!r.ok()) {
        sample_failed = true;
        return;
      }
      const int holding = ToInt(r->rows[0][0]);
      const int waiters = ToInt(r->rows[0][1]);
      if (holding > max_holding.load()) max_holding = holding;
      if (waiters > max_waiters.load()) max_waiters = waiters;
      ++samples;
    }
  });

  std::latch start(kSessions);
  std::vector<absl::Status> failures(kSessions);
  std::vector<std::thread> sessions;
  for (int i = 0; i < kSessions; ++i) {
    sessions.emplace_back([&, i] {
      PgClient& c = *clients[i];
      start.arrive_and_wait();
      for (int round = 0; round < kRounds && failures[i].ok(); ++round) {
        absl::Status s = c.Exec(absl::StrCat("SELECT connthrottle.acquire('", host_, "', ",
                                             kWorkerPort, ", timeout => '30s')"));
        if (s.ok()) s = c.Exec("SELECT pg_sleep(0.01)");
        if (s.ok()) {
          absl::StatusOr<std::string> released = c.QueryValue(
              absl::StrCat("SELECT connthrottle.release('", host_, "', ", kWorkerPort, ")"));
          s = !released.ok()     ? released.status()
              : *released != "t" ? absl::InternalError("release returned " + *released)
                                 : absl::OkStatus();
        }
        failures[i] = s;
      }
      --running;
    });
  }
  const Clock::time_point began = Clock::now();
  for (std::thread& t : sessions) t.join();
  const Clock::duration took = Clock::now() - began;
  sampler.join();

  for (int i = 0; i < kSessions; ++i) EXPECT_TRUE(failures[i].ok()) << i << ": " << failures[i];
  EXPECT_FALSE(sample_failed.load());
  EXPECT_LE(max_holding.load(), 1) << "the limit of 1 was exceeded";
  EXPECT_GT(samples.load(), 0);
  Report(absl::StrCat(kSessions, " sessions x ", kRounds, " rounds of acquire+10ms+release"),
         absl::StrCat(Ms(took), " ms total; ", samples.load(), " samples, max holding ",
                      max_holding.load(), ", max waiters ", max_waiters.load()));
  EXPECT_EQ(Counters(), NodeCounters{});
  EXPECT_EQ(std::stoll(Value(*obs_, "SELECT acquired FROM connthrottle.table_stats()")) -
                std::stoll(before_acquired),
            kSessions * kRounds);
}

}  // namespace
}  // namespace connthrottle::cluster
