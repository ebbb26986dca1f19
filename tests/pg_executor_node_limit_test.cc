// max_shared_pool_size is a limit per worker node (host, port) across every
// database of the coordinator (issue 28, part A): sessions of two databases
// together never have more than the limit of connections on a worker,
// sampled from the worker's own pg_stat_activity, on both transports. With
// max_shared_pool_size_per_database on, each database also stays within its
// own bound below the node's.

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

// The second database, made on the coordinator (with the extension) and on
// both workers (tasks connect to the database of the same name).
constexpr char kSecondDatabase[] = "node_limit_second";

class PgNodeLimitTest : public PgExecutorTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(PgExecutorTest::SetUp());
    ASSERT_NO_FATAL_FAILURE(MakeDatabase(*obs_, /*with_extension=*/true));
    for (auto& w : wobs_) ASSERT_NO_FATAL_FAILURE(MakeDatabase(*w, /*with_extension=*/false));
  }

  // Connects to the coordinator's database `database`.
  static std::unique_ptr<PgClient> ConnectTo(const std::string& database) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = coordinator_->Connect(database);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

 private:
  void MakeDatabase(PgClient& server, bool with_extension) {
    if (Value(server, "SELECT count(*) FROM pg_database WHERE datname = $1",
              {std::string(kSecondDatabase)}) == "0") {
      ASSERT_TRUE(server.Exec(absl::StrCat("CREATE DATABASE ", kSecondDatabase)).ok());
    }
    if (!with_extension) return;
    std::unique_ptr<PgClient> c = ConnectTo(kSecondDatabase);
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Exec("CREATE EXTENSION IF NOT EXISTS connthrottle").ok());
  }
};

// A slot taken in one database counts against the node for every other:
// with the node at its limit through sessions of `postgres`, a session of the
// second database gets no slot (optional acquire, then a waiting one that
// times out), and the first release lets its waiting acquire through.
TEST_P(PgNodeLimitTest, DatabasesOfACoordinatorShareTheNodesSlots) {
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  std::unique_ptr<PgClient> first = Connect();
  std::unique_ptr<PgClient> second = ConnectTo(kSecondDatabase);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  const std::string node = absl::StrCat("'", Host(), "', ", Port(0));
  ASSERT_EQ(Value(*first, absl::StrCat("SELECT connthrottle.try_acquire(", node, ")")), "t");
  ASSERT_EQ(Value(*first, absl::StrCat("SELECT connthrottle.try_acquire(", node, ")")), "t");
  EXPECT_EQ(Value(*second, absl::StrCat("SELECT connthrottle.try_acquire(", node, ")")), "f");
  absl::Status timed_out =
      second->Exec(absl::StrCat("SELECT connthrottle.acquire(", node, ", timeout => '50ms')"));
  EXPECT_EQ(SqlState(timed_out), "53300") << timed_out;
  EXPECT_NE(timed_out.message().find(Node(0)), std::string::npos) << timed_out;
  // One row for the node, both databases' slots in it.
  EXPECT_EQ(Rows(*obs_, kNodes), absl::StrCat("(127.0.0.1,", Port(0), ",2,0,0,0)"));

  // A waiting acquire of the second database, woken by a release in the first.
  std::atomic<bool> acquired{false};
  absl::Status waited;
  std::thread waiter([&] {
    waited =
        second->Exec(absl::StrCat("SELECT connthrottle.acquire(", node, ", timeout => '60s')"));
    acquired = true;
  });
  // (The thread is joined whatever happens: no ASSERT before the join.)
  EXPECT_TRUE(PollUntil([&] { return WorkerCounters(0).waiters == 1; }));
  EXPECT_FALSE(acquired.load()) << "the second database's acquire did not wait";
  EXPECT_TRUE(first->Exec(absl::StrCat("SELECT connthrottle.release(", node, ")")).ok());
  waiter.join();
  EXPECT_TRUE(waited.ok()) << waited;
  EXPECT_EQ(WorkerCounters(0).connections, 2);
  EXPECT_EQ(Value(*obs_, "SELECT count(*) FROM connthrottle.holders"), "2");
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
}

