// COPY through the executor with up-front reservations: every row lands on
// its node; a node without rows is never connected to and its reservation is
// given back.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/copy_stream.h"
#include "connthrottle/executor/executor.h"
#include "gtest/gtest.h"
#include "tests/testing/executor_fixture.h"

namespace connthrottle::testing {
namespace {

TEST_F(ExecutorTest, CopyWithReservationsLandsEveryRowOnItsNode) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  for (LocalServer* w : {w1_, w2_}) {
    ASSERT_TRUE(w->Query("CREATE TABLE copy_target (id int, payload text)").ok());
  }
  constexpr int kRows = 101;
  {
    Session s(table(), Settings(16));
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(s.executor, {n1, n2}, "COPY copy_target FROM STDIN",
                          absl::Now() + absl::Seconds(10), [] { return false; });
    ASSERT_TRUE(copy.ok()) << copy.status();
    for (const NodeAddress& n : {n1, n2}) {
      std::optional<KeyStats> k = StatsOf(table(), n);
      ASSERT_TRUE(k.has_value()) << "no reservation for " << n.ToString();
      EXPECT_EQ(k->reserved, 1u) << n.ToString();
      EXPECT_EQ(k->connections, 1u) << n.ToString();
    }
    EXPECT_EQ(IntValue(*obs1_, kCoordinatorBackends), 0) << "connected before any row";
    EXPECT_EQ(IntValue(*obs2_, kCoordinatorBackends), 0) << "connected before any row";
    for (int id = 0; id < kRows; ++id) {
      absl::Status sent = (*copy)->Send(id % 2, absl::StrCat(id, "\trow ", id, "\n"));
      ASSERT_TRUE(sent.ok()) << sent;
    }
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = (*copy)->Finish();
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), 2u);
    const uint64_t expected_rows[2] = {(kRows + 1) / 2, kRows / 2};
    for (int i = 0; i < 2; ++i) {
      const CopyStream::NodeResult& nr = (*results)[i];
      SCOPED_TRACE(nr.node.ToString());
      EXPECT_TRUE(nr.status.ok()) << nr.status;
      EXPECT_TRUE(nr.connected);
      EXPECT_EQ(nr.rows_sent, expected_rows[i]);
      EXPECT_EQ(nr.command_tag, absl::StrCat("COPY ", expected_rows[i]));
    }
    copy->reset();
    for (int i = 0; i < 2; ++i) {
      LocalServer* w = i == 0 ? w1_ : w2_;
      absl::StatusOr<QueryResult> q = w->Query(
          absl::StrCat("SELECT count(*), count(*) FILTER (WHERE id % 2 <> ", i,
                       " OR payload <> 'row ' || id), coalesce(sum(id), 0) FROM copy_target"));
      ASSERT_TRUE(q.ok()) << q.status();
      int64_t sum = 0;
      for (int id = i; id < kRows; id += 2) sum += id;
      EXPECT_EQ(q->rows[0][0], std::to_string(expected_rows[i])) << w->name();
      EXPECT_EQ(q->rows[0][1], "0") << w->name() << ": rows of the other node";
      EXPECT_EQ(q->rows[0][2], std::to_string(sum)) << w->name();
    }
    // What is counted now is exactly what the cache holds.
    std::map<NodeAddress, int> cached = s.executor.CachedConnections();
    for (const NodeAddress& n : {n1, n2}) {
      EXPECT_EQ(table().ConnectionCount(KeyOf(n)), static_cast<uint32_t>(cached[n]))
          << n.ToString();
    }
    // (A cached connection that consumed a reservation still counts as
    // reserved: the slot keeps its kind until the connection gives it back.)
    std::optional<KeyStats> k1 = StatsOf(table(), n1), k2 = StatsOf(table(), n2);
    Report("COPY: rows per node / cached connections after / of which reported reserved",
           absl::StrCat(expected_rows[0], "+", expected_rows[1], " / ", cached[n1], "+", cached[n2],
                        " / ", k1 ? k1->reserved : 0u, "+", k2 ? k2->reserved : 0u));
  }
  for (LocalServer* w : {w1_, w2_}) ASSERT_TRUE(w->Query("DROP TABLE copy_target").ok());
}

TEST_F(ExecutorTest, CopyNodeWithoutRowsIsNeverConnectedAndItsReservationGivenBack) {
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  for (LocalServer* w : {w1_, w2_}) {
    ASSERT_TRUE(w->Query("CREATE TABLE copy_target2 (id int)").ok());
  }
  const int received_before2 = Logged(*w2_).received;
  {
    Session s(table(), Settings(16));
    absl::StatusOr<std::unique_ptr<CopyStream>> copy =
        CopyStream::Begin(s.executor, {n1, n2}, "COPY copy_target2 FROM STDIN",
                          absl::Now() + absl::Seconds(10), [] { return false; });
    ASSERT_TRUE(copy.ok()) << copy.status();
    std::optional<KeyStats> k2 = StatsOf(table(), n2);
    ASSERT_TRUE(k2.has_value());
    EXPECT_EQ(k2->reserved, 1u);
    for (int id = 0; id < 10; ++id) {
      ASSERT_TRUE((*copy)->Send(0, absl::StrCat(id, "\n")).ok());
    }
    absl::StatusOr<std::vector<CopyStream::NodeResult>> results = (*copy)->Finish();
    ASSERT_TRUE(results.ok()) << results.status();
    EXPECT_TRUE((*results)[0].connected);
    EXPECT_EQ((*results)[0].rows_sent, 10u);
    EXPECT_TRUE((*results)[0].status.ok()) << (*results)[0].status;
    EXPECT_FALSE((*results)[1].connected);
    EXPECT_EQ((*results)[1].rows_sent, 0u);
    EXPECT_TRUE((*results)[1].status.ok()) << (*results)[1].status;
    EXPECT_EQ(table().ConnectionCount(KeyOf(n2)), 0u) << "the unused reservation was kept";
    EXPECT_EQ(table().ConnectionCount(KeyOf(n1)),
              static_cast<uint32_t>(s.executor.CachedConnections()[n1]));
    copy->reset();
    EXPECT_EQ(IntValue(*obs2_, "SELECT count(*) FROM copy_target2"), 0);
    EXPECT_EQ(IntValue(*obs1_, "SELECT count(*) FROM copy_target2"), 10);
  }
  EXPECT_EQ(Logged(*w2_).received - received_before2, 0)
      << "worker2 was connected to without getting a row";
  for (LocalServer* w : {w1_, w2_}) ASSERT_TRUE(w->Query("DROP TABLE copy_target2").ok());
}

}  // namespace
}  // namespace connthrottle::testing
