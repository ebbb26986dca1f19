// When a run is interrupted or a worker fails: a cancelled run_tasks cancels
// the remote queries, a terminated coordinator session gives back its
// connections, and a worker that is down gives a clear error and leaks
// nothing.

#include <chrono>
#include <fstream>
#include <memory>
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
using namespace std::chrono_literals;

TEST_P(PgExecutorTest, CancelRunTasksCancelsRemoteQueries) {
  std::unique_ptr<PgClient> c = Connect();
  ASSERT_NE(c, nullptr);
  const std::string active_sleeps = " AND state = 'active' AND query LIKE 'SELECT pg_sleep(600)%'";
  auto cancels_logged = [](int w) {
    std::ifstream in(workers_[w]->log_file());
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      if (line.find("canceling statement due to user request") != std::string::npos) ++n;
    }
    return n;
  };
  const int logged_before[2] = {cancels_logged(0), cancels_logged(1)};
  std::vector<TaskSpec> tasks;
  // Only the cancel can end these within the test.
  for (int i = 0; i < 4; ++i) tasks.push_back({Host(), Port(i % 2), "SELECT pg_sleep(600)"});
  {
    AsyncQuery run(*c, "SELECT * FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
                   RunTasksParams(tasks));
    ASSERT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(0, active_sleeps) == 2 &&
             CoordinatorConnectionsOn(1, active_sleeps) == 2;
    })) << "the workers never ran the sleeps: "
        << CoordinatorConnectionsOn(0, active_sleeps) << ", "
        << CoordinatorConnectionsOn(1, active_sleeps);
    ASSERT_FALSE(run.done());
    const Clock::time_point start = Clock::now();
    ASSERT_TRUE(c->Cancel().ok());
    ASSERT_TRUE(run.WaitDone(120s)) << "the cancelled run_tasks did not return";
    Report("cancel -> run_tasks error", absl::StrCat(Ms(run.ended() - start), " ms"));
    ASSERT_FALSE(run.result().ok()) << "run_tasks was not cancelled";
    EXPECT_EQ(SqlState(run.result().status()), "57014") << run.result().status();
    EXPECT_THAT(std::string(run.result().status().message()),
                HasSubstr("canceling statement due to user request"));
    EXPECT_TRUE(PollUntil(
        [&] {
          return CoordinatorConnectionsOn(0, active_sleeps) == 0 &&
                 CoordinatorConnectionsOn(1, active_sleeps) == 0;
        },
        120s))
        << "the remote sleeps were not cancelled";
    Report("cancel -> no pg_sleep left on the workers",
           absl::StrCat(Ms(Clock::now() - start), " ms"));
  }
  // PQcancel reached the workers: each logged its statements' cancel (a
  // closed socket alone would not stop pg_sleep).
  EXPECT_GE(cancels_logged(0) - logged_before[0], 2);
  EXPECT_GE(cancels_logged(1) - logged_before[1], 2);
  // No busy slot is left: what remains are idle connections, each a worker backend.
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE(absl::StrCat("worker ", w + 1));
    EXPECT_TRUE(PollUntil([&] {
      return CoordinatorConnectionsOn(w) == WorkerCounters(w).connections;
    })) << CoordinatorConnectionsOn(w)
        << " backends vs " << WorkerCounters(w);
    EXPECT_EQ(CoordinatorConnectionsOn(w, " AND state <> 'idle'"), 0);
    const NodeCounters n = WorkerCounters(w);
    // The session caches one; the pool keeps (cancelled, not closed) the
    // two its sleeps ran on, until they idle out.
    EXPECT_LE(n.connections, OnSharedPool() ? 2 : 1);
    EXPECT_EQ(n.waiters, 0);
    EXPECT_EQ(n.reserved, 0);
  }
  absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
  EXPECT_TRUE(audit.ok()) << audit;
  // The session carries on.
  absl::StatusOr<std::vector<TaskRow>> again =
      RunTasks(*c, {{Host(), Port(0), "SELECT 1"}, {Host(), Port(1), "SELECT 2"}});
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), 2u);
  EXPECT_TRUE((*again)[0].success && (*again)[1].success);
}

TEST_P(PgExecutorTest, TerminatingTheCoordinatorSessionGivesBackItsConnections) {
  std::unique_ptr<PgClient> t = Connect();
  ASSERT_NE(t, nullptr);
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < 8; ++i) tasks.push_back({Host(), Port(i % 2), absl::StrCat("SELECT ", i)});
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(*t, tasks);
  ASSERT_TRUE(rows.ok()) << rows.status();
  for (const TaskRow& r : *rows) EXPECT_TRUE(r.success) << r;
  for (int w = 0; w < 2; ++w) {
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(w, /*at_most=*/4);
      continue;
    }
    EXPECT_EQ(WorkerCounters(w), (NodeCounters{1, 1, 0, 0, 0})) << "one cached connection";
    EXPECT_EQ(CoordinatorConnectionsOn(w), 1);
  }
  const std::string pid = std::to_string(t->BackendPid());
  const Clock::time_point start = Clock::now();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", pid, ")")), "t");
  EXPECT_TRUE(PollUntil([&] { return Value(*obs_, kCountNodes) == "0"; }, 5s))
      << Rows(*obs_, kNodes);
  const Clock::duration slots_back = Clock::now() - start;
  for (int w = 0; w < 2; ++w) {
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(w) == 0; }, 5s))
        << "worker " << w + 1;
  }
  Report("pg_terminate_backend -> slots given back / worker backends gone",
         absl::StrCat(Ms(slots_back), " ms / ", Ms(Clock::now() - start), " ms"));
  EXPECT_FALSE(t->Exec("SELECT 1").ok()) << "the terminated session still answers";
}

