// The tests of run_data.h: percentiles, fairness, stalls and starvation on
// made-up series (test_runs.h), client assignment, and every invariant Judge
// checks, passing and failing.

#include "stress/run_data.h"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stress/report.h"
#include "stress/test_runs.h"

namespace connthrottle::stress {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
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

TEST(AssignClientTest, RolesRoundRobinAndEveryCombinationCovered) {
  // 4 roles x 2 databases over 16 clients: each combination twice.
  std::map<std::pair<int, int>, int> seen;
  std::vector<int> per_role(4, 0);
  for (int c = 0; c < 16; ++c) {
    const ClientGroup g = AssignClient(c, 4, 2);
    EXPECT_EQ(g.role, c % 4) << c;
    ++seen[{g.role, g.database}];
    ++per_role[g.role];
  }
  EXPECT_THAT(seen, SizeIs(8));
  for (const auto& [group, n] : seen) EXPECT_EQ(n, 2);
  EXPECT_THAT(per_role, ElementsAre(4, 4, 4, 4));
  // The first roles x databases clients already cover every combination.
  seen.clear();
  for (int c = 0; c < 6; ++c) ++seen[{AssignClient(c, 2, 3).role, AssignClient(c, 2, 3).database}];
  EXPECT_THAT(seen, SizeIs(6));
  // The defaults: everybody in role 0, database 0.
  EXPECT_EQ(AssignClient(7, 1, 1).role, 0);
  EXPECT_EQ(AssignClient(7, 1, 1).database, 0);
}

TEST(AssignClientTest, CoordinatorsRoundRobinAndEveryCombinationCovered) {
  // 2 coordinators x 2 roles x 2 databases over 8 clients: each once.
  std::map<std::tuple<int, int, int>, int> seen;
  for (int c = 0; c < 8; ++c) {
    const ClientGroup g = AssignClient(c, 2, 2, 2);
    EXPECT_EQ(g.coordinator, c % 2) << c;
    ++seen[{g.coordinator, g.role, g.database}];
  }
  EXPECT_THAT(seen, SizeIs(8));
  // One coordinator: as before.
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(AssignClient(c, 4, 2, 1).role, AssignClient(c, 4, 2).role);
    EXPECT_EQ(AssignClient(c, 4, 2, 1).database, AssignClient(c, 4, 2).database);
    EXPECT_EQ(AssignClient(c, 4, 2).coordinator, 0);
  }
}

TEST(CoordinatorsTest, PerCoordinatorSumsItsClients) {
  const RunData run = CleanRunOfCoordinators();
  const std::vector<GroupFigures> c = PerCoordinator(run);
  ASSERT_THAT(c, SizeIs(2));
  EXPECT_EQ(c[0].name, "c1");
  EXPECT_EQ(c[0].clients, 2);
  EXPECT_EQ(c[0].completed, 200);
  EXPECT_EQ(c[1].clients, 1);
  EXPECT_EQ(c[1].completed, 80);
}

TEST(CoordinatorsTest, ShareTimesAreMeasuredFromTheIdleWindowsEdges) {
  RunData run = CleanRunOfCoordinators();
  ShareTimes t = MeasureShareTimes(run);
  ASSERT_TRUE(t.taken.has_value());
  EXPECT_EQ(*t.taken, absl::Milliseconds(300));
  ASSERT_TRUE(t.given_back.has_value());
  EXPECT_EQ(*t.given_back, absl::Milliseconds(200));
  // The busy coordinator must hold more than its share on every worker:
  // on worker2 it holds 4.
  for (Sample& s : run.samples) {
    if (s.at >= absl::Milliseconds(2300) && s.at < absl::Milliseconds(4200)) {
      s.per_coordinator[1] = {4, 4};
    }
  }
  t = MeasureShareTimes(run);
  EXPECT_FALSE(t.taken.has_value());
  // Taken only after the idle window ended: not within it, so not taken.
  for (Sample& s : run.samples) {
    if (s.at >= absl::Milliseconds(4200) && s.at < absl::Milliseconds(4300)) {
      s.per_coordinator = {{7, 1}, {7, 1}};
    }
  }
  EXPECT_FALSE(MeasureShareTimes(run).taken.has_value());
  EXPECT_EQ(*t.given_back, absl::Milliseconds(200));  // worker1 is still 7 + 1 till 4.2 s
  // No idle window, or one coordinator: nothing measured.
  run.idle.reset();
  EXPECT_FALSE(MeasureShareTimes(run).taken.has_value());
  EXPECT_FALSE(MeasureShareTimes(CleanRun()).given_back.has_value());
}

