// run_tasks and run_on_all_nodes: results per task fanned out over the
// workers, raise_on_error, a task entering COPY, and text in the
// coordinator's encoding (with distribute's schema-qualified target).

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;

TEST_P(PgExecutorTest, RunTasksFanOutResultsPerTask) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  constexpr int kTasks = 40;
  constexpr int kFailing = 17;  // on worker 2 (odd)
  std::vector<TaskSpec> tasks;
  std::vector<std::string> expected;
  for (int i = 0; i < kTasks; ++i) {
    const int w = i % 2;
    if (i == kFailing) {
      tasks.push_back({Host(), Port(w), "SELECT 1/0"});
      expected.push_back("");
    } else if (i % 5 == 0) {
      tasks.push_back({Host(), Port(w), "SELECT current_setting('port')"});
      expected.push_back(std::to_string(Port(w)));
    } else {
      tasks.push_back({Host(), Port(w), absl::StrCat("SELECT ", i)});
      expected.push_back(std::to_string(i));
    }
  }
  constexpr char kPoolTasksRun[] = "SELECT tasks_run FROM connthrottle.pool_stats()";
  const int64_t pool_tasks_before = std::stoll(Value(*obs_, kPoolTasksRun));
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*s, tasks);
  const Clock::duration took = Clock::now() - start;
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), static_cast<size_t>(kTasks));
  // On the shared pool the communicator ran them (it publishes its figures
  // every 100 ms). The direct transport's own cases below fail if the pool
  // ran its tasks (a limit contended without a waiting acquire).
  if (OnSharedPool()) {
    EXPECT_TRUE(PollUntil([&] {
      return std::stoll(Value(*obs_, kPoolTasksRun)) - pool_tasks_before >= kTasks;
    })) << "the communicator did not run the tasks";
  }
  std::map<int, std::set<std::string>> connections;  // per worker
  for (int i = 0; i < kTasks; ++i) {
    const TaskRow& r = (*rows)[i];
    SCOPED_TRACE(::testing::PrintToString(r));
    const int w = i % 2;
    EXPECT_EQ(r.task, i + 1);
    EXPECT_EQ(r.host, Host());
    EXPECT_EQ(r.port, Port(w));
    EXPECT_FALSE(r.ran_locally);
    if (i == kFailing) {
      EXPECT_FALSE(r.success);
      EXPECT_EQ(r.sqlstate, Cell("22012"));
      EXPECT_EQ(r.result, std::nullopt);
      ASSERT_TRUE(r.error.has_value());
      EXPECT_THAT(*r.error, HasSubstr(Node(w)));
      EXPECT_THAT(*r.error, HasSubstr("division by zero"));
    } else {
      EXPECT_TRUE(r.success);
      EXPECT_EQ(r.result, Cell(expected[i]));
      EXPECT_EQ(r.sqlstate, std::nullopt);
      EXPECT_EQ(r.error, std::nullopt);
    }
    if (r.connection.has_value()) connections[w].insert(*r.connection);
  }
  Report("run_tasks: 40 tasks over 2 workers",
         absl::StrCat(Ms(took), " ms; connections used: worker1 ", connections[0].size(),
                      ", worker2 ", connections[1].size()));
  EXPECT_GE(connections[0].size(), 1u);
  EXPECT_GE(connections[1].size(), 1u);

  // One row per catalog node, in catalog order, each run on that node.
  absl::StatusOr<QueryResult> all = s->Query(
      "SELECT host, port, success, result FROM connthrottle.run_on_all_nodes("
      "'SELECT current_setting(''port'')') ORDER BY task");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows.size(), 2u);
  for (int w = 0; w < 2; ++w) {
    EXPECT_EQ(all->rows[w][0], Cell(Host()));
    EXPECT_EQ(all->rows[w][1], Cell(std::to_string(Port(w))));
    EXPECT_EQ(all->rows[w][2], Cell("t"));
    EXPECT_EQ(all->rows[w][3], Cell(std::to_string(Port(w))));
  }
  EXPECT_EQ(Value(*s,
                  "SELECT count(*) FROM connthrottle.run_on_all_nodes('SELECT 1') "
                  "WHERE success AND result = '1'"),
            "2");

  // What the session keeps: idle cached connections (one per worker by
  // default), each matching a worker backend and holding one slot. The
  // pool keeps as many as it opened (slow start: how many depends on the
  // machine's speed), until they idle out.
  for (int w = 0; w < 2; ++w) {
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(w, /*at_most=*/kTasks);
      continue;
    }
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(w) == 1; }))
        << "worker " << w + 1 << ": " << CoordinatorConnectionsOn(w);
    EXPECT_EQ(WorkerCounters(w), (NodeCounters{1, 1, 0, 0, 0}));
  }
}