TEST_P(PgExecutorTest, WorkerDownGivesAClearErrorAndNoLeak) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  std::vector<TaskSpec> tasks;
  for (int i = 0; i < 6; ++i) tasks.push_back({Host(), Port(i % 2), absl::StrCat("SELECT ", i)});
  // A first execution leaves a cached connection to each worker.
  absl::StatusOr<std::vector<TaskRow>> warm = RunTasks(*s, tasks);
  ASSERT_TRUE(warm.ok()) << warm.status();
  if (OnSharedPool()) {
    ASSERT_NO_FATAL_FAILURE(ExpectIdleConnectionsOn(1, /*at_most=*/3));
  } else {
    ASSERT_EQ(WorkerCounters(1), (NodeCounters{1, 1, 0, 0, 0}));
  }

  // Restart worker 2 whatever happens, for the cases that follow.
  const Defer restart([this] {
    if (!workers_[1]->running()) {
      absl::Status st = workers_[1]->StartAgain();
      EXPECT_TRUE(st.ok()) << st;
    }
    absl::StatusOr<std::unique_ptr<PgClient>> c = workers_[1]->Connect();
    EXPECT_TRUE(c.ok()) << c.status();
    wobs_[1] = c.ok() ? *std::move(c) : nullptr;
  });
  wobs_[1].reset();
  ASSERT_TRUE(workers_[1]->Stop().ok());

  // `cached` is worker 1's cached connections across the live sessions afterwards.
  auto check_down = [&](PgClient& c, const std::string& label, int cached) {
    SCOPED_TRACE(label);
    const Clock::time_point start = Clock::now();
    absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(c, tasks);
    const Clock::duration took = Clock::now() - start;
    Report(absl::StrCat("run_tasks with worker 2 down (", label, ")"),
           absl::StrCat(Ms(took), " ms"));
    EXPECT_LT(took, 30s) << "waited for node_connection_timeout (30s) instead of failing at once";
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), tasks.size());
    for (const TaskRow& r : *rows) {
      SCOPED_TRACE(::testing::PrintToString(r));
      if (r.port == Port(0)) {
        EXPECT_TRUE(r.success);
        EXPECT_EQ(r.result, Cell(std::to_string(r.task - 1)));
      } else {
        EXPECT_FALSE(r.success);
        EXPECT_EQ(r.result, std::nullopt);
        ASSERT_TRUE(r.error.has_value());
        EXPECT_THAT(*r.error, HasSubstr(Node(1)));
        EXPECT_THAT(*r.error, HasSubstr("refused"));
        EXPECT_EQ(r.sqlstate, Cell("08001"));
      }
    }
    // Exact counters: worker 1's cached connections (the pool's: as many
    // as it keeps), nothing for worker 2.
    if (OnSharedPool()) {
      ExpectIdleConnectionsOn(0, /*at_most=*/static_cast<int>(tasks.size()));
    } else {
      EXPECT_EQ(WorkerCounters(0), (NodeCounters{1, cached, 0, 0, 0}));
      EXPECT_EQ(CoordinatorConnectionsOn(0), cached);
    }
    EXPECT_EQ(WorkerCounters(1), NodeCounters{});
    absl::Status audit = obs_->Exec("SELECT connthrottle.audit()");
    EXPECT_TRUE(audit.ok()) << audit;
  };
  // The session whose cached connection to worker 2 died with it, and a fresh one.
  check_down(*s, "session with a dead cached connection", 1);
  {
    std::unique_ptr<PgClient> fresh = Connect();
    ASSERT_NE(fresh, nullptr);
    check_down(*fresh, "fresh session", 2);
  }
  if (OnSharedPool()) {
    ExpectIdleConnectionsOn(0, /*at_most=*/static_cast<int>(tasks.size()));
  } else {
    EXPECT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == 1; }));
    EXPECT_TRUE(PollUntil([&] {
      return WorkerCounters(0) == NodeCounters{1, 1, 0, 0, 0};
    })) << WorkerCounters(0);
  }

  // Back up: the same session reaches it again.
  ASSERT_TRUE(workers_[1]->StartAgain().ok());
  absl::StatusOr<std::vector<TaskRow>> back = RunTasks(*s, tasks);
  ASSERT_TRUE(back.ok()) << back.status();
  for (const TaskRow& r : *back) EXPECT_TRUE(r.success) << r;
  if (OnSharedPool()) {
    absl::StatusOr<std::unique_ptr<PgClient>> observer = workers_[1]->Connect();
    ASSERT_TRUE(observer.ok()) << observer.status();
    wobs_[1] = *std::move(observer);
    ExpectIdleConnectionsOn(1, /*at_most=*/static_cast<int>(tasks.size()));
  } else {
    EXPECT_EQ(WorkerCounters(1), (NodeCounters{1, 1, 0, 0, 0}));
  }
}

}  // namespace
}  // namespace connthrottle::cluster
