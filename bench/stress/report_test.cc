// The reports' tests: what the text and JSON reports show of the runs made
// up in test_runs.h (and leave out with the defaults), the CSV series and the
// gnuplot script.

#include "stress/report.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stress/run_data.h"
#include "stress/test_runs.h"

namespace connthrottle::stress {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(ReportTest, LatencyIsAlsoShownPerWorkloadKind) {
  RunData pooled = CleanRun();
  pooled.label = "throttled, shared_pool";
  for (int i = 1; i <= 9; ++i) pooled.latency_by_kind["router"].Add(i * 1000);
  pooled.latency_by_kind["fanout"].Add(40000);
  RunData direct = CleanRun();
  direct.latency_by_kind["router"].Add(70000);
  const std::string text = TextReport({direct, pooled}, Judge(direct, kSettle, kStall));
  EXPECT_THAT(text, HasSubstr("latency p50, router"));
  EXPECT_THAT(text, HasSubstr("5.0 ms"));   // the pooled run's router median
  EXPECT_THAT(text, HasSubstr("70.0 ms"));  // the direct run's
  EXPECT_THAT(text, HasSubstr("latency p50, fanout"));
  EXPECT_THAT(JsonReport({pooled}, Judge(pooled, kSettle, kStall)),
              HasSubstr("\"latency_p50_us_by_kind\":{\"fanout\":40000,\"router\":5000}"));
}

TEST(ReportTest, TextShowsRunsSideBySideAndTheVerdict) {
  RunData throttled = CleanRun();
  RunData unthrottled = CleanRun();
  unthrottled.label = "unthrottled";
  unthrottled.workers[0].limit = -1;
  unthrottled.workers[0].peak = 11;
  unthrottled.too_many_clients_errors = 17;
  Verdict verdict = Judge(throttled, kSettle, kStall);
  std::string text = TextReport({throttled, unthrottled}, verdict);
  EXPECT_THAT(text, HasSubstr("throttled"));
  EXPECT_THAT(text, HasSubstr("unthrottled"));
  EXPECT_THAT(text, HasSubstr("30.0 q/s"));  // 3 clients x 100 completions in 10 s
  EXPECT_THAT(text, HasSubstr("50.0 ms"));   // p50
  EXPECT_THAT(text, HasSubstr("99.0 ms"));   // p99
  EXPECT_THAT(text, HasSubstr("limit off"));
  EXPECT_THAT(text, HasSubstr("17"));
  EXPECT_THAT(text, HasSubstr("PASSED"));
  // Wake-ups per wait, where the coordinator's figures were read.
  EXPECT_THAT(text, HasSubstr("wake-ups per wait"));
  throttled.waits = 40;
  throttled.wakeups = 50;
  EXPECT_THAT(TextReport({throttled}, verdict), HasSubstr("40 / 1.25"));

  RunData bad = CleanRun();
  bad.hung = 1;
  std::string failed = TextReport({bad}, Judge(bad, kSettle, kStall));
  EXPECT_THAT(failed, HasSubstr("FAILED"));
  EXPECT_THAT(failed, HasSubstr("  - 1 operations hung"));
}

TEST(ReportTest, JsonEscapesAndCarriesTheFigures) {
  RunData run = CleanRun();
  run.label = "a \"quoted\"\nlabel";
  Verdict verdict;
  verdict.passed = false;
  verdict.violations = {"back\\slash"};
  std::string json = JsonReport({run}, verdict);
  EXPECT_THAT(json, HasSubstr(R"("passed":false)"));
  EXPECT_THAT(json, HasSubstr(R"("violations":["back\\slash"])"));
  EXPECT_THAT(json, HasSubstr(R"("label":"a \"quoted\"\nlabel")"));
  EXPECT_THAT(json, HasSubstr(R"("p50":50000)"));
  EXPECT_THAT(json, HasSubstr(R"("peak":4)"));
  EXPECT_THAT(json, HasSubstr(R"("jain_index":1)"));
  EXPECT_THAT(json, HasSubstr(R"("samples":1000)"));
  EXPECT_THAT(json, HasSubstr(R"("waits":-1,"wakeups":-1)"));
  EXPECT_THAT(json, HasSubstr(R"("counters_zero_after_s":0.003)"));
  run.counters_zero_after = std::nullopt;
  EXPECT_THAT(JsonReport({run}, verdict), HasSubstr(R"("counters_zero_after_s":null)"));
}

TEST(ReportTest, RolesAndDatabasesAreReportedOnlyWhenThereAreSeveral) {
  RunData run = CleanRunOfRoles();
  run.clients[0].completed = 100;
  run.clients[1].completed = 60;
  run.clients[2].completed = 20;
  run.clients[2].failed = 3;
  run.sqlstate_53300_errors = 3;
  run.workers[0].peak_per_database = {3, 1};
  const Verdict verdict = Judge(run, kSettle, kStall);
  const std::string text = TextReport({run}, verdict);
  for (const char* row :
       {"completions, role r1", "160 (2 clients, 0 failed)", "completions, role r2",
        "20 (1 clients, 3 failed)", "completions, database d1", "120 (2 clients, 3 failed)",
        "completions, database d2", "60 (1 clients, 0 failed)"}) {
    EXPECT_THAT(text, HasSubstr(row));
  }
  EXPECT_THAT(text, ContainsRegex("operations failed with SQLSTATE 53300 +3 "));
  // Per client 80 and 20: 100^2 / (2 * (6400 + 400)) = 0.735.
  EXPECT_THAT(text, ContainsRegex("Jain's index across roles \\(per client\\) +0\\.735"));
  EXPECT_THAT(text, HasSubstr("4 (limit 4, all databases, max_connections 12)"));
  EXPECT_THAT(text, HasSubstr("peak connections, worker1, d2"));
  const std::string json = JsonReport({run}, verdict);
  EXPECT_THAT(json, HasSubstr(R"("roles":[{"name":"r1","clients":2,"completed":160,"failed":0},)"
                              R"({"name":"r2","clients":1,"completed":20,"failed":3}])"));
  EXPECT_THAT(json,
              HasSubstr(R"("databases":[{"name":"d1","clients":2,"completed":120,"failed":3},)"));
  EXPECT_THAT(json, HasSubstr(R"("jain_index_roles":0.735294,"sqlstate_53300_errors":3)"));
  EXPECT_THAT(json, HasSubstr(R"("peak_per_database":[3,1])"));

  // One role in one database: the report is what it was before roles.
  RunData plain = CleanRun();
  plain.roles = {"postgres"};
  plain.databases = {"postgres"};
  EXPECT_EQ(TextReport({plain}, verdict), TextReport({CleanRun()}, verdict));
  EXPECT_EQ(JsonReport({plain}, verdict), JsonReport({CleanRun()}, verdict));
  EXPECT_THAT(TextReport({plain}, verdict), Not(HasSubstr("role")));
  EXPECT_THAT(TextReport({plain}, verdict), Not(HasSubstr("53300")));
  EXPECT_THAT(JsonReport({plain}, verdict), Not(HasSubstr("roles")));
}

TEST(ReportTest, SeriesCsvHasAHeaderAndOneLinePerSample) {
  RunData run = CleanRun();
  run.samples = {At(10, {1, 2}), At(1500, {3, 4})};
  EXPECT_EQ(SeriesCsv(run), "seconds,worker1,worker2\n0.010,1,2\n1.500,3,4\n");
}

TEST(ReportTest, WithCoordinatorsTheSeriesHasEachOnesConnectionsAndThroughput) {
  RunData run = CleanRunOfCoordinators();
  run.samples.resize(1);
  EXPECT_EQ(SeriesCsv(run),
            "seconds,worker1,worker2,worker1/c1,worker1/c2,worker2/c1,worker2/c2\n"
            "0.010,8,8,4,4,4,4\n");
  EXPECT_THAT(ThroughputCsv(run), HasSubstr("second,c1,c2\n0,20,10\n1,20,10\n2,20,0\n"));
  const std::string text = TextReport({run}, Verdict{});
  EXPECT_THAT(text, HasSubstr("8 (budget 8, all coordinators"));
  EXPECT_THAT(text, HasSubstr("completions, coordinator c2"));
  EXPECT_THAT(text, HasSubstr("Jain's index across coordinators"));
  const std::string json = JsonReport({run}, Verdict{});
  EXPECT_THAT(json, HasSubstr(R"("peak_per_coordinator":[7,4])"));
  EXPECT_THAT(json, HasSubstr(R"("jain_index_coordinators":)"));
  EXPECT_THAT(json, HasSubstr(R"("share_taken_s":null)"));  // one sample, before the window
  const std::string script = GnuplotScript({run}, {"/o/t.csv"}, "/o/chart.png", {"/o/q.csv"});
  EXPECT_THAT(script, HasSubstr("multiplot layout 1,2"));
  EXPECT_THAT(script, HasSubstr("'/o/t.csv' using 1:7 with steps lw 1 title 'worker2 c2'"));
  EXPECT_THAT(script, HasSubstr("'/o/q.csv' using 1:3 with steps lw 2 title 'c2'"));
  EXPECT_THAT(script, HasSubstr("title 'budget (8)'"));
}

TEST(ReportTest, GnuplotDrawsEachRunAgainstItsLimit) {
  RunData throttled = CleanRun();
  RunData unthrottled = CleanRun();
  unthrottled.label = "unthrottled";
  for (WorkerFigures& w : unthrottled.workers) w.limit = -1;
  std::string script =
      GnuplotScript({throttled, unthrottled}, {"/o/t.csv", "/o/u.csv"}, "/o/chart.png");
  EXPECT_THAT(script, HasSubstr("set output '/o/chart.png'"));
  EXPECT_THAT(script, HasSubstr("multiplot layout 2,1"));
  EXPECT_THAT(script, HasSubstr("'/o/t.csv' using 1:3"));
  EXPECT_THAT(script, HasSubstr("'/o/u.csv' using 1:2"));
  EXPECT_THAT(script, HasSubstr("title 'limit (4)'"));
  // One limit line: the unthrottled run has none.
  EXPECT_EQ(script.find("title 'limit ("), script.rfind("title 'limit ("));
}

}  // namespace
}  // namespace connthrottle::stress