TEST(CoordinatorsTest, ThroughputPerSecondCountsEachCoordinatorsCompletions) {
  const std::vector<std::vector<int64_t>> t = ThroughputPerSecond(CleanRunOfCoordinators());
  ASSERT_THAT(t, SizeIs(10));
  EXPECT_THAT(t[0], ElementsAre(20, 10));
  EXPECT_THAT(t[2], ElementsAre(20, 0));
  EXPECT_THAT(t[9], ElementsAre(20, 10));
}

// Clients with the given roles and completions.
RunData Clients(std::vector<std::string> roles, std::vector<std::pair<int, int64_t>> clients) {
  RunData run;
  run.roles = std::move(roles);
  run.databases = {"postgres"};
  for (const auto& [role, completed] : clients) {
    ClientFigures f;
    f.role = role;
    f.completed = completed;
    run.clients.push_back(f);
  }
  return run;
}

TEST(RoleFairnessTest, PerRoleSumsClientsAndCompletions) {
  RunData run = Clients({"a", "b"}, {{0, 10}, {1, 5}, {0, 30}, {1, 7}, {1, 1}});
  std::vector<GroupFigures> roles = PerRole(run);
  ASSERT_THAT(roles, SizeIs(2));
  EXPECT_EQ(roles[0].name, "a");
  EXPECT_EQ(roles[0].clients, 2);
  EXPECT_EQ(roles[0].completed, 40);
  EXPECT_EQ(roles[1].name, "b");
  EXPECT_EQ(roles[1].clients, 3);
  EXPECT_EQ(roles[1].completed, 13);
  std::vector<GroupFigures> databases = PerDatabase(run);
  ASSERT_THAT(databases, SizeIs(1));
  EXPECT_EQ(databases[0].clients, 5);
  EXPECT_EQ(databases[0].completed, 53);
}

TEST(RoleFairnessTest, JainAcrossRolesIsPerClient) {
  // Role a has twice the clients and twice the completions: equally served.
  EXPECT_DOUBLE_EQ(GroupJainIndex({{"a", 8, 2000}, {"b", 4, 1000}}), 1.0);
  // Equal totals over unequal client counts: a's clients got half as much.
  // Per client 125 and 250: (375)^2 / (2 * (125^2 + 250^2)) = 0.9.
  EXPECT_NEAR(GroupJainIndex({{"a", 8, 1000}, {"b", 4, 1000}}), 0.9, 1e-12);
  // One role of four did everything.
  EXPECT_DOUBLE_EQ(GroupJainIndex({{"a", 8, 800}, {"b", 8, 0}, {"c", 8, 0}, {"d", 8, 0}}), 0.25);
  // A role without clients is left out, not counted as starved.
  EXPECT_DOUBLE_EQ(GroupJainIndex({{"a", 8, 800}, {"b", 0, 0}, {"c", 8, 800}}), 1.0);
  // Computed from the run's clients.
  EXPECT_NEAR(GroupJainIndex(PerRole(Clients({"a", "b"}, {{0, 100}, {1, 300}, {0, 100}}))),
              // per client 100 and 300
              400.0 * 400.0 / (2 * (100.0 * 100.0 + 300.0 * 300.0)), 1e-12);
}

TEST(SamplingTest, PeakPerWorker) {
  std::vector<Sample> samples = {At(10, {1, 2}), At(20, {4, 0}), At(30, {3, 7}), At(40, {2})};
  EXPECT_THAT(PeakPerWorker(samples, 2), ElementsAre(4, 7));
  EXPECT_THAT(PeakPerWorker({}, 3), ElementsAre(0, 0, 0));
}

