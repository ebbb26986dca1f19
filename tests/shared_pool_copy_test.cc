// COPY through the shared pool (SharedPool::OpenCopy, PooledCopy): every row
// on its node on pooled connections that go back to the pool afterwards,
// reset; the global order and all-or-nothing reservation (a COPY waits for
// its next node only, and two COPYs in opposite orders both finish); the
// wait timeout; a cancel, a worker error and a worker killed mid-COPY leave
// nothing committed on any node. Every case ends with nothing counted, a
// clean Audit() and no coordinator backend on the workers (TearDown).

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/pooled_copy.h"
#include "connthrottle/executor/shared_pool.h"
#include "connthrottle/executor/standalone_context.h"
#include "gtest/gtest.h"
#include "tests/testing/shared_pool_fixture.h"

namespace connthrottle::testing {
namespace {

class PoolCopyTest : public PoolFixture {
 protected:
  // A fresh table of that name on both workers.
  void CreateTable(const std::string& name) {
    for (LocalServer* w : {w1_, w2_}) {
      ASSERT_TRUE(w->Query(absl::StrCat("DROP TABLE IF EXISTS ", name)).ok());
      ASSERT_TRUE(w->Query(absl::StrCat("CREATE TABLE ", name, " (id int, payload text)")).ok());
    }
  }
  static int Count(PgClient& c, const std::string& table) {
    return IntValue(c, absl::StrCat("SELECT count(*) FROM ", table));
  }
  // A COPY of `rows` rows, alternating between the nodes.
  static absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> CopyRows(
      SharedPool& pool, ExecutionContext& context, std::vector<NodeAddress> nodes,
      const std::string& table, int rows, PooledCopy::Options options = {}) {
    absl::StatusOr<std::unique_ptr<PooledCopy>> copy = PooledCopy::Begin(
        pool, context, nodes, absl::StrCat("COPY ", table, " FROM STDIN"), options);
    if (!copy.ok()) return copy.status();
    for (int id = 0; id < rows; ++id) {
      absl::Status sent = (*copy)->Send(id % nodes.size(), absl::StrCat(id, "\trow ", id, "\n"));
      if (!sent.ok()) return sent;
    }
    return (*copy)->Finish();
  }
};

TEST_F(PoolCopyTest, EveryRowLandsOnItsNodeOverPooledConnections) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_rows");
  StandaloneContext context(Settings(4));
  SharedPool& pool = Pool(Settings(4));
  PooledCopy::Options small;
  small.chunk_bytes = 1024;  // many chunks
  constexpr int kRows = 5001;
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r =
      CopyRows(pool, context, {n1, n2}, "pc_rows", kRows, small);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  const int64_t expected[2] = {(kRows + 1) / 2, kRows / 2};
  for (int i = 0; i < 2; ++i) {
    const SharedPool::CopyNodeResult& nr = (*r)[i];
    EXPECT_TRUE(nr.status.ok()) << nr.status;
    EXPECT_TRUE(nr.started);
    EXPECT_EQ(nr.rows, expected[i]);
    EXPECT_EQ(nr.command_tag, absl::StrCat("COPY ", expected[i]));
  }
  EXPECT_EQ(Count(*obs1_, "pc_rows"), expected[0]);
  EXPECT_EQ(Count(*obs2_, "pc_rows"), expected[1]);

  // The connections went back to the pool, reset: a second COPY and a task
  // reuse them, and no backend more is started on the workers.
  ASSERT_TRUE(PollUntil([&] { return pool.stats().resets >= 2; }));
  const int64_t started = pool.stats().connections_started;
  EXPECT_EQ(started, 2);
  r = CopyRows(pool, context, {n2, n1}, "pc_rows", 10);
  ASSERT_TRUE(r.ok()) << r.status();
  // Both reset again (a task sent meanwhile could make the pool grow).
  ASSERT_TRUE(PollUntil([&] { return pool.stats().resets >= 4; }));
  SharedPoolTransport transport(pool, context);
  absl::StatusOr<ExecutionResult> e = transport.Execute({Task{n1, "SELECT 1"}});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->tasks[0].status.ok()) << e->tasks[0].status;
  // Published as the loop turns: awaited.
  ASSERT_TRUE(PollUntil(
      [&] { return pool.stats().copy_rows == kRows + 10 && pool.stats().copies_finished == 2; }));
  const SharedPoolStats s = pool.stats();
  EXPECT_EQ(s.connections_started, started) << "a COPY opened a connection an idle one could serve";
  EXPECT_EQ(s.copies_finished, 2);
  EXPECT_EQ(Count(*obs1_, "pc_rows") + Count(*obs2_, "pc_rows"), kRows + 10);
}

