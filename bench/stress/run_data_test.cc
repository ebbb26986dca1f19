#include "stress/run_data.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace connthrottle::stress {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

TEST(LatencyRecorderTest, NearestRankPercentiles) {
  LatencyRecorder r;
  for (int64_t v = 100; v >= 1; --v) r.Add(v);  // unsorted on purpose
  EXPECT_EQ(r.Percentile(50), 50);
  EXPECT_EQ(r.Percentile(99), 99);
  EXPECT_EQ(r.Percentile(99.5), 100);
  EXPECT_EQ(r.Percentile(1), 1);
  EXPECT_EQ(r.Max(), 100);
}

TEST(LatencyRecorderTest, SmallSamplesRoundRanksUp) {
  LatencyRecorder r;
  r.Add(10);
  r.Add(30);
  r.Add(20);
  EXPECT_EQ(r.Percentile(33), 10);  // rank ceil(0.99) = 1
  EXPECT_EQ(r.Percentile(34), 20);  // rank ceil(1.02) = 2
  EXPECT_EQ(r.Percentile(50), 20);
  EXPECT_EQ(r.Percentile(67), 30);
}

TEST(LatencyRecorderTest, EmptyIsZero) {
  LatencyRecorder r;
  EXPECT_EQ(r.Percentile(50), 0);
  EXPECT_EQ(r.Max(), 0);
}

TEST(LatencyRecorderTest, MergeAfterPercentileStillSorts) {
  LatencyRecorder a, b;
  a.Add(5);
  a.Add(1);
  EXPECT_EQ(a.Max(), 5);  // sorts a
  b.Add(3);
  b.Add(100);
  a.Merge(b);
  EXPECT_EQ(a.count(), 4u);
  EXPECT_EQ(a.Percentile(50), 3);
  EXPECT_EQ(a.Max(), 100);
  a.Add(0);  // adding after a sort must not leave stale order
  EXPECT_EQ(a.Percentile(1), 0);
}

TEST(JainIndexTest, KnownValues) {
  EXPECT_DOUBLE_EQ(JainIndex({5, 5, 5, 5}), 1.0);
  EXPECT_DOUBLE_EQ(JainIndex({8, 0, 0, 0}), 0.25);
  EXPECT_NEAR(JainIndex({1, 2, 3}), 36.0 / 42.0, 1e-12);
  EXPECT_DOUBLE_EQ(JainIndex({}), 1.0);
  EXPECT_DOUBLE_EQ(JainIndex({0, 0}), 1.0);
}

std::vector<absl::Duration> Every(absl::Duration step, absl::Duration from, absl::Duration to) {
  std::vector<absl::Duration> out;
  for (absl::Duration t = from; t < to; t += step) out.push_back(t);
  return out;
}

TEST(StalledClientsTest, FindsGapsAnywhereInTheRun) {
  const absl::Duration run = absl::Seconds(20);
  const absl::Duration window = absl::Seconds(5);
  std::vector<std::vector<absl::Duration>> completions = {
      Every(absl::Seconds(1), absl::ZeroDuration(), run),               // steady
      {},                                                               // never completed
      Every(absl::Seconds(1), absl::ZeroDuration(), absl::Seconds(4)),  // stopped early
      // a 6-second hole in the middle
      [] {
        auto v = Every(absl::Seconds(1), absl::ZeroDuration(), absl::Seconds(7));
        auto w = Every(absl::Seconds(1), absl::Seconds(13), absl::Seconds(20));
        v.insert(v.end(), w.begin(), w.end());
        return v;
      }(),
      // started late: nothing in the first 5.5 s
      Every(absl::Seconds(1), absl::Milliseconds(5500), run),
      // 4.5-second holes only: not a stall
      Every(absl::Milliseconds(4500), absl::Milliseconds(100), run),
  };
  EXPECT_THAT(StalledClients(completions, run, window), ElementsAre(1, 2, 3, 4));
}

TEST(StalledClientsTest, LongestGapIncludesTheEdges) {
  const absl::Duration run = absl::Seconds(10);
  Gap g = LongestGap({absl::Seconds(3), absl::Seconds(1), absl::Seconds(5)}, run);
  EXPECT_EQ(g.from, absl::Seconds(5));
  EXPECT_EQ(g.to, absl::Seconds(10));
  g = LongestGap({absl::Seconds(7), absl::Seconds(8)}, run);
  EXPECT_EQ(g.from, absl::ZeroDuration());
  EXPECT_EQ(g.to, absl::Seconds(7));
  g = LongestGap({}, run);
  EXPECT_EQ(g.to - g.from, run);
}