TEST(StarvedGroupsTest, ARoleSilentWhileOthersCompleteIsStarved) {
  const absl::Duration run = absl::Seconds(20);
  const absl::Duration window = absl::Seconds(5);
  // Role 1 completes until 4 s, then again from 11 s: silent 6.9 s.
  std::vector<absl::Duration> silent =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(4));
  std::vector<absl::Duration> back = Every(absl::Milliseconds(100), absl::Seconds(11), run);
  silent.insert(silent.end(), back.begin(), back.end());
  std::vector<std::vector<absl::Duration>> roles = {
      Every(absl::Seconds(1), absl::ZeroDuration(), run), silent,
      Every(absl::Seconds(1), absl::ZeroDuration(), run)};
  std::vector<Starvation> starved = StarvedGroups(roles, run, window);
  ASSERT_THAT(starved, SizeIs(1));
  EXPECT_EQ(starved[0].group, 1);
  EXPECT_EQ(starved[0].from, absl::Milliseconds(3900));
  EXPECT_EQ(starved[0].to, absl::Seconds(11));
  // Roles 0 and 2 each completed at 4, 5, ..., 10 s.
  EXPECT_EQ(starved[0].others_completed, 14);
}

TEST(StarvedGroupsTest, ShortHolesEverybodyIdleAndOneRoleAreNotStarvation) {
  const absl::Duration run = absl::Seconds(20);
  const absl::Duration window = absl::Seconds(5);
  // 4.5-second holes: not a whole window.
  EXPECT_THAT(StarvedGroups({Every(absl::Milliseconds(4500), absl::Milliseconds(100), run),
                             Every(absl::Seconds(1), absl::ZeroDuration(), run)},
                            run, window),
              IsEmpty());
  // Both roles silent from 5 s to 12 s: the run stalled, nobody starved.
  auto holed = [&] {
    std::vector<absl::Duration> v = Every(absl::Seconds(1), absl::ZeroDuration(), absl::Seconds(5));
    std::vector<absl::Duration> w = Every(absl::Seconds(1), absl::Seconds(12), run);
    v.insert(v.end(), w.begin(), w.end());
    return v;
  };
  EXPECT_THAT(StarvedGroups({holed(), holed()}, run, window), IsEmpty());
  // One role: nobody to compare with.
  EXPECT_THAT(StarvedGroups({{}}, run, window), IsEmpty());
  // A run shorter than the window judges nobody.
  EXPECT_THAT(StarvedGroups({{}, {absl::Seconds(1)}}, absl::Seconds(3), window), IsEmpty());
}

TEST(StarvedGroupsTest, ARoleThatNeverCompletesIsStarvedForTheWholeRun) {
  const absl::Duration run = absl::Seconds(10);
  std::vector<absl::Duration> busy = Every(absl::Seconds(1), absl::ZeroDuration(), run);
  std::reverse(busy.begin(), busy.end());  // unsorted on purpose
  std::vector<Starvation> starved = StarvedGroups({busy, {}}, run, absl::Seconds(5));
  ASSERT_THAT(starved, SizeIs(1));
  EXPECT_EQ(starved[0].group, 1);
  EXPECT_EQ(starved[0].from, absl::ZeroDuration());
  EXPECT_EQ(starved[0].to, run);
  EXPECT_EQ(starved[0].others_completed, 10);
}

TEST(SamplingTest, PeakPerWorkerAndDatabase) {
  std::vector<Sample> samples = {{absl::Milliseconds(10), {3, 2}, {{1, 2}, {2, 0}}},
                                 {absl::Milliseconds(20), {5, 4}, {{4, 1}, {1, 3}}},
                                 {absl::Milliseconds(30), {1}, {{0, 1}}}};
  EXPECT_THAT(PeakPerWorkerAndDatabase(samples, 2, 2),
              ElementsAre(ElementsAre(4, 2), ElementsAre(2, 3)));
  EXPECT_THAT(PeakPerWorkerAndDatabase({}, 1, 3), ElementsAre(ElementsAre(0, 0, 0)));
}

TEST(SamplingTest, LongestGapCountsTheEdgesOfTheRun) {
  std::vector<Sample> samples = {At(30, {}), At(40, {}), At(100, {}), At(110, {})};
  EXPECT_EQ(LongestSampleGap(samples, absl::Milliseconds(120)), absl::Milliseconds(60));
  EXPECT_EQ(LongestSampleGap(samples, absl::Milliseconds(300)), absl::Milliseconds(190));
  EXPECT_EQ(LongestSampleGap({}, absl::Seconds(2)), absl::Seconds(2));
}

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