TEST_F(PoolCopyTest, ANodeWithoutRowsRunsNoCopyAndItsConnectionGoesBack) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_one_node");
  StandaloneContext context(Settings(4));
  SharedPool& pool = Pool(Settings(4));
  absl::StatusOr<std::unique_ptr<PooledCopy>> copy =
      PooledCopy::Begin(pool, context, {n1, n2}, "COPY pc_one_node FROM STDIN");
  ASSERT_TRUE(copy.ok()) << copy.status();
  // Both reserved: a pooled connection to each is the COPY's.
  EXPECT_EQ(StatsOf(table(), n1)->connections, 1u);
  EXPECT_EQ(StatsOf(table(), n2)->connections, 1u);
  ASSERT_TRUE((*copy)->Send(0, "1\tone\n").ok());
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r = (*copy)->Finish();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE((*r)[0].started);
  EXPECT_FALSE((*r)[1].started);
  EXPECT_EQ((*r)[1].rows, 0);
  EXPECT_TRUE((*r)[1].status.ok());
  EXPECT_EQ(Count(*obs1_, "pc_one_node"), 1);
  EXPECT_EQ(Count(*obs2_, "pc_one_node"), 0);
  // Both connections are idle in the pool again (one after its reset).
  ASSERT_TRUE(PollUntil([&] {
    return IntValue(*obs1_, absl::StrCat(kCoordinatorBackends, " AND state = 'idle'")) == 1 &&
           IntValue(*obs2_, absl::StrCat(kCoordinatorBackends, " AND state = 'idle'")) == 1;
  }));
}

TEST_F(PoolCopyTest, ACopyWaitsForItsNextNodeAndGetsItWhenAnotherCopyEnds) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_wait");
  // One connection per node: the second COPY cannot open until the first
  // ends.
  StandaloneContext context(Settings(1));
  SharedPool& pool = Pool(Settings(1));
  absl::StatusOr<std::unique_ptr<PooledCopy>> first =
      PooledCopy::Begin(pool, context, {n1, n2}, "COPY pc_wait FROM STDIN");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*first)->Send(0, "1\tfirst\n").ok());

  std::atomic<bool> opened{false};
  absl::Status second_status;
  std::thread second([&] {
    StandaloneContext c2(Settings(1));
    absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r =
        CopyRows(pool, c2, {n2, n1}, "pc_wait", 4);
    opened = true;
    second_status = r.status();
  });
  ASSERT_TRUE(PollUntil([&] { return pool.stats().copy_waits >= 1; }));
  EXPECT_FALSE(opened.load());
  // The limit holds meanwhile.
  EXPECT_EQ(StatsOf(table(), n1)->connections, 1u);
  EXPECT_EQ(StatsOf(table(), n2)->connections, 1u);
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r = (*first)->Finish();
  ASSERT_TRUE(r.ok()) << r.status();
  second.join();
  EXPECT_TRUE(second_status.ok()) << second_status;
  EXPECT_EQ(Count(*obs1_, "pc_wait") + Count(*obs2_, "pc_wait"), 5);
  EXPECT_EQ(pool.stats().connections_started, 2) << "the waiting COPY took the first's connections";
}