TEST(StalledClientsTest, RunShorterThanTheWindowJudgesNobody) {
  EXPECT_THAT(StalledClients({{}}, absl::Seconds(3), absl::Seconds(5)), IsEmpty());
}

TEST(StalledClientsTest, UnsortedCompletionTimesAreSorted) {
  std::vector<absl::Duration> times =
      Every(absl::Seconds(1), absl::ZeroDuration(), absl::Seconds(10));
  std::reverse(times.begin(), times.end());
  EXPECT_THAT(StalledClients({times}, absl::Seconds(10), absl::Seconds(5)), IsEmpty());
}

Sample At(int ms, std::vector<int> counts) { return {absl::Milliseconds(ms), std::move(counts)}; }

TEST(SamplingTest, PeakPerWorker) {
  std::vector<Sample> samples = {At(10, {1, 2}), At(20, {4, 0}), At(30, {3, 7}), At(40, {2})};
  EXPECT_THAT(PeakPerWorker(samples, 2), ElementsAre(4, 7));
  EXPECT_THAT(PeakPerWorker({}, 3), ElementsAre(0, 0, 0));
}

TEST(SamplingTest, LongestGapCountsTheEdgesOfTheRun) {
  std::vector<Sample> samples = {At(30, {}), At(40, {}), At(100, {}), At(110, {})};
  EXPECT_EQ(LongestSampleGap(samples, absl::Milliseconds(120)), absl::Milliseconds(60));
  EXPECT_EQ(LongestSampleGap(samples, absl::Milliseconds(300)), absl::Milliseconds(190));
  EXPECT_EQ(LongestSampleGap({}, absl::Seconds(2)), absl::Seconds(2));
}

// A run that keeps every invariant: sampled every 10 ms, under the limit,
// everyone completing every 100 ms, counters back at once.
RunData CleanRun() {
  RunData run;
  run.label = "throttled";
  run.duration = absl::Seconds(10);
  run.sample_interval = absl::Milliseconds(10);
  run.workers = {{"worker1", 4, 12, 4, 0, 40}, {"worker2", 4, 12, 3, 0, 38}};
  for (int c = 0; c < 3; ++c) {
    ClientFigures f;
    f.completion_times = Every(absl::Milliseconds(100), absl::ZeroDuration(), run.duration);
    f.completed = static_cast<int64_t>(f.completion_times.size());
    run.clients.push_back(f);
    run.queries += f.completed;
  }
  for (int ms = 10; ms <= 10000; ms += 10) run.samples.push_back(At(ms, {4, 3}));
  for (int v = 1; v <= 100; ++v) run.latency.Add(v * 1000);
  run.counters_zero_after = absl::Milliseconds(3);
  return run;
}

const absl::Duration kSettle = absl::Seconds(1);
const absl::Duration kStall = absl::Seconds(5);

TEST(JudgeTest, CleanRunPasses) {
  Verdict v = Judge(CleanRun(), kSettle, kStall);
  EXPECT_TRUE(v.passed);
  EXPECT_THAT(v.violations, IsEmpty());
}

TEST(JudgeTest, PeakOverTheLimitFails) {
  RunData run = CleanRun();
  run.workers[1].peak = 5;
  Verdict v = Judge(run, kSettle, kStall);
  EXPECT_FALSE(v.passed);
  ASSERT_THAT(v.violations, SizeIs(1));
  EXPECT_THAT(v.violations[0], HasSubstr("worker2"));
  EXPECT_THAT(v.violations[0], HasSubstr("peak of 5"));
}

TEST(JudgeTest, ForcedConnectionsAreAllowedAboveTheLimit) {
  RunData run = CleanRun();
  run.workers[0].peak = 6;
  run.workers[0].forced = 2;
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
  run.workers[0].peak = 7;
  EXPECT_FALSE(Judge(run, kSettle, kStall).passed);
}

TEST(JudgeTest, NoLimitMeansNoPeakCheck) {
  RunData run = CleanRun();
  run.workers[0].limit = -1;
  run.workers[0].peak = 100;
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
}

TEST(JudgeTest, TooManyClientsFails) {
  RunData run = CleanRun();
  run.too_many_clients_errors = 1;
  Verdict v = Judge(run, kSettle, kStall);
  EXPECT_FALSE(v.passed);
  EXPECT_THAT(v.violations, ElementsAre(HasSubstr("too many clients")));
}

