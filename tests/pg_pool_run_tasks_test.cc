// run_tasks on the shared pool (PgPoolTest): the same results as the direct
// transport; many sessions sharing a pool smaller than they are; cancel,
// statement_timeout and a terminated session; a worker backend killed
// mid-task; a restarted worker; local failover; a session that stops reading
// in the middle of a large result; and the communicator terminated (57P01),
// also mid-response, and killed (the postmaster restarts the server).
//
// Every case of the suite is in this file: the one that kills the
// communicator must run last, and only within one file is the order in which
// gtest runs a suite's cases the order they are written.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_pool_fixture.h"
#include "tests/testing/pg_test_support.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST_F(PgPoolTest, GivesTheSameRowsAsTheDirectTransport) {
  const std::vector<TaskSpec> tasks = {
      On(0, "SELECT 41 + 1"),
      On(1, "SELECT NULL::text"),
      On(0, "SELECT g FROM generate_series(1, 5) g"),
      On(1, "SELECT 1/0"),
      On(0, "DO $$ BEGIN END $$"),
      On(1, "SELECT repeat('x', 5000)"),
  };
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_EQ(Value(*session, "SHOW connthrottle.executor_transport"), "shared_pool");
  // Rounds 1 and 2 run on connections that earlier rounds used (and reset).
  constexpr int kRounds = 3;
  std::vector<std::vector<TaskRow>> rounds;
  for (int round = 0; round < kRounds; ++round) {
    const int64_t run_before = Stat("tasks_run");
    absl::StatusOr<std::vector<TaskRow>> pooled = RunTasks(*session, tasks);
    ASSERT_TRUE(pooled.ok()) << pooled.status();
    ASSERT_EQ(pooled->size(), tasks.size());
    EXPECT_TRUE(Grew("tasks_run", run_before, 6)) << "the pool did not run the tasks";
    rounds.push_back(*std::move(pooled));
  }
  ASSERT_TRUE(session->Exec("SET connthrottle.executor_transport = direct").ok());
  absl::StatusOr<std::vector<TaskRow>> direct = RunTasks(*session, tasks);
  ASSERT_TRUE(direct.ok()) << direct.status();
  for (int round = 0; round < kRounds; ++round) {
    for (size_t t = 0; t < tasks.size(); ++t) {
      SCOPED_TRACE(absl::StrCat("round ", round, ": ", tasks[t].sql));
      const TaskRow& p = rounds[round][t];
      const TaskRow& d = (*direct)[t];
      EXPECT_EQ(p.success, d.success);
      EXPECT_EQ(p.result, d.result);
      EXPECT_EQ(p.sqlstate, d.sqlstate);
      EXPECT_EQ(p.error, d.error);
    }
  }
  const std::vector<TaskRow>* pooled = &rounds[1];
  EXPECT_EQ((*pooled)[0].result, "42");
  EXPECT_EQ((*pooled)[1].result, std::nullopt);
  EXPECT_EQ((*pooled)[2].result, "SELECT 5");
  EXPECT_EQ((*pooled)[3].sqlstate, "22012");
  EXPECT_EQ((*pooled)[5].result, std::string(5000, 'x'));
  // The direct transport's cached connections go with the session.
  session.reset();
  ASSERT_TRUE(PollUntil([&] { return CoordinatorConnectionsOn(0) == TableConnections(0); }));
}

// A session's request reaches the pool's thread directly: the session
// writes the eventfd the pool's thread polls, and the communicator's main
// thread (its 100 ms sweep) takes none, or next to none, of them. Without
// the eventfd every request would be the main thread's.
TEST_F(PgPoolTest, RequestsReachThePoolsThreadWithoutTheMainThread) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(RunTasks(*session, {On(0, "SELECT 1")}).ok());  // the pool is up
  const int64_t taken = Stat("requests_taken");
  const int64_t swept = Stat("requests_swept");
  ASSERT_GE(taken, 0);
  constexpr int kRequests = 40;
  for (int i = 0; i < kRequests; ++i) {
    absl::StatusOr<std::vector<TaskRow>> r = RunTasks(*session, {On(i % 2, "SELECT 1")});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // Published about every 100 ms (so the figures before may still miss the
  // first request: at least kRequests, not exactly).
  ASSERT_TRUE(PollUntil([&] {
    return Stat("requests_taken") - taken + Stat("requests_swept") - swept >= kRequests;
  }));
  const int64_t by_pool = Stat("requests_taken") - taken;
  const int64_t by_main = Stat("requests_swept") - swept;
  // The sweep takes a request only when it runs in the microseconds between
  // the session's write and the pool's thread waking: rare even on a busy
  // machine, never the rule.
  EXPECT_GT(by_pool, by_main) << by_pool << " taken by the pool's thread, " << by_main
                              << " by the main thread";
}