TEST_F(PoolCopyTest, CopiesInOppositeOrdersAndTasksAtLimitOneAllFinish) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_order");
  SharedPool& pool = Pool(Settings(1));
  constexpr int kSessions = 6, kRounds = 5;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int s = 0; s < kSessions; ++s) {
    threads.emplace_back([&, s] {
      StandaloneContext context(Settings(1));
      for (int round = 0; round < kRounds; ++round) {
        if (s % 3 == 2) {  // a session of tasks among the COPYs
          SharedPoolTransport transport(pool, context);
          absl::StatusOr<ExecutionResult> e =
              transport.Execute({Task{n1, "SELECT 1"}, Task{n2, "SELECT 2"}});
          if (!e.ok() || !e->tasks[0].status.ok() || !e->tasks[1].status.ok()) ++failures;
          continue;
        }
        std::vector<NodeAddress> nodes =
            s % 2 == 0 ? std::vector<NodeAddress>{n1, n2} : std::vector<NodeAddress>{n2, n1};
        if (!CopyRows(pool, context, nodes, "pc_order", 20).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  const int copies = (kSessions - kSessions / 3) * kRounds;
  EXPECT_EQ(Count(*obs1_, "pc_order") + Count(*obs2_, "pc_order"), copies * 20);
  EXPECT_LE(pool.stats().connections_started, 2 + pool.stats().closed_for_waiters);
}

TEST_F(PoolCopyTest, ACopyThatCannotGetANodeFailsWith53300AndHoldsNothing) {
  // `first` comes before `second` in the global node order.
  NodeAddress first = Addr(*w1_), second = Addr(*w2_);
  PgClient* first_obs = obs1_.get();
  PgClient* second_obs = obs2_.get();
  if (KeyOf(second) < KeyOf(first)) {
    std::swap(first, second);
    std::swap(first_obs, second_obs);
  }
  CreateTable("pc_timeout");
  SharedPool& pool = Pool(Settings(1));
  StandaloneContext context(Settings(1));
  absl::StatusOr<std::unique_ptr<PooledCopy>> holder =
      PooledCopy::Begin(pool, context, {second}, "COPY pc_timeout FROM STDIN");
  ASSERT_TRUE(holder.ok()) << holder.status();
  PooledCopy::Options impatient;
  impatient.slot_wait_timeout = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<PooledCopy>> waiter =
      PooledCopy::Begin(pool, context, {second, first}, "COPY pc_timeout FROM STDIN", impatient);
  ASSERT_FALSE(waiter.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(waiter.status())) << waiter.status();
  EXPECT_THAT(std::string(waiter.status().message()), HasSubstr(second.ToString()));
  // `first`, taken before the wait, was given back: the pool's connection
  // to it is idle, its slot the pool's own again.
  ASSERT_TRUE(PollUntil([&] {
    return IntValue(*first_obs, absl::StrCat(kCoordinatorBackends, " AND state = 'idle'")) == 1;
  }));
  // The figures are published as the loop turns: awaited, not read once.
  EXPECT_TRUE(PollUntil([&] { return pool.stats().copies_failed == 1; }));
  ASSERT_TRUE((*holder)->Send(0, "1\tx\n").ok());
  ASSERT_TRUE((*holder)->Finish().ok());
  EXPECT_EQ(IntValue(*second_obs, "SELECT count(*) FROM pc_timeout"), 1);
}

TEST_F(PoolCopyTest, ACancelledCopyCommitsNothingAndItsConnectionsStayUsable) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_cancel");
  SharedPool& pool = Pool(Settings(2));
  StandaloneContext context(Settings(2));
  {
    absl::StatusOr<std::unique_ptr<PooledCopy>> copy =
        PooledCopy::Begin(pool, context, {n1, n2}, "COPY pc_cancel FROM STDIN");
    ASSERT_TRUE(copy.ok()) << copy.status();
    for (int id = 0; id < 20000; ++id) {
      ASSERT_TRUE((*copy)->Send(id % 2, absl::StrCat(id, "\trow\n")).ok());
    }
    // Both nodes are in COPY with rows sent; the destructor cancels.
    ASSERT_TRUE(PollUntil([&] { return pool.stats().copy_rows > 0; }));
  }
  ASSERT_TRUE(PollUntil([&] {
    return IntValue(*obs1_, ActiveQueries("COPY")) == 0 &&
           IntValue(*obs2_, ActiveQueries("COPY")) == 0;
  }));
  EXPECT_EQ(Count(*obs1_, "pc_cancel"), 0);
  EXPECT_EQ(Count(*obs2_, "pc_cancel"), 0);
  // The connections went back to the pool, reset, and serve the next COPY.
  ASSERT_TRUE(PollUntil([&] { return pool.stats().resets >= 2; }));
  absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r =
      CopyRows(pool, context, {n1, n2}, "pc_cancel", 6);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Count(*obs1_, "pc_cancel") + Count(*obs2_, "pc_cancel"), 6);
  EXPECT_EQ(pool.stats().connections_started, 2);
}

TEST_F(PoolCopyTest, AWorkerErrorFailsTheCopyWithItsSqlstate) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_error");
  ASSERT_TRUE(w2_->Query("DROP TABLE pc_error").ok());
  SharedPool& pool = Pool(Settings(2));
  StandaloneContext context(Settings(2));
  absl::StatusOr<std::unique_ptr<PooledCopy>> copy =
      PooledCopy::Begin(pool, context, {n1, n2}, "COPY pc_error FROM STDIN");
  ASSERT_TRUE(copy.ok()) << copy.status();
  absl::Status sent = absl::OkStatus();
  for (int id = 0; id < 10 && sent.ok(); ++id) {
    sent = (*copy)->Send(id % 2, absl::StrCat(id, "\trow\n"));
  }
  if (sent.ok()) {
    absl::StatusOr<std::vector<SharedPool::CopyNodeResult>> r = (*copy)->Finish();
    sent = r.status();
  }
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ((*copy)->sqlstate(), "42P01");
  EXPECT_THAT(std::string(sent.message()), HasSubstr(n2.ToString()));
  copy->reset();
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, ActiveQueries("COPY")) == 0; }));
  EXPECT_EQ(Count(*obs1_, "pc_error"), 0) << "node 1's COPY was committed";
}