// A task that enters COPY (out, in) fails with 0A000 and its connection is
// closed; the call returns and the other tasks are unaffected. (It used to
// spin at 100% CPU, deaf to cancel and termination.)
TEST_P(PgExecutorTest, TaskEnteringCopyFailsAndItsConnectionIsClosed) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  std::vector<std::string> hosts, sqls;
  std::vector<int> ports;
  const std::vector<TaskSpec> tasks = {
      {Host(), Port(0), "COPY (SELECT 1) TO STDOUT"},
      {Host(), Port(0), "SELECT 41 + 1"},
      {Host(), Port(1), "CREATE TEMP TABLE copy_in (a int); COPY copy_in FROM STDIN"},
      {Host(), Port(1), "COPY (SELECT g FROM generate_series(1, 10000000) g) TO STDOUT"},
  };
  for (const TaskSpec& t : tasks) {
    hosts.push_back(t.host);
    ports.push_back(t.port);
    sqls.push_back(t.sql);
  }
  AsyncQuery q(*s,
               "SELECT task, success, result, sqlstate, error FROM "
               "connthrottle.run_tasks($1::text[], $2::int[], $3::text[]) ORDER BY task",
               {TextArray(hosts), IntArray(ports), TextArray(sqls)});
  ASSERT_TRUE(q.WaitDone(std::chrono::seconds(60))) << "run_tasks did not return";
  ASSERT_TRUE(q.result().ok()) << q.result().status();
  const auto& rows = q.result()->rows;
  ASSERT_EQ(rows.size(), 4u);
  for (int i : {0, 2, 3}) {
    SCOPED_TRACE(i);
    EXPECT_EQ(rows[i][1], Cell("f"));
    EXPECT_EQ(rows[i][3], Cell("0A000"));
    EXPECT_THAT(rows[i][4].value_or(""), HasSubstr("is not supported in tasks"));
  }
  EXPECT_THAT(rows[0][4].value_or(""), HasSubstr("COPY TO STDOUT"));
  EXPECT_THAT(rows[2][4].value_or(""), HasSubstr("COPY FROM STDIN"));
  EXPECT_EQ(rows[1][1], Cell("t"));
  EXPECT_EQ(rows[1][2], Cell("42"));
  // The session is usable, and no worker backend is left in COPY.
  EXPECT_EQ(Value(*s, "SELECT 1"), "1");
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(i, " AND query LIKE '%COPY%' AND state <> 'idle'") == 0;
    })) << "worker "
        << i + 1 << " still runs a task's COPY";
  }
}

