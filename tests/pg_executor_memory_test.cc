// Large results keep the coordinator backend small: a remote task returning
// ten million rows, a local one, and a distribute of three million rows.

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_client.h"
#include "tests/testing/pg_executor_fixture.h"
#include "tests/testing/run_tasks.h"

namespace connthrottle::cluster {
namespace {

// Resident memory of process `pid` from /proc/<pid>/status: `field` is
// VmRSS or VmHWM (the peak). -1 when it cannot be read.
int64_t ProcStatusKb(const std::string& pid, const char* field) {
  std::ifstream status("/proc/" + pid + "/status");
  const std::string prefix = absl::StrCat(field, ":");
  for (std::string line; std::getline(status, line);) {
    if (!absl::StartsWith(line, prefix)) continue;
    int64_t kb = -1;
    return absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(
                                absl::string_view(line).substr(prefix.size()), "kB")),
                            &kb)
               ? kb
               : -1;
  }
  return -1;
}

// A task returning ten million rows: run_tasks counts them and keeps one,
// so the coordinator backend's peak memory grows by far less than the
// result (about 80 MB on the wire; buffered whole, several times that).
TEST_P(PgExecutorTest, TaskReturningTenMillionRowsKeepsTheBackendSmall) {
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  // Reset the backend's peak to its current size (needs the server's user
  // or root, as the tests run in CI).
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  absl::StatusOr<QueryResult> r = s->Query(
      "SELECT success, result, rows, error FROM connthrottle.run_tasks($1::text[], $2::int[], "
      "$3::text[])",
      {TextArray({Host()}), IntArray({Port(0)}),
       TextArray({"SELECT g, repeat('x', 20) FROM generate_series(1, 10000000) g"})});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0][0], Cell("t")) << r->rows[0][3].value_or("");
  EXPECT_EQ(r->rows[0][1], Cell("SELECT 10000000"));
  EXPECT_EQ(r->rows[0][2], Cell("10000000"));
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  EXPECT_LT(peak - before, 64 * 1024)
      << "10 million rows grew the backend's peak RSS by " << (peak - before) / 1024 << " MB";
  std::printf("[ FIGURE   ] 10M-row task: backend peak RSS %+.1f MB\n", (peak - before) / 1024.0);
}