// Sessions of two databases run fan-out work on both workers at once, each
// database alone enough to fill the limit: the workers' own pg_stat_activity
// never shows more than the limit of coordinator connections, counting both
// databases, while both databases have connections there together.
TEST_P(PgNodeLimitTest, TwoDatabasesNeverExceedTheNodeLimit) {
  constexpr int kLimit = 3;
  constexpr int kSessionsPerDatabase = 3;
  constexpr int kTasks = 12;
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", std::to_string(kLimit)));
  const std::vector<std::string> databases = {"postgres", kSecondDatabase};
  std::vector<std::unique_ptr<PgClient>> clients;
  for (const std::string& db : databases) {
    for (int i = 0; i < kSessionsPerDatabase; ++i) {
      clients.push_back(ConnectTo(db));
      ASSERT_NE(clients.back(), nullptr);
      ASSERT_TRUE(clients.back()->Exec("SET connthrottle.connection_wait_timeout = '30s'").ok());
    }
  }
  std::vector<std::unique_ptr<PgClient>> samplers;
  for (int w = 0; w < 2; ++w) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[w]->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    samplers.push_back(*std::move(c));
  }
  const std::string sample =
      absl::StrCat(kCoordinatorConnections, " AND datname = 'postgres') AS first, (",
                   kCoordinatorConnections, " AND datname = '", kSecondDatabase, "') AS second");
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < kTasks; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(0.01)"});

  std::atomic<bool> stop{false};
  std::atomic<int> peak[2] = {0, 0};
  std::atomic<int> samples[2] = {0, 0};
  std::atomic<int> both_at_once[2] = {0, 0};  // samples with both databases connected
  std::atomic<bool> sample_failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      while (!stop.load()) {
        absl::StatusOr<QueryResult> r = samplers[w]->Query(absl::StrCat("SELECT (", sample));
        if (!r.ok() || r->rows.size() != 1) {
          sample_failed = true;
          return;
        }
        const int first = ToInt(r->rows[0][0]), second = ToInt(r->rows[0][1]);
        peak[w] = std::max(peak[w].load(), first + second);
        if (first > 0 && second > 0) ++both_at_once[w];
        ++samples[w];
      }
    });
  }

  // Until every session has 3 executions, the samplers 100 samples each and
  // both databases were seen on each worker together.
  const SessionRuns runs = RunSessionsUntil(clients, tasks, 3, [&] {
    return samples[0].load() < 100 || samples[1].load() < 100 || both_at_once[0].load() == 0 ||
           both_at_once[1].load() == 0;
  });
  const std::vector<std::string>& failures = runs.failures;
  const std::vector<int>& executions = runs.executions;
  stop = true;
  for (std::thread& t : threads) t.join();

  for (size_t i = 0; i < clients.size(); ++i) {
    EXPECT_EQ(failures[i], "") << "session " << i << " of " << databases[i / kSessionsPerDatabase];
    EXPECT_GE(executions[i], 3) << "session " << i;
  }
  EXPECT_FALSE(sample_failed.load());
  Report("6 sessions in 2 databases x run_tasks(12 x pg_sleep(0.01)) over 2 workers, limit 3",
         absl::StrCat(absl::StrJoin(executions, "/"), " executions"));
  for (int w = 0; w < 2; ++w) {
    Report(absl::StrCat("worker", w + 1, ": peak coordinator backends, both databases"),
           absl::StrCat(peak[w].load(), " in ", samples[w].load(), " samples, ",
                        both_at_once[w].load(), " with both databases connected"));
    EXPECT_LE(peak[w].load(), kLimit) << "worker " << w + 1 << " saw more coordinator backends";
    EXPECT_GT(both_at_once[w].load(), 0) << "the databases never overlapped on worker " << w + 1;
    EXPECT_GE(samples[w].load(), 100);
  }
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
  clients.clear();
}