TEST_F(PoolCopyTest, AWorkerBackendKilledMidCopyFailsItWith08006NamingTheNode) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  CreateTable("pc_killed");
  SharedPool& pool = Pool(Settings(2));
  StandaloneContext context(Settings(2));
  PooledCopy::Options small;
  small.chunk_bytes = 1024;
  absl::StatusOr<std::unique_ptr<PooledCopy>> copy =
      PooledCopy::Begin(pool, context, {n1, n2}, "COPY pc_killed FROM STDIN", small);
  ASSERT_TRUE(copy.ok()) << copy.status();
  for (int id = 0; id < 2000; ++id) {
    ASSERT_TRUE((*copy)->Send(id % 2, absl::StrCat(id, "\trow\n")).ok());
  }
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs2_, ActiveQueries("COPY")) == 1; }));
  ASSERT_EQ(IntValue(*obs2_,
                     "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                     "application_name = 'connthrottle' AND query LIKE 'COPY%'"),
            1);
  absl::Status sent = absl::OkStatus();
  for (int id = 0; sent.ok() && id < 1000000; ++id) {
    sent = (*copy)->Send(id % 2, absl::StrCat(id, "\trow\n"));
  }
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ((*copy)->sqlstate(), "08006");
  EXPECT_THAT(std::string(sent.message()), HasSubstr(n2.ToString()));
  copy->reset();
  ASSERT_TRUE(PollUntil([&] { return IntValue(*obs1_, ActiveQueries("COPY")) == 0; }));
  EXPECT_EQ(Count(*obs1_, "pc_killed"), 0) << "node 1's COPY was committed";
  EXPECT_EQ(Count(*obs2_, "pc_killed"), 0);
}

// A COPY holding a pool's only connection does not leave the pool's tasks
// waiting without end: they fail with 53300 after their wait timeout.
TEST_F(PoolCopyTest, TasksBehindAPinnedConnectionTimeOut) {
  const NodeAddress n1 = Addr(*w1_);
  CreateTable("pc_pinned");
  SharedPool& pool = Pool(Settings(1));
  StandaloneContext context(Settings(1));
  absl::StatusOr<std::unique_ptr<PooledCopy>> copy =
      PooledCopy::Begin(pool, context, {n1}, "COPY pc_pinned FROM STDIN");
  ASSERT_TRUE(copy.ok()) << copy.status();
  SharedPoolTransport::Options impatient;
  impatient.slot_wait_timeout = absl::Milliseconds(200);
  SharedPoolTransport transport(pool, context, impatient);
  absl::StatusOr<ExecutionResult> e = transport.Execute({Task{n1, "SELECT 1"}});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->tasks[0].sqlstate, "53300") << e->tasks[0].status;
  ASSERT_TRUE((*copy)->Send(0, "1\tx\n").ok());
  ASSERT_TRUE((*copy)->Finish().ok());
  EXPECT_EQ(Count(*obs1_, "pc_pinned"), 1);
}

}  // namespace
}  // namespace connthrottle::testing