// A task that fails over to local execution streams its rows too: they are
// counted as the executor produces them, not kept (SPI_execute would keep
// all ten million in SPI_tuptable).
TEST_P(PgExecutorTest, LocalTaskReturningTenMillionRowsKeepsTheBackendSmall) {
  const int cport = coordinator_->port();
  ASSERT_TRUE(
      obs_->Exec(absl::StrCat("SELECT connthrottle.add_node('127.0.0.1', ", cport, ")")).ok());
  ASSERT_TRUE(SetSetting("connthrottle.local_shared_pool_size", "-1"));
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  // What the query itself costs this backend, run as plain SQL: the local
  // task may need that much, but not the rows' weight on top.
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t plain_before = ProcStatusKb(pid, "VmRSS");
  EXPECT_EQ(Value(*s,
                  "SELECT count(*) FROM (SELECT g, repeat('x', 20) FROM "
                  "generate_series(1, 10000000) g) q"),
            "10000000");
  const int64_t plain = ProcStatusKb(pid, "VmHWM") - plain_before;
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  absl::StatusOr<std::vector<TaskRow>> rows = RunTasks(
      *s, {{Host(), cport, "SELECT g, repeat('x', 20) FROM generate_series(1, 10000000) g"},
           {Host(), cport, "SELECT 'one row'"},
           {Host(), cport, "SELECT NULL::text"}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (const TaskRow& t : *rows) {
    EXPECT_TRUE(t.ran_locally && t.success) << ::testing::PrintToString(t);
  }
  EXPECT_EQ(rows->at(0).result, Cell("SELECT 10000000"));
  EXPECT_EQ(rows->at(1).result, Cell("one row"));
  EXPECT_EQ(rows->at(2).result, std::nullopt);
  absl::StatusOr<QueryResult> counted =
      s->Query("SELECT rows FROM connthrottle.run_tasks($1::text[], $2::int[], $3::text[])",
               {TextArray({Host()}), IntArray({cport}),
                TextArray({"SELECT g FROM generate_series(1, 12345) g"})});
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_EQ(counted->rows.at(0)[0], Cell("12345"));
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  // Kept rows would weigh ~500 MB (SPI_tuptable); the query itself needs
  // what it needs as plain SQL (once warm: the plain run came first).
  EXPECT_LT(peak - before, 64 * 1024)
      << "10 million local rows grew the backend's peak RSS by " << (peak - before) / 1024
      << " MB; the query alone, as plain SQL, by " << plain / 1024 << " MB";
  std::printf(
      "[ FIGURE   ] 10M-row local task: backend peak RSS %+.1f MB (the query as plain SQL, run "
      "first: %+.1f MB)\n",
      (peak - before) / 1024.0, plain / 1024.0);
}

// distribute reads its query through a cursor, 1000 rows at a time, with the
// text of each batch freed after it: three million rows grow the backend's
// peak memory by far less than they weigh; on the shared pool the
// communicator's too (it forwards one message area's worth at a time).
TEST_P(PgExecutorTest, DistributeOfThreeMillionRowsKeepsTheBackendSmall) {
  for (auto& w : wobs_) ASSERT_TRUE(w->Exec("CREATE TABLE many_items(id int, name text)").ok());
  const Defer drop([this] {
    for (auto& w : wobs_) {
      if (w != nullptr) (void)w->Exec("DROP TABLE IF EXISTS many_items");
    }
  });
  std::unique_ptr<PgClient> s = Connect();
  ASSERT_NE(s, nullptr);
  const std::string pid = Value(*s, "SELECT pg_backend_pid()");
  std::ofstream("/proc/" + pid + "/clear_refs") << "5";
  const int64_t before = ProcStatusKb(pid, "VmRSS");
  const int64_t reset_peak = ProcStatusKb(pid, "VmHWM");
  // On the shared pool the rows cross the communicator, whose memory must
  // not grow with them either.
  const std::string communicator =
      OnSharedPool() ? Value(*s, "SELECT pid FROM connthrottle.pool_stats()") : "";
  if (!communicator.empty()) std::ofstream("/proc/" + communicator + "/clear_refs") << "5";
  const int64_t communicator_before =
      communicator.empty() ? -1 : ProcStatusKb(communicator, "VmRSS");
  absl::StatusOr<QueryResult> r = s->Query(
      "SELECT sum(rows), bool_and(success), string_agg(error, '; ') FROM connthrottle.distribute("
      "'SELECT g, repeat(''x'', 20) FROM generate_series(1, 3000000) g', 'many_items', "
      "$1::text[], $2::int[])",
      {TextArray({Host(), Host()}), IntArray({Port(0), Port(1)})});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0][0], Cell("3000000"));
  EXPECT_EQ(r->rows[0][1], Cell("t")) << r->rows[0][2].value_or("");
  int64_t landed = 0;
  for (auto& w : wobs_) landed += std::stoll(Value(*w, "SELECT count(*) FROM many_items"));
  EXPECT_EQ(landed, 3000000);
  const int64_t peak = ProcStatusKb(pid, "VmHWM");
  if (before < 0 || peak < 0 || reset_peak > before + 1024) {
    GTEST_SKIP() << "cannot read or reset the backend's peak memory (/proc/" << pid << ")";
  }
  EXPECT_LT(peak - before, 64 * 1024)
      << "3 million rows grew the backend's peak RSS by " << (peak - before) / 1024 << " MB";
  std::printf("[ FIGURE   ] 3M-row distribute: backend peak RSS %+.1f MB\n",
              (peak - before) / 1024.0);
  if (communicator_before >= 0) {
    const int64_t communicator_peak = ProcStatusKb(communicator, "VmHWM");
    EXPECT_LT(communicator_peak - communicator_before, 64 * 1024)
        << "3 million rows grew the communicator's peak RSS by "
        << (communicator_peak - communicator_before) / 1024 << " MB";
    std::printf("[ FIGURE   ] 3M-row distribute: communicator peak RSS %+.1f MB\n",
                (communicator_peak - communicator_before) / 1024.0);
  }
}

}  // namespace
}  // namespace connthrottle::cluster