// The per-database bound through the SQL slots: a database at its bound is
// refused and waits while the node has room; another database still gets the
// node's slots; the node and each database have their rows in nodes and
// holders; a release in the same database wakes the waiter; 0 is refused.
TEST_P(PgNodeLimitTest, PerDatabaseBoundHoldsBelowTheNodesLimit) {
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", "3"));
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size_per_database", "2"));
  absl::Status zero =
      obs_->Exec("ALTER SYSTEM SET connthrottle.max_shared_pool_size_per_database = 0");
  EXPECT_EQ(SqlState(zero), "22023") << zero;
  std::unique_ptr<PgClient> first = Connect();
  std::unique_ptr<PgClient> other = Connect();
  std::unique_ptr<PgClient> second = ConnectTo(kSecondDatabase);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(other, nullptr);
  ASSERT_NE(second, nullptr);
  const std::string node = absl::StrCat("'", Host(), "', ", Port(0));
  const std::string try_acquire = absl::StrCat("SELECT connthrottle.try_acquire(", node, ")");
  ASSERT_EQ(Value(*first, try_acquire), "t");
  ASSERT_EQ(Value(*first, try_acquire), "t");
  // postgres is at its bound of 2; the node has a third slot.
  EXPECT_EQ(Value(*first, try_acquire), "f");
  absl::Status timed_out =
      other->Exec(absl::StrCat("SELECT connthrottle.acquire(", node, ", timeout => '50ms')"));
  EXPECT_EQ(SqlState(timed_out), "53300") << timed_out;
  EXPECT_NE(timed_out.message().find("per database"), std::string::npos) << timed_out;
  // The second database takes the node's third slot, and then the node is full.
  EXPECT_EQ(Value(*second, try_acquire), "t");
  EXPECT_EQ(Value(*second, try_acquire), "f");
  EXPECT_EQ(Rows(*obs_,
                 "SELECT coalesce(database::text, '-'), connections FROM connthrottle.nodes "
                 "ORDER BY database NULLS FIRST"),
            absl::StrCat("(-,3) (", kSecondDatabase, ",1) (postgres,2)"));
  EXPECT_EQ(Value(*obs_,
                  "SELECT string_agg(coalesce(database::text, '-') || ':' || connections, ',' "
                  "ORDER BY database NULLS FIRST, connections) FROM connthrottle.holders"),
            absl::StrCat("-:1,-:2,", kSecondDatabase, ":1,postgres:2"));

  // A waiter of postgres, held up by its database's bound, woken by a release
  // in postgres (the second database's release would not make room for it).
  std::atomic<bool> acquired{false};
  absl::Status waited;
  std::thread waiter([&] {
    waited = other->Exec(absl::StrCat("SELECT connthrottle.acquire(", node, ", timeout => '60s')"));
    acquired = true;
  });
  EXPECT_TRUE(PollUntil([&] {
    return Value(*obs_, "SELECT waiters FROM connthrottle.nodes WHERE database = 'postgres'") ==
           "1";
  }));
  EXPECT_TRUE(second->Exec(absl::StrCat("SELECT connthrottle.release(", node, ")")).ok());
  // The node has a free slot now, but postgres is still at its bound.
  EXPECT_EQ(Value(*obs_, "SELECT connections FROM connthrottle.nodes WHERE database IS NULL"), "2");
  EXPECT_FALSE(acquired.load());
  EXPECT_TRUE(first->Exec(absl::StrCat("SELECT connthrottle.release(", node, ")")).ok());
  waiter.join();
  EXPECT_TRUE(waited.ok()) << waited;
  EXPECT_EQ(Value(*obs_, "SELECT connections FROM connthrottle.nodes WHERE database IS NULL"), "2");
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
}