TEST_F(PgPoolTest, ManySessionsShareAPoolSmallerThanThemWithinTheLimit) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.max_shared_pool_size", "2"));
  // Connections pooled under the old limit are closed down to the new one.
  ASSERT_TRUE(PollUntil([&] {
    return CoordinatorConnectionsOn(0) <= 2 && CoordinatorConnectionsOn(1) <= 2;
  })) << "the pool kept more connections than the lowered limit";
  const int64_t started_before = ToInt(PoolStat("connections_started"));
  const int64_t run_before = ToInt(PoolStat("tasks_run"));
  constexpr int kSessions = 12, kExecutions = 15;
  std::atomic<int> failures{0}, peak0{0}, peak1{0};
  std::atomic<bool> stop{false};
  // The workers' own count of coordinator backends, sampled throughout.
  std::thread watcher([&] {
    std::unique_ptr<PgClient> w0 = *workers_[0]->Connect(), w1 = *workers_[1]->Connect();
    while (!stop.load()) {
      peak0 = std::max(peak0.load(), std::stoi(Value(*w0, kCoordinatorConnections)));
      peak1 = std::max(peak1.load(), std::stoi(Value(*w1, kCoordinatorConnections)));
    }
  });
  std::vector<std::thread> sessions;
  std::vector<std::string> errors(kSessions);
  for (int s = 0; s < kSessions; ++s) {
    sessions.emplace_back([&, s] {
      std::unique_ptr<PgClient> c = Connect();
      if (c == nullptr) {
        ++failures;
        return;
      }
      for (int e = 0; e < kExecutions; ++e) {
        absl::StatusOr<std::vector<TaskRow>> rows =
            RunTasks(*c, {On(0, "SELECT pg_sleep(0.002)"), On(1, "SELECT pg_sleep(0.002)"),
                          On(0, absl::StrCat("SELECT ", s)), On(1, absl::StrCat("SELECT ", e))});
        bool ok = rows.ok() && rows->size() == 4;
        for (size_t t = 0; ok && t < rows->size(); ++t) ok = (*rows)[t].success;
        if (ok)
          ok = (*rows)[2].result == std::to_string(s) && (*rows)[3].result == std::to_string(e);
        if (!ok) {
          ++failures;
          errors[s] = rows.ok() ? "a task failed or gave a wrong value" : rows.status().ToString();
        }
      }
    });
  }
  for (auto& t : sessions) t.join();
  stop = true;
  watcher.join();
  EXPECT_EQ(failures.load(), 0) << absl::StrJoin(errors, "; ");
  EXPECT_LE(peak0.load(), 2);
  EXPECT_LE(peak1.load(), 2);
  // Connections live across sessions: the whole run cost each worker at most
  // its limit of backends, however many sessions came and went.
  ASSERT_TRUE(PollUntil(
      [&] { return ToInt(PoolStat("tasks_run")) - run_before >= kSessions * kExecutions * 4; }));
  EXPECT_LE(ToInt(PoolStat("connections_started")) - started_before, 4);
  Report("worker backends started by the pool for 720 tasks",
         std::to_string(ToInt(PoolStat("connections_started")) - started_before));
}