TEST(JudgeTest, HungOperationFails) {
  RunData run = CleanRun();
  run.hung = 2;
  EXPECT_THAT(Judge(run, kSettle, kStall).violations, ElementsAre(HasSubstr("hung")));
}

TEST(JudgeTest, CountersNotBackToZeroFails) {
  RunData run = CleanRun();
  run.counters_zero_after = absl::Milliseconds(1500);
  EXPECT_FALSE(Judge(run, kSettle, kStall).passed);
  run.counters_zero_after = std::nullopt;
  run.counters_left = "127.0.0.1:5432=1";
  Verdict v = Judge(run, kSettle, kStall);
  EXPECT_FALSE(v.passed);
  EXPECT_THAT(v.violations, ElementsAre(HasSubstr("127.0.0.1:5432=1")));
  run.counters_zero_after = kSettle;  // exactly at the bound is in time
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
}

TEST(JudgeTest, StallFails) {
  RunData run = CleanRun();
  run.clients[1].completion_times =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(4));
  Verdict v = Judge(run, kSettle, kStall);
  EXPECT_FALSE(v.passed);
  EXPECT_THAT(v.violations, ElementsAre(HasSubstr("client 1 completed nothing from 3.9s to 10s")));
  run.clients[1].failures = {
      {absl::Seconds(2), "early"}, {absl::Seconds(5), "refused"}, {absl::Seconds(6), "again"}};
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre(HasSubstr("2 operations failed meanwhile, the first with: refused")));
}

TEST(JudgeTest, SparseSamplingFails) {
  RunData run = CleanRun();
  run.samples.clear();
  for (int ms = 30; ms <= 10000; ms += 30) run.samples.push_back(At(ms, {1, 1}));
  EXPECT_THAT(Judge(run, kSettle, kStall).violations, ElementsAre(HasSubstr("on average")));
}

TEST(JudgeTest, StuckMonitorFails) {
  RunData run = CleanRun();
  // Frequent on average, but blind for half a second.
  std::erase_if(run.samples, [](const Sample& s) {
    return s.at > absl::Seconds(4) && s.at < absl::Milliseconds(4500);
  });
  EXPECT_THAT(Judge(run, kSettle, kStall).violations, ElementsAre(HasSubstr("without a sample")));
}

TEST(JudgeTest, EveryViolationIsListed) {
  RunData run = CleanRun();
  run.workers[0].peak = 9;
  run.too_many_clients_errors = 3;
  run.hung = 1;
  run.counters_zero_after = std::nullopt;
  EXPECT_THAT(Judge(run, kSettle, kStall).violations, SizeIs(4));
}

TEST(JudgeTest, WithoutTimingSparseSamplingAndStallsPassButTheLimitStillCounts) {
  RunData run = CleanRun();
  run.samples.clear();
  for (int ms = 300; ms <= 10000; ms += 300) run.samples.push_back(At(ms, {1, 1}));
  run.clients[1].completion_times = {absl::Seconds(1), absl::Seconds(9)};
  EXPECT_THAT(Judge(run, kSettle, kStall).violations, SizeIs(3));  // mean, gap, stall
  EXPECT_TRUE(Judge(run, kSettle, kStall, /*judge_timing=*/false).passed);
  run.workers[0].peak = 9;
  run.counters_zero_after = std::nullopt;
  EXPECT_THAT(Judge(run, kSettle, kStall, /*judge_timing=*/false).violations,
              ElementsAre(HasSubstr("peak of 9"), HasSubstr("not back to zero")));
}

TEST(JudgeTest, BackendsPerQueryIsReportedOnlyWhenEveryWorkerWasMeasured) {
  RunData run = CleanRun();
  run.queries = 200;
  run.workers[0].backends_started = 3;
  run.workers[1].backends_started = 1;
  EXPECT_THAT(JsonReport({run}, Judge(run, kSettle, kStall)),
              HasSubstr("\"worker_backends_per_query\":0.02,"));
  EXPECT_THAT(TextReport({run}, Judge(run, kSettle, kStall)), HasSubstr("0.020"));
  run.workers[1].backends_started = -1;
  EXPECT_THAT(JsonReport({run}, Judge(run, kSettle, kStall)),
              HasSubstr("\"worker_backends_per_query\":null"));
}

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

TEST(ReportTest, SeriesCsvHasAHeaderAndOneLinePerSample) {
  RunData run = CleanRun();
  run.samples = {At(10, {1, 2}), At(1500, {3, 4})};
  EXPECT_EQ(SeriesCsv(run), "seconds,worker1,worker2\n0.010,1,2\n1.500,3,4\n");
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