// Text comes back in the coordinator's encoding whatever the worker
// database's (client_encoding is set on every connection), and bytes that
// are not valid in it never become a datum.
TEST_P(PgExecutorTest, TaskTextComesBackInTheCoordinatorsEncoding) {
  // Databases of the same name on both sides: the executor connects to the
  // worker database named as the coordinator's current one.
  ASSERT_TRUE(wobs_[0]
                  ->Exec("CREATE DATABASE enc_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
                  .ok());
  ASSERT_TRUE(wobs_[0]
                  ->Exec("CREATE DATABASE enc_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' "
                         "LC_CTYPE 'C' TEMPLATE template0")
                  .ok());
  const Defer drop([this] {
    for (const char* db : {"enc_latin1", "enc_ascii"}) {
      (void)obs_->Exec(absl::StrCat("DROP DATABASE IF EXISTS ", db, " WITH (FORCE)"));
      if (wobs_[0] != nullptr) {
        (void)wobs_[0]->Exec(absl::StrCat("DROP DATABASE IF EXISTS ", db, " WITH (FORCE)"));
      }
    }
  });
  for (const char* db : {"enc_latin1", "enc_ascii"}) {
    ASSERT_TRUE(obs_->Exec(absl::StrCat("CREATE DATABASE ", db, " TEMPLATE template0")).ok());
  }
  const std::string task = absl::StrCat(
      "SELECT result, sqlstate, error FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
      Port(0), "], ARRAY[$1])");
  {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect("enc_latin1");
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->Exec("CREATE EXTENSION connthrottle").ok());
    // chr(233) is one byte, 0xE9, in the LATIN1 worker database: é.
    absl::StatusOr<QueryResult> r = (*c)->Query(task, {std::string("SELECT chr(233)")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows.at(0)[0], Cell("\xc3\xa9")) << "not converted to UTF8";
  }
  {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect("enc_ascii");
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->Exec("CREATE EXTENSION connthrottle").ok());
    // A SQL_ASCII database stores any bytes; asked for UTF8, the worker
    // itself refuses to send 0xFF, so the task fails and no invalid text
    // reaches the coordinator. (Without client_encoding the byte would come
    // back raw; the coordinator checks text with pg_verifymbstr as well.)
    absl::StatusOr<QueryResult> bad =
        (*c)->Query(task, {std::string("SELECT convert_from('\\xff'::bytea, 'SQL_ASCII')")});
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_EQ(bad->rows.at(0)[0], std::nullopt);
    EXPECT_EQ(bad->rows.at(0)[1], Cell("22021"));
    EXPECT_THAT(bad->rows.at(0)[2].value_or(""), HasSubstr("invalid byte sequence"));
    // The session goes on.
    absl::StatusOr<QueryResult> r = (*c)->Query(task, {std::string("SELECT 'ok'")});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows.at(0)[0], Cell("ok"));
  }
}

// raise_on_error: the first failed task raises its error with its SQLSTATE.
// distribute's target may be schema-qualified.
TEST_P(PgExecutorTest, StrictRunTasksAndQualifiedDistributeTarget) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  absl::Status strict = s->Exec(absl::StrCat(
      "SELECT sum(result::bigint) FROM connthrottle.run_tasks(ARRAY['127.0.0.1', '127.0.0.1'], "
      "ARRAY[",
      Port(0), ", ", Port(1), "], ARRAY['SELECT 1', 'SELECT 1/0'], raise_on_error => true)"));
  EXPECT_EQ(SqlState(strict), "22012") << strict;
  EXPECT_THAT(std::string(strict.message()), HasSubstr(Node(1)));
  EXPECT_EQ(Value(*s, absl::StrCat("SELECT sum(result::bigint) FROM connthrottle.run_tasks("
                                   "ARRAY['127.0.0.1', '127.0.0.1'], ARRAY[",
                                   Port(0), ", ", Port(1),
                                   "], ARRAY['SELECT 1', 'SELECT 2'], raise_on_error => true)")),
            "3");
  EXPECT_EQ(SqlState(s->Exec("SELECT * FROM connthrottle.run_on_all_nodes('SELECT 1/0', true)")),
            "22012");

  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(wobs_[w]->Exec("CREATE SCHEMA dist; CREATE TABLE dist.\"Qualified\"(id int)").ok());
  }
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP SCHEMA IF EXISTS dist CASCADE");
    }
  });
  EXPECT_EQ(Value(*s,
                  "SELECT sum(rows) FROM connthrottle.distribute("
                  "'SELECT g FROM generate_series(1, 100) g', 'dist.\"Qualified\"')"),
            "100");
  int landed = 0;
  for (int w = 0; w < 2; ++w) {
    landed += std::stoi(Value(*wobs_[w], "SELECT count(*) FROM dist.\"Qualified\""));
  }
  EXPECT_EQ(landed, 100);
  EXPECT_EQ(SqlState(s->Exec("SELECT * FROM connthrottle.distribute('SELECT 1', 'a.b.c.d')")),
            "42601");
}

}  // namespace
}  // namespace connthrottle::cluster