TEST_F(PgPoolTest, CancelAndStatementTimeoutWithdrawTheTasksAndKeepTheConnections) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  // Warm: a connection to worker 1 in the pool.
  ASSERT_TRUE(RunTasks(*session, {On(0, "SELECT 1")}).ok());
  ASSERT_TRUE(PollUntil([&] { return Stat("connections") >= 1; }));
  const int64_t cancelled_before = Stat("tasks_cancelled");
  const int64_t started_before = Stat("connections_started");
  {
    AsyncQuery q(*session,
                 absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
                              Port(0), "], ARRAY['SELECT pg_sleep(600)'])"));
    ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 1; }));
    const Clock::time_point cancelled = Clock::now();
    ASSERT_TRUE(session->Cancel().ok());
    ASSERT_TRUE(q.WaitDone(60s));
    EXPECT_EQ(SqlState(q.result().status()), "57014") << q.result().status();
    // The worker's query was cancelled too, long before it would have ended.
    EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 0; }, 15s));
    // Printed, not asserted (issue 11 wants 50 ms; these machines are shared).
    Report("cancel -> the session's error",
           absl::StrCat(Ms(q.ended() - cancelled), " ms; -> the worker's query gone: ",
                        Ms(Clock::now() - cancelled), " ms (poll granularity ~1 ms)"));
  }
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 1));
  ASSERT_TRUE(session->Exec("SET statement_timeout = '300ms'").ok());
  absl::StatusOr<std::vector<TaskRow>> slow = RunTasks(*session, {On(0, "SELECT pg_sleep(600)")});
  EXPECT_EQ(SqlState(slow.status()), "57014") << slow.status();
  EXPECT_THAT(std::string(slow.status().message()), HasSubstr("statement timeout"));
  EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(600)") == 0; }, 15s));
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 2));
  ASSERT_TRUE(session->Exec("RESET statement_timeout").ok());
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 7")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "7");
  // The cancelled tasks' connection was drained and kept, not replaced.
  EXPECT_EQ(Stat("connections_started"), started_before);
}

TEST_F(PgPoolTest, ATerminatedSessionsTasksAreCancelled) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int pid = session->BackendPid();
  const int64_t cancelled_before = Stat("tasks_cancelled");
  AsyncQuery q(*session, absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1', "
                                      "'127.0.0.1'], ARRAY[",
                                      Port(0), ", ", Port(1),
                                      "], ARRAY['SELECT pg_sleep(601)', 'SELECT pg_sleep(601)'])"));
  ASSERT_TRUE(
      PollUntil([&] { return Running(0, "pg_sleep(601)") + Running(1, "pg_sleep(601)") == 2; }));
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", pid, ")")), "t");
  ASSERT_TRUE(q.WaitDone(60s));
  EXPECT_FALSE(q.result().ok());
  EXPECT_TRUE(PollUntil(
      [&] { return Running(0, "pg_sleep(601)") + Running(1, "pg_sleep(601)") == 0; }, 15s))
      << "the dead session's tasks still run on the workers";
  EXPECT_TRUE(Grew("tasks_cancelled", cancelled_before, 2));
}

TEST_F(PgPoolTest, AWorkerBackendKilledMidTaskFailsTheTaskWith08006) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  AsyncQuery q(*session, absl::StrCat("SELECT success, sqlstate FROM connthrottle.run_tasks("
                                      "ARRAY['127.0.0.1'], ARRAY[",
                                      Port(0), "], ARRAY['SELECT pg_sleep(602)'])"));
  ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(602)") == 1; }));
  ASSERT_TRUE(wobs_[0]
                  ->Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                         "application_name = 'connthrottle' AND query LIKE '%pg_sleep(602)%'")
                  .ok());
  ASSERT_TRUE(q.WaitDone(60s));
  ASSERT_TRUE(q.result().ok()) << q.result().status();
  EXPECT_EQ(q.result()->rows[0][0], "f");
  EXPECT_EQ(q.result()->rows[0][1], "08006");
  // The pool replaces the connection.
  const int64_t run_before = Stat("tasks_run");
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 8")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "8");
  EXPECT_TRUE(Grew("tasks_run", run_before, 1));
}

TEST_F(PgPoolTest, ARestartedWorkersPooledConnectionsAreReplaced) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(RunTasks(*session, {On(1, "SELECT 1")}).ok());
  ASSERT_GE(CoordinatorConnectionsOn(1), 1);
  const int64_t run_before = Stat("tasks_run");
  const int64_t dead_before = Stat("closed_dead");
  wobs_[1].reset();
  ASSERT_TRUE(workers_[1]->Stop().ok());
  ASSERT_TRUE(workers_[1]->StartAgain().ok());
  absl::StatusOr<std::unique_ptr<PgClient>> w = workers_[1]->Connect();
  ASSERT_TRUE(w.ok()) << w.status();
  wobs_[1] = *std::move(w);
  // The pooled connection is dead; the task had not been sent, so it runs
  // on a new one.
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(1, "SELECT 9")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE((*after)[0].success) << (*after)[0];
  EXPECT_EQ((*after)[0].result, "9");
  EXPECT_TRUE(Grew("tasks_run", run_before, 1));
  EXPECT_TRUE(Grew("closed_dead", dead_before, 1)) << "the dead connection was not noticed";
}

