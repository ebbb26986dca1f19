// distribute: every row lands on the right node (values COPY must escape
// included), reservations are taken up front, all or nothing, and a cancel
// ends a distribute whose COPY waits for a locked table.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST_P(PgExecutorTest, DistributeLandsEveryRowOnTheRightNode) {
  for (int w = 0; w < 2; ++w) {
    ASSERT_TRUE(wobs_[w]
                    ->Exec("CREATE TABLE items(id int, name text); "
                           "CREATE TABLE items_again(id int, name text); "
                           "CREATE TABLE items_special(id int, name text)")
                    .ok());
  }
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS items, items_again, items_special");
    }
  });

  auto distribute = [&](PgClient& c, const std::string& query,
                        const std::string& table) -> absl::StatusOr<std::map<int, int64_t>> {
    absl::StatusOr<QueryResult> r = c.Query(
        "SELECT host, port, rows, success, error FROM connthrottle.distribute($1::text, $2::text)",
        {query, table});
    if (!r.ok()) return r.status();
    std::map<int, int64_t> per_port;
    for (const auto& row : r->rows) {
      EXPECT_EQ(row[0], Cell(Host()));
      EXPECT_EQ(row[3], Cell("t")) << row[4].value_or("");
      per_port[ToInt(row[1])] += std::stoll(row[2].value_or("0"));
    }
    return per_port;
  };
  auto ids_on = [&](int w, const std::string& table) {
    std::vector<int> ids;
    absl::StatusOr<QueryResult> r = wobs_[w]->Query(absl::StrCat("SELECT id FROM ", table));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) {
      for (const auto& row : r->rows) ids.push_back(ToInt(row[0]));
    }
    std::sort(ids.begin(), ids.end());
    return ids;
  };

  {
    std::unique_ptr<PgClient> d = Connect();
    ASSERT_NE(d, nullptr);
    const std::string query = "SELECT g, 'n' || g FROM generate_series(1,1000) g";
    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::map<int, int64_t>> sent = distribute(*d, query, "items");
    const Clock::duration took = Clock::now() - start;
    ASSERT_TRUE(sent.ok()) << sent.status();
    ASSERT_EQ(sent->size(), 2u);
    std::vector<int> all;
    int64_t sum = 0;
    for (int w = 0; w < 2; ++w) {
      const std::vector<int> ids = ids_on(w, "items");
      EXPECT_EQ((*sent)[Port(w)], static_cast<int64_t>(ids.size())) << "worker " << w + 1;
      EXPECT_GT(ids.size(), 200u) << "worker " << w + 1 << " got too few rows to be hashed";
      sum += (*sent)[Port(w)];
      all.insert(all.end(), ids.begin(), ids.end());
    }
    EXPECT_EQ(sum, 1000);
    std::sort(all.begin(), all.end());
    std::vector<int> want(1000);
    for (int i = 0; i < 1000; ++i) want[i] = i + 1;
    EXPECT_EQ(all, want) << "some id is missing or duplicated";
    Report("distribute 1000 rows", absl::StrCat(Ms(took), " ms; worker1 ", (*sent)[Port(0)],
                                                ", worker2 ", (*sent)[Port(1)]));
    // Every row's node is a function of its first column: a second
    // distribution of the same rows lands each id on the same node.
    ASSERT_TRUE(distribute(*d, query, "items_again").ok());
    for (int w = 0; w < 2; ++w) EXPECT_EQ(ids_on(w, "items_again"), ids_on(w, "items"));
    EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM items WHERE name <> 'n' || id"), "0");
    EXPECT_EQ(Value(*wobs_[1], "SELECT count(*) FROM items WHERE name <> 'n' || id"), "0");

    // Values that COPY's text format must escape.
    const std::string special =
        "SELECT * FROM (VALUES (1, E'tab\\there'), (2, E'new\\nline'), (3, E'back\\\\slash'), "
        "(4, NULL), (5, E'cr\\rreturn'), (6, '\\N'), (7, ''), (8, 'caf\u00e9 \u00fc'), "
        "(NULL::int, 'null id'), (9, '\\t literal'), (10, E'mixed\\t\\\\\\n\\\\N.')) v(id, name)";
    absl::StatusOr<std::map<int, int64_t>> sent_special = distribute(*d, special, "items_special");
    ASSERT_TRUE(sent_special.ok()) << sent_special.status();
    std::vector<std::pair<Cell, Cell>> got;
    for (int w = 0; w < 2; ++w) {
      absl::StatusOr<QueryResult> r = wobs_[w]->Query("SELECT id, name FROM items_special");
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(static_cast<int64_t>(r->rows.size()), (*sent_special)[Port(w)]);
      for (const auto& row : r->rows) got.emplace_back(row[0], row[1]);
    }
    std::sort(got.begin(), got.end(), [](const auto& a, const auto& b) {
      return (a.first.has_value() ? std::stoi(*a.first) : -1) <
             (b.first.has_value() ? std::stoi(*b.first) : -1);
    });
    const std::vector<std::pair<Cell, Cell>> want_special = {{std::nullopt, "null id"},
                                                             {"1", "tab\there"},
                                                             {"2", "new\nline"},
                                                             {"3", "back\\slash"},
                                                             {"4", std::nullopt},
                                                             {"5", "cr\rreturn"},
                                                             {"6", "\\N"},
                                                             {"7", ""},
                                                             {"8", "caf\u00e9 \u00fc"},
                                                             {"9", "\\t literal"},
                                                             {"10", "mixed\t\\\n\\N."}};
    EXPECT_EQ(got, want_special);
  }
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; })) << Rows(*obs_, kNodes);

  // Reservations are taken up front, all or nothing, in node order: with the
  // last node's only slot held elsewhere, distribute fails after
  // connection_wait_timeout, naming that node, and gives back the first node's
  // reservation.
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "1"));
  std::unique_ptr<PgClient> holder = Connect();
  std::unique_ptr<PgClient> d = Connect();
  ASSERT_NE(holder, nullptr);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(
      Value(*holder, "SELECT connthrottle.try_acquire('127.0.0.1', $1)", {std::to_string(Port(1))}),
      "t");
  ASSERT_TRUE(d->Exec("SET connthrottle.connection_wait_timeout = '200ms'").ok());
  const std::string before_rows = Value(*wobs_[0], "SELECT count(*) FROM items");
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::map<int, int64_t>> refused =
      distribute(*d, "SELECT g, 'x' FROM generate_series(1, 10) g", "items");
  const Clock::duration took = Clock::now() - start;
  Report("distribute with the last node's slot held, connection_wait_timeout 200ms: error after",
         absl::StrCat(Ms(took), " ms"));
  ASSERT_FALSE(refused.ok()) << "distribute succeeded past a held slot";
  EXPECT_EQ(SqlState(refused.status()), "53300") << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(Node(1)));
  EXPECT_GE(took, 200ms);  // it waited its timeout (53300 says why it ended)
  EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM items"), before_rows);
  // On the shared pool the first node's connection went back to the pool,
  // idle, and closes after its idle timeout (kPoolIdleTimeout); on the
  // direct transport its reservation is given back at once.
  const std::string only_held = absl::StrCat("(127.0.0.1,", Port(1), ",1,0,0,0)");
  EXPECT_TRUE(PollUntil([&] { return Rows(*obs_, kNodes) == only_held; }))
      << "only the held slot should remain: " << Rows(*obs_, kNodes);
  EXPECT_EQ(Value(*d, "SELECT count(*) FROM connthrottle.reservations()"), "0");
  absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
  EXPECT_TRUE(audit.ok()) << audit;
  EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == 0; }));
  EXPECT_EQ(CoordinatorConnectionsOn(1), 0);
  EXPECT_EQ(Value(*holder, "SELECT connthrottle.release_all()"), "1");
}

