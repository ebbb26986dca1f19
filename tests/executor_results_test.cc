// The executor's results: each task's own result or error, fanned out over
// two workers; rows past max_rows_kept counted, not kept.

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "connthrottle/executor/executor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/executor_fixture.h"

namespace connthrottle::testing {
namespace {

TEST_F(ExecutorTest, FanOutReturnsEachTasksOwnResult) {
  Session s(table(), Settings(16));
  const NodeAddress n1 = Addr(*w1_), n2 = Addr(*w2_);
  std::vector<Task> tasks;
  for (int i = 0; i < 64; ++i) {
    const bool fails = i % 9 == 4;
    tasks.push_back(Task{i % 2 == 0 ? n1 : n2,
                         fails ? absl::StrCat("SELECT ", i, " / 0")
                               : absl::StrCat("SELECT ", i, ", current_setting('port')")});
  }
  const absl::Time began = absl::Now();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(tasks);
  const absl::Duration took = absl::Now() - began;
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tasks.size(), tasks.size());
  int failed = 0;
  for (int i = 0; i < 64; ++i) {
    SCOPED_TRACE(absl::StrCat("task ", i, ": ", tasks[i].sql));
    const TaskResult& t = r->tasks[i];
    EXPECT_EQ(t.node, tasks[i].node);
    EXPECT_FALSE(t.ran_locally);
    if (i % 9 == 4) {
      ++failed;
      EXPECT_FALSE(t.status.ok());
      EXPECT_EQ(t.sqlstate, "22012") << t.status;
      EXPECT_THAT(std::string(t.status.message()), HasSubstr(tasks[i].node.ToString()));
      EXPECT_THAT(std::string(t.status.message()), HasSubstr("division by zero"));
      continue;
    }
    ASSERT_TRUE(t.status.ok()) << t.status;
    EXPECT_EQ(t.sqlstate, "");
    EXPECT_EQ(t.command_tag, "SELECT 1");
    ASSERT_EQ(t.rows.size(), 1u);
    ASSERT_EQ(t.rows[0].size(), 2u);
    EXPECT_EQ(t.rows[0][0], std::to_string(i));
    EXPECT_EQ(t.rows[0][1], std::to_string(tasks[i].node.port));
    EXPECT_GE(t.connection, 0);
  }
  EXPECT_GT(failed, 0);
  Report(
      "fan-out: 64 tasks over 2 workers",
      absl::StrFormat("%.1f ms, %d failing as intended, %d connections opened, %d reused", Ms(took),
                      failed, r->stats.connections_opened, r->stats.connections_reused));
}

// The coordinator's peak resident memory (VmHWM), after resetting the peak
// to the current size (clear_refs 5); -1 when /proc does not allow it.
int64_t ResetPeakRssKb() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  return clear ? 0 : -1;
}
int64_t PeakRssKb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    int64_t kb = 0;
    if (std::sscanf(line.c_str(), "VmHWM: %" SCNd64 " kB", &kb) == 1) return kb;
  }
  return -1;
}
int64_t RssKb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    int64_t kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %" SCNd64 " kB", &kb) == 1) return kb;
  }
  return -1;
}

// With max_rows_kept, a task's rows are counted as they arrive and all but
// the first are dropped: a 2-million-row result costs the coordinator about
// one row's memory (buffered whole by libpq, about 120 MB).
TEST_F(ExecutorTest, RowsPastMaxRowsKeptAreCountedNotKept) {
  ExecutorOptions options;
  options.max_rows_kept = 1;
  Session s(table(), Settings(4), options);
  const NodeAddress n1 = Addr(*w1_);
  constexpr int64_t kRows = 2000000;
  ASSERT_EQ(ResetPeakRssKb(), 0);
  const int64_t before = RssKb();
  absl::StatusOr<ExecutionResult> r = s.executor.Execute(
      {Task{n1, absl::StrCat("SELECT g, 'row ' || g FROM generate_series(1, ", kRows, ") g")},
       Task{n1, "SELECT 1; SELECT 'a' UNION ALL SELECT 'b'"}, Task{n1, "SELECT 1 WHERE false"}});
  const int64_t peak = PeakRssKb();
  ASSERT_TRUE(r.ok()) << r.status();
  const TaskResult& big = r->tasks[0];
  ASSERT_TRUE(big.status.ok()) << big.status;
  EXPECT_EQ(big.row_count, kRows);
  ASSERT_EQ(big.rows.size(), 1u);
  EXPECT_EQ(big.rows[0][0], "1");
  EXPECT_EQ(big.rows[0][1], "row 1");
  EXPECT_EQ(big.columns, (std::vector<std::string>{"g", "?column?"}));
  EXPECT_EQ(big.command_tag, absl::StrCat("SELECT ", kRows));
  // Several result sets: the last one is reported, counted from zero.
  const TaskResult& multi = r->tasks[1];
  ASSERT_TRUE(multi.status.ok()) << multi.status;
  EXPECT_EQ(multi.row_count, 2);
  ASSERT_EQ(multi.rows.size(), 1u);
  EXPECT_EQ(multi.rows[0][0], "a");
  EXPECT_EQ(r->tasks[2].row_count, 0);
  EXPECT_TRUE(r->tasks[2].rows.empty());
  EXPECT_EQ(r->tasks[2].command_tag, "SELECT 0");
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Sanitizers keep freed memory in quarantine: growth says nothing here.
  Report("rows kept", absl::StrFormat("peak %+.1f MB (sanitizer build)", (peak - before) / 1024.0));
#else
  ASSERT_GT(before, 0);
  ASSERT_GT(peak, 0);
  EXPECT_LT(peak - before, 32 * 1024)
      << "reading " << kRows << " rows grew the peak RSS by " << (peak - before) / 1024 << " MB";
  Report("rows kept", absl::StrFormat("%d rows read, 1 kept: peak RSS %+.1f MB", kRows,
                                      (peak - before) / 1024.0));
#endif
}

}  // namespace
}  // namespace connthrottle::testing