TEST(JudgeTest, StarvedRoleFailsOnlyWhenTimingIsJudged) {
  RunData run = CleanRunOfRoles();
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
  // Role r2's only client stops at 4 s; r1's two keep completing.
  run.clients[2].completion_times =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(4));
  Verdict v = Judge(run, kSettle, kStall);
  EXPECT_THAT(v.violations,
              ElementsAre(HasSubstr("client 2 completed nothing"),
                          HasSubstr("role r2 completed nothing from 3.9s to 10s while the other "
                                    "roles completed 122 (starved: 5s allowed)")));
  EXPECT_TRUE(Judge(run, kSettle, kStall, /*judge_timing=*/false).passed);
  // One role of two clients, one of them stalled: a stall, not a starved role.
  run.roles = {"r1"};
  run.clients[2].role = 0;
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre(HasSubstr("client 2 completed nothing")));
}

TEST(JudgeTest, WithSeveralDatabasesTheLimitCountsPerNode) {
  RunData run = CleanRunOfRoles();
  // 4 connections to worker1 in all, 3 and 1 per database: within 4.
  run.workers[0].peak = 4;
  run.workers[0].peak_per_database = {3, 1};
  run.workers[1].peak_per_database = {2, 2};
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
  // 6 in all, each database within 4: the node's limit is exceeded.
  run.workers[1].peak = 6;
  run.workers[1].peak_per_database = {3, 3};
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre("worker worker2: peak of 6 coordinator connections (all databases) "
                          "exceeds the limit of 4"));
  run.workers[1].forced = 2;
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
}

TEST(JudgeTest, APerDatabaseBoundJudgesEachDatabase) {
  RunData run = CleanRunOfRoles();
  run.workers[0].peak = 4;
  run.workers[0].peak_per_database = {2, 2};
  run.workers[1].peak_per_database = {3, 1};
  // Without a bound the per-database peaks are reported, not judged.
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
  for (WorkerFigures& w : run.workers) w.database_limit = 2;
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre(HasSubstr("worker worker2: peak of 3 coordinator connections of "
                                    "database")));
  run.workers[1].forced = 1;
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
}

TEST(JudgeTest, WithSeveralCoordinatorsTheirSumCountsAgainstTheBudget) {
  RunData run = CleanRunOfCoordinators();
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed) << Judge(run, kSettle, kStall).violations[0];
  // 9 in all on worker2, each coordinator within its own limit.
  run.workers[1].peak = 9;
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre("worker worker2: peak of 9 coordinator connections (all coordinators) "
                          "exceeds the budget of 8"));
  // One coordinator over its own limit, the sum within the budget.
  run.workers[1].peak = 8;
  run.workers[0].peak_per_coordinator = {9, 0};
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre("worker worker1: peak of 9 connections from coordinator c1 exceeds its "
                          "limit of 8"));
}

TEST(JudgeTest, TheIdleCoordinatorsClientsAreNotStalled) {
  RunData run = CleanRunOfCoordinators();
  run.idle = Gap{absl::Seconds(2), absl::Seconds(9)};
  run.clients[1].completion_times =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(2));
  EXPECT_TRUE(Judge(run, kSettle, kStall).passed);
  // A busy coordinator's client that stalls still fails the run.
  RunData busy_stalls = run;
  busy_stalls.clients[0].completion_times =
      Every(absl::Milliseconds(100), absl::ZeroDuration(), absl::Seconds(2));
  EXPECT_THAT(Judge(busy_stalls, kSettle, kStall).violations,
              ElementsAre(HasSubstr("client 0 completed nothing")));
  // So does the idle coordinator's client that stalls outside its window:
  // idle from 1 s to 2 s, then nothing to the end.
  run.idle = Gap{absl::Seconds(1), absl::Seconds(2)};
  EXPECT_THAT(Judge(run, kSettle, kStall).violations,
              ElementsAre(HasSubstr("client 1 completed nothing")));
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

}  // namespace
}  // namespace connthrottle::stress