// Sessions of two databases run fan-out work under a node limit of 4 and a
// per-database bound of 2, each database enough to fill the node: each
// worker's own pg_stat_activity never shows more than 2 coordinator
// connections of one database, nor more than 4 in all.
TEST_P(PgNodeLimitTest, EachDatabaseStaysWithinItsBound) {
  constexpr int kLimit = 4;
  constexpr int kPerDatabase = 2;
  constexpr int kSessionsPerDatabase = 3;
  ASSERT_TRUE(SetSetting("connthrottle.max_shared_pool_size", std::to_string(kLimit)));
  ASSERT_TRUE(
      SetSetting("connthrottle.max_shared_pool_size_per_database", std::to_string(kPerDatabase)));
  const std::vector<std::string> databases = {"postgres", kSecondDatabase};
  std::vector<std::unique_ptr<PgClient>> clients;
  for (const std::string& db : databases) {
    for (int i = 0; i < kSessionsPerDatabase; ++i) {
      clients.push_back(ConnectTo(db));
      ASSERT_NE(clients.back(), nullptr);
      ASSERT_TRUE(clients.back()->Exec("SET connthrottle.connection_wait_timeout = '30s'").ok());
    }
  }
  std::vector<std::unique_ptr<PgClient>> samplers;
  for (int w = 0; w < 2; ++w) {
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[w]->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    samplers.push_back(*std::move(c));
  }
  const std::string sample =
      absl::StrCat(kCoordinatorConnections, " AND datname = 'postgres') AS first, (",
                   kCoordinatorConnections, " AND datname = '", kSecondDatabase, "') AS second");
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < 12; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(0.01)"});

  std::atomic<bool> stop{false};
  std::atomic<int> peak[2] = {0, 0}, peak_database[2] = {0, 0};
  std::atomic<int> samples[2] = {0, 0};
  std::atomic<int> both_at_once[2] = {0, 0};
  std::atomic<bool> sample_failed{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      while (!stop.load()) {
        absl::StatusOr<QueryResult> r = samplers[w]->Query(absl::StrCat("SELECT (", sample));
        if (!r.ok() || r->rows.size() != 1) {
          sample_failed = true;
          return;
        }
        const int first = ToInt(r->rows[0][0]), second = ToInt(r->rows[0][1]);
        peak[w] = std::max(peak[w].load(), first + second);
        peak_database[w] = std::max({peak_database[w].load(), first, second});
        if (first > 0 && second > 0) ++both_at_once[w];
        ++samples[w];
      }
    });
  }
  const SessionRuns runs = RunSessionsUntil(clients, tasks, 3, [&] {
    return samples[0].load() < 100 || samples[1].load() < 100 || both_at_once[0].load() == 0 ||
           both_at_once[1].load() == 0;
  });
  stop = true;
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < clients.size(); ++i) {
    EXPECT_EQ(runs.failures[i], "") << "session " << i;
    EXPECT_GE(runs.executions[i], 3) << "session " << i;
  }
  EXPECT_FALSE(sample_failed.load());
  for (int w = 0; w < 2; ++w) {
    Report(absl::StrCat("worker", w + 1, ": peak coordinator backends, all / one database"),
           absl::StrCat(peak[w].load(), " / ", peak_database[w].load(), " in ", samples[w].load(),
                        " samples (limit ", kLimit, ", per database ", kPerDatabase, ")"));
    EXPECT_LE(peak[w].load(), kLimit) << "worker " << w + 1;
    EXPECT_LE(peak_database[w].load(), kPerDatabase) << "worker " << w + 1;
    EXPECT_GT(both_at_once[w].load(), 0) << "the databases never overlapped on worker " << w + 1;
  }
  EXPECT_TRUE(obs_->Exec("SELECT connthrottle.audit()").ok());
  clients.clear();
}

INSTANTIATE_TEST_SUITE_P(Transports, PgNodeLimitTest, ::testing::Values("direct", "shared_pool"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace connthrottle::cluster