TEST_F(PgPoolTest, TheLocalNodeFailsOverToInProcessExecution) {
  ASSERT_NO_FATAL_FAILURE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int64_t handed_before = Stat("tasks_handed_back");
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(
      *session,
      {{"127.0.0.1", coordinator_->port(), "SELECT current_setting('port')"}, On(0, "SELECT 10")});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_TRUE((*rows)[0].ran_locally) << (*rows)[0];
  EXPECT_EQ((*rows)[0].result, std::to_string(coordinator_->port()));
  EXPECT_FALSE((*rows)[1].ran_locally);
  EXPECT_EQ((*rows)[1].result, "10");
  EXPECT_TRUE(Grew("tasks_handed_back", handed_before, 1))
      << "the local task did not go through the pool";
}

TEST_F(PgPoolTest, ATerminatedCommunicatorAnswersWith57P01AndStartsAgain) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  const int communicator = CommunicatorPid();
  AsyncQuery q(*session,
               absl::StrCat("SELECT * FROM connthrottle.run_tasks(ARRAY['127.0.0.1'], ARRAY[",
                            Port(0), "], ARRAY['SELECT pg_sleep(603)'])"));
  ASSERT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(603)") == 1; }));
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", communicator, ")")), "t");
  ASSERT_TRUE(q.WaitDone(60s));
  EXPECT_EQ(SqlState(q.result().status()), "57P01") << q.result().status();
  EXPECT_THAT(std::string(q.result().status().message()), HasSubstr("communicator"));
  // Its connections are closed (the worker's query with them) and their
  // slots given back; a new communicator starts.
  EXPECT_TRUE(PollUntil([&] { return Running(0, "pg_sleep(603)") == 0; }, 15s));
  ASSERT_TRUE(PollUntil([&] {
    const int pid = CommunicatorPid();
    return pid != 0 && pid != communicator;
  }));
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 11")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "11");
  EXPECT_TRUE(Grew("tasks_run", 0, 1)) << "the new communicator did not run it";
}

// A response larger than the message area (1 MB against 64 kB) crosses it
// in parts, each sent when the session has read the last. A session that
// stops reading in the middle (its backend SIGSTOPped) holds up nobody: with
// the limit at one connection per worker, another session's tasks run on
// the very connection the big result came from; and once the slow session
// reads again it gets every byte.
TEST_F(PgPoolTest, ASessionReadingALargeResultSlowlyHoldsUpNoOneElse) {
  SetSetting("connthrottle.max_shared_pool_size", "1");
  std::unique_ptr<PgClient> slow = Connect(), other = Connect();
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(other, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4242, reader));

  // While the slow session's backend is stopped, mid-response.
  for (int round = 0; round < 5; ++round) {
    AsyncQuery o(*other, absl::StrCat("SELECT sum(result::int) FROM "
                                      "connthrottle.run_tasks(ARRAY['127.0.0.1', '127.0.0.1'], "
                                      "ARRAY[",
                                      Port(0), ", ", Port(1), "], ARRAY['SELECT ", round,
                                      "', 'SELECT ", round + 10, "'])"));
    ASSERT_TRUE(o.WaitDone(60s)) << "another session waited for the slow reader";
    ASSERT_TRUE(o.result().ok()) << o.result().status();
    EXPECT_EQ(o.result()->Value(), std::to_string(2 * round + 10));
  }
  EXPECT_FALSE(reader.query->done());
  EXPECT_LE(CoordinatorConnectionsOn(0), 1);

  ASSERT_NO_FATAL_FAILURE(ResumeAndExpectTheWholeResult(reader));
}

// A session cancelled while it holds the first part of a response in parts
// gives up the rest (the communicator drops it) and its slot serves its next
// request at once.
TEST_F(PgPoolTest, ACancelMidResponseDropsTheRestAndFreesTheSlot) {
  std::unique_ptr<PgClient> slow = Connect();
  ASSERT_NE(slow, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4244, reader));
  // Delivered when the backend runs again, with the first part in its area.
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_cancel_backend(", reader.pid, ")")), "t");
  reader.Resume();
  ASSERT_TRUE(reader.query->WaitDone(60s));
  EXPECT_EQ(SqlState(reader.query->result().status()), "57014") << reader.query->result().status();
  ExpectSlotServes(*slow, 14);
}

