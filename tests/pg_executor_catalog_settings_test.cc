// The worker-node catalog (what add_node and remove_node refuse, the local
// node marked), the executor settings' defaults and units, and
// connthrottle.node_conninfo's keywords on worker connections. Also the one
// instantiation of PgExecutorTest on both transports.

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;

TEST_P(PgExecutorTest, CatalogRefusesBadAndDuplicateNodes) {
  const std::string before = Catalog();
  struct Bad {
    std::string call;
    std::string sqlstate;
    std::string message;  // a part of the message
  };
  const std::vector<Bad> bad = {
      {"connthrottle.add_node(NULL, 5432)", "22004", "must not be NULL"},
      {"connthrottle.add_node('127.0.0.1', NULL)", "22004", "must not be NULL"},
      {"connthrottle.add_node('', 5432)", "22023", "1 to 255 bytes"},
      {"connthrottle.add_node(repeat('h', 256), 5432)", "22023", "got 256"},
      {"connthrottle.add_node('127.0.0.1', 0)", "22023", "port 0 is outside"},
      {"connthrottle.add_node('127.0.0.1', 70000)", "22023", "port 70000 is outside"},
      {absl::StrCat("connthrottle.add_node('127.0.0.1', ", Port(0), ")"), "23505",
       absl::StrCat("node ", Node(0), " is already in the catalog")},
      {"connthrottle.remove_node('no-such-node.invalid', 5432)", "42704",
       "node no-such-node.invalid:5432 is not in the catalog"},
      {"connthrottle.remove_node(NULL, 5432)", "22004", "must not be NULL"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.call);
    absl::Status s = obs_->Exec(absl::StrCat("SELECT ", b.call));
    ASSERT_FALSE(s.ok()) << "accepted";
    EXPECT_EQ(SqlState(s), b.sqlstate) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(b.message));
  }
  EXPECT_EQ(Catalog(), before) << "a refused call changed the catalog";

  // 255 bytes is the longest host accepted (the node is never contacted).
  const std::string long_host = std::string(251, 'h') + ".inv";
  ASSERT_EQ(long_host.size(), 255u);
  ASSERT_TRUE(obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('", long_host, "', 1)")).ok());

  // The coordinator itself (by address and by name) is marked local; the
  // view orders by host, then port.
  const std::string c_port = std::to_string(coordinator_->port());
  const std::string id =
      Value(*obs_, absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", c_port, ")"));
  EXPECT_GT(std::stoi(id), 0);
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('localhost', ", c_port, ")")).ok());
  std::vector<std::pair<int, std::string>> on_loopback = {
      {coordinator_->port(), "t"}, {Port(0), "f"}, {Port(1), "f"}};
  std::sort(on_loopback.begin(), on_loopback.end());
  std::vector<std::string> expected;
  for (const auto& [port, local] : on_loopback) {
    expected.push_back(absl::StrCat("(127.0.0.1,", port, ",", local, ")"));
  }
  expected.push_back(absl::StrCat("(", long_host, ",1,f)"));
  expected.push_back(absl::StrCat("(localhost,", c_port, ",t)"));
  EXPECT_EQ(Catalog(), absl::StrJoin(expected, " "));
  EXPECT_EQ(Value(*obs_,
                  "SELECT node_id FROM connthrottle.worker_node WHERE host = '127.0.0.1' "
                  "AND port = " +
                      c_port),
            id);

  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('127.0.0.1', ", c_port, ")")).ok());
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('localhost', ", c_port, ")")).ok());
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.remove_node('", long_host, "', 1)")).ok());
  EXPECT_EQ(Catalog(), before);
  // Removing it again is refused.
  EXPECT_EQ(SqlState(obs_->Exec(
                absl::StrCat("SELECT connthrottle.remove_node('127.0.0.1', ", c_port, ")"))),
            "42704");
}