// distribute waits on the workers without blocking: with the target table
// locked on a worker its COPY waits, and a query cancel still ends the call
// (the workers' COPY is cancelled, every slot given back). It used to ignore
// cancel and statement_timeout until the lock went away.
TEST_P(PgExecutorTest, CancelEndsADistributeWaitingForALockedTable) {
  for (int w = 0; w < 2; ++w) ASSERT_TRUE(wobs_[w]->Exec("CREATE TABLE locked_t(a int)").ok());
  absl::StatusOr<std::unique_ptr<PgClient>> locker = workers_[0]->Connect();
  ASSERT_TRUE(locker.ok()) << locker.status();
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS locked_t");
    }
  });
  ASSERT_TRUE((*locker)->Exec("BEGIN; LOCK TABLE locked_t").ok());
  std::unique_ptr<PgClient> d = Connect();
  ASSERT_NE(d, nullptr);
  const std::string pid = Value(*d, "SELECT pg_backend_pid()");
  AsyncQuery q(*d,
               "SELECT sum(rows) FROM connthrottle.distribute("
               "'SELECT g FROM generate_series(1, 1000) g', 'locked_t')");
  // The coordinator's COPY waits for the lock on worker 1.
  ASSERT_TRUE(PollUntil([&] {
    return CoordinatorConnectionsOn(0, " AND wait_event_type = 'Lock'") == 1;
  })) << "the COPY did not wait for the lock";
  const Clock::time_point cancelled = Clock::now();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_cancel_backend(", pid, ")")), "t");
  ASSERT_TRUE(q.WaitDone(std::chrono::seconds(20))) << "distribute ignored the cancel";
  Report("cancel -> distribute (COPY waiting for a lock) returned",
         absl::StrCat(Ms(q.ended() - cancelled), " ms"));
  EXPECT_EQ(SqlState(q.result().status()), "57014") << q.result().status();
  // Nothing is left waiting on the worker, and the lock holder can finish.
  EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == 0; }));
  ASSERT_TRUE((*locker)->Exec("COMMIT").ok());
  EXPECT_EQ(Value(*wobs_[0], "SELECT count(*) FROM locked_t"), "0");
  EXPECT_EQ(Value(*d, "SELECT 1"), "1");
}

}  // namespace
}  // namespace connthrottle::cluster