// The communicator holds at most connthrottle.pool_response_memory of
// results waiting to be read in parts. With 1500 kB and a stopped reader
// holding about 1 MB, another session's 1 MB result cannot wait too: its
// task fails at once with 54000 naming the setting (the session is not held
// up). Once the reader has read its result, the same task succeeds.
TEST_F(PgPoolTest, ResultsWaitingForSlowReadersStayWithinPoolResponseMemory) {
  SetSetting("connthrottle.pool_response_memory", "1500kB");
  std::unique_ptr<PgClient> slow = Connect(), other = Connect();
  ASSERT_NE(slow, nullptr);
  ASSERT_NE(other, nullptr);
  const std::vector<TaskSpec> big = {On(1, "SELECT repeat('y', 1000000)")};
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4245, reader));

  absl::StatusOr<std::vector<TaskRow>> refused = RunTasks(*other, big);
  ASSERT_TRUE(refused.ok()) << refused.status();
  ASSERT_EQ(refused->size(), 1u);
  EXPECT_FALSE((*refused)[0].success);
  EXPECT_EQ((*refused)[0].sqlstate, "54000") << (*refused)[0];
  EXPECT_THAT((*refused)[0].error.value_or(""), HasSubstr("connthrottle.pool_response_memory"));
  EXPECT_FALSE(reader.query->done());

  ASSERT_NO_FATAL_FAILURE(ResumeAndExpectTheWholeResult(reader));

  absl::StatusOr<std::vector<TaskRow>> again = RunTasks(*other, big);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_TRUE((*again)[0].success) << (*again)[0].error.value_or("");
  EXPECT_TRUE((*again)[0].result == std::string(1000000, 'y')) << "the result is not intact";
}

// The communicator terminated while a session is stopped in the middle of
// reading a response in parts: once the session reads again it fails with
// 57P01 or 08006 (whichever communicator it finds), and its slot is usable.
TEST_F(PgPoolTest, ACommunicatorGoneMidResponseFailsTheReaderCleanly) {
  std::unique_ptr<PgClient> slow = Connect();
  ASSERT_NE(slow, nullptr);
  StoppedReader reader;
  ASSERT_NO_FATAL_FAILURE(StopMidResponse(*slow, 4243, reader));
  const int communicator = CommunicatorPid();
  ASSERT_EQ(Value(*obs_, absl::StrCat("SELECT pg_terminate_backend(", communicator, ")")), "t");
  ASSERT_TRUE(PollUntil([&] { return CommunicatorPid() != communicator; }));

  reader.Resume();
  AsyncQuery& q = *reader.query;
  ASSERT_TRUE(q.WaitDone(60s));
  const std::string state = SqlState(q.result().status());
  EXPECT_TRUE(state == "57P01" || state == "08006") << q.result().status();
  ASSERT_TRUE(PollUntil([&] { return CommunicatorPid() != 0; }));
  ExpectSlotServes(*slow, 13);
}

// Last (gtest runs a suite's cases in the order written): the server restarts.
TEST_F(PgPoolTest, ZKilledCommunicatorRestartsTheServerWithNothingCounted) {
  std::unique_ptr<PgClient> session = Connect();
  ASSERT_NE(session, nullptr);
  ASSERT_TRUE(RunTasks(*session, {On(0, "SELECT 1"), On(1, "SELECT 1")}).ok());
  const int communicator = CommunicatorPid();
  ASSERT_GT(communicator, 0);
  ASSERT_EQ(kill(communicator, SIGKILL), 0);
  // The postmaster ends every backend and re-initialises shared memory.
  EXPECT_TRUE(PollUntil([&] { return !session->Exec("SELECT 1").ok(); }));
  obs_.reset();
  ASSERT_TRUE(PollUntil([&] { return (obs_ = Connect()) != nullptr && CommunicatorPid() != 0; }));
  EXPECT_EQ(Rows(*obs_, kNodes), "none");
  session = Connect();
  ASSERT_NE(session, nullptr);
  absl::StatusOr<std::vector<TaskRow>> after = RunTasks(*session, {On(0, "SELECT 12")});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*after)[0].result, "12");
  EXPECT_TRUE(Grew("tasks_run", 0, 1)) << "the new communicator did not run it";
}

}  // namespace
}  // namespace connthrottle::cluster