TEST_P(PgExecutorTest, ExecutorSettingsShowMeaningfulDefaults) {
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"connthrottle.node_connection_timeout", "30s"},
      {"connthrottle.max_cached_connection_lifetime", "10min"},
      {"connthrottle.executor_slow_start_interval", "10ms"},
      {"connthrottle.max_adaptive_executor_pool_size", "16"},
      {"connthrottle.max_cached_conns_per_worker", "1"},
      {"connthrottle.connection_wait_timeout", "1min"},
      {"connthrottle.max_shared_pool_size", "0"},
      {"connthrottle.local_shared_pool_size", "0"},
  };
  for (const auto& [name, value] : defaults) {
    EXPECT_EQ(Value(*obs_, absl::StrCat("SHOW ", name)), value) << name;
    EXPECT_EQ(Value(*obs_, "SELECT boot_val = reset_val FROM pg_settings WHERE name = $1", {name}),
              "t")
        << name << " is not at its default";
  }
  // The shared pool's settings (this suite sets the first two): their
  // built-in defaults.
  for (const auto& [name, boot] : std::vector<std::pair<std::string, std::string>>{
           {"connthrottle.executor_transport", "shared_pool"},
           {"connthrottle.pool_idle_timeout", "60000"},
           {"connthrottle.pool_message_bytes", "65536"},
           {"connthrottle.pool_response_memory", "262144"}}) {
    EXPECT_EQ(Value(*obs_, "SELECT boot_val FROM pg_settings WHERE name = $1", {name}), boot)
        << name;
  }
  for (const char* name :
       {"connthrottle.node_connection_timeout", "connthrottle.max_cached_connection_lifetime",
        "connthrottle.executor_slow_start_interval"}) {
    EXPECT_EQ(Value(*obs_, "SELECT unit FROM pg_settings WHERE name = $1", {std::string(name)}),
              "ms")
        << name;
  }
  // Values with units are read as such, and out-of-range ones refused.
  ASSERT_TRUE(obs_->Exec("SET connthrottle.node_connection_timeout = '2s'").ok());
  EXPECT_EQ(Value(*obs_, "SHOW connthrottle.node_connection_timeout"), "2s");
  EXPECT_EQ(Value(*obs_,
                  "SELECT setting FROM pg_settings WHERE name = "
                  "'connthrottle.node_connection_timeout'"),
            "2000");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.node_connection_timeout = 5")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.max_adaptive_executor_pool_size = 0")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.executor_slow_start_interval = 0")), "22023");
  EXPECT_EQ(SqlState(obs_->Exec("SET connthrottle.max_cached_conns_per_worker = -1")), "22023");
  ASSERT_TRUE(obs_->Exec("RESET connthrottle.node_connection_timeout").ok());
}

// connthrottle.node_conninfo adds allowed libpq keywords to every worker
// connection, and a change applies to the next execution (idle connections
// made with the old keywords are not reused).
TEST_P(PgExecutorTest, NodeConninfoKeywordsApplyToWorkerConnections) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::vector<TaskSpec> name = {
      {Host(), Port(0), "SELECT current_setting('application_name')"}};
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("connthrottle")) << rows->at(0);

  ASSERT_TRUE(s->Exec("SET connthrottle.node_conninfo = 'application_name=ct-probe'").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("ct-probe")) << rows->at(0);

  // The workers do not speak TLS: sslmode=require fails every connection.
  ASSERT_TRUE(s->Exec("SET connthrottle.node_conninfo = 'sslmode=require'").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_FALSE(rows->at(0).success) << rows->at(0);
  EXPECT_EQ(rows->at(0).sqlstate, Cell("08001")) << rows->at(0);
  EXPECT_THAT(rows->at(0).error.value_or(""), HasSubstr("SSL")) << rows->at(0);

  // Keywords that choose where to connect or as whom are refused.
  for (const char* bad : {"host=10.0.0.1", "port=1", "user=postgres", "passfile=/tmp/x",
                          "options='-c x=y'", "service=s", "dbname=postgres"}) {
    EXPECT_EQ(SqlState(s->Exec(absl::StrCat("SET connthrottle.node_conninfo = $$", bad, "$$"))),
              "22023")
        << bad;
  }
  ASSERT_TRUE(s->Exec("RESET connthrottle.node_conninfo").ok());
  rows = RunTasks(*s, name);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->at(0).result, Cell("connthrottle")) << rows->at(0);
}

// Every PgExecutorTest case, in whichever file, runs on both transports.
INSTANTIATE_TEST_SUITE_P(Transports, PgExecutorTest, ::testing::Values("direct", "shared_pool"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace connthrottle::cluster
