// The logic of run_data.h: latency percentiles, fairness, client groups,
// sampling gaps, stalls, starvation and the error tally, and Judge, one
// function per family of invariants.

#include "stress/run_data.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace connthrottle::stress {

std::string HumanDuration(absl::Duration d) {
  return absl::FormatDuration(
      absl::Trunc(d, d < absl::Seconds(1) ? absl::Microseconds(100) : absl::Milliseconds(1)));
}

void LatencyRecorder::Merge(const LatencyRecorder& other) {
  samples_.insert(samples_.end(), other.samples_.begin(), other.samples_.end());
  sorted_ = samples_.size() <= 1;
}

int64_t LatencyRecorder::Percentile(double p) const {
  if (samples_.empty()) return 0;
  if (!sorted_) {
    std::sort(samples_.begin(), samples_.end());
    sorted_ = true;
  }
  p = std::clamp(p, 0.0, 100.0);
  // Nearest rank: the smallest value with at least p% of the samples at or below it.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(samples_.size())));
  rank = std::clamp<size_t>(rank, 1, samples_.size());
  return samples_[rank - 1];
}

int64_t LatencyRecorder::Max() const { return Percentile(100); }

double JainIndex(const std::vector<double>& values) {
  if (values.empty()) return 1.0;
  double sum = 0, squares = 0;
  for (double v : values) {
    sum += v;
    squares += v * v;
  }
  if (squares == 0) return 1.0;  // nobody did anything: equally nothing
  return sum * sum / (static_cast<double>(values.size()) * squares);
}

std::vector<int> StalledClients(const std::vector<std::vector<absl::Duration>>& completions,
                                absl::Duration duration, absl::Duration window) {
  std::vector<int> stalled;
  if (window <= absl::ZeroDuration() || duration < window) return stalled;
  const absl::Duration step = window / 10;
  for (size_t c = 0; c < completions.size(); ++c) {
    std::vector<absl::Duration> times = completions[c];
    std::sort(times.begin(), times.end());
    bool stall = false;
    for (absl::Duration start = absl::ZeroDuration(); start + window <= duration && !stall;
         start += step) {
      auto first = std::lower_bound(times.begin(), times.end(), start);
      stall = first == times.end() || *first >= start + window;
    }
    if (stall) stalled.push_back(static_cast<int>(c));
  }
  return stalled;
}

std::vector<int> PeakPerWorker(const std::vector<Sample>& samples, size_t workers) {
  std::vector<int> peak(workers, 0);
  for (const Sample& s : samples) {
    for (size_t w = 0; w < workers && w < s.coordinator_connections.size(); ++w) {
      peak[w] = std::max(peak[w], s.coordinator_connections[w]);
    }
  }
  return peak;
}

namespace {

// The highest count per worker and group over `samples`' `counts` (a
// Sample's per_database or per_coordinator): `workers` rows of `groups`
// each, missing columns counting as 0.
std::vector<std::vector<int>> PeakPerWorkerAndGroup(const std::vector<Sample>& samples,
                                                    size_t workers, size_t groups,
                                                    std::vector<std::vector<int>> Sample::*counts) {
  std::vector<std::vector<int>> peak(workers, std::vector<int>(groups, 0));
  for (const Sample& s : samples) {
    const std::vector<std::vector<int>>& per_worker = s.*counts;
    for (size_t w = 0; w < workers && w < per_worker.size(); ++w) {
      for (size_t g = 0; g < groups && g < per_worker[w].size(); ++g) {
        peak[w][g] = std::max(peak[w][g], per_worker[w][g]);
      }
    }
  }
  return peak;
}

}  // namespace

std::vector<std::vector<int>> PeakPerWorkerAndDatabase(const std::vector<Sample>& samples,
                                                       size_t workers, size_t databases) {
  return PeakPerWorkerAndGroup(samples, workers, databases, &Sample::per_database);
}

std::vector<std::vector<int>> PeakPerWorkerAndCoordinator(const std::vector<Sample>& samples,
                                                          size_t workers, size_t coordinators) {
  return PeakPerWorkerAndGroup(samples, workers, coordinators, &Sample::per_coordinator);
}

absl::Duration LongestSampleGap(const std::vector<Sample>& samples, absl::Duration duration) {
  absl::Duration longest = absl::ZeroDuration();
  absl::Duration previous = absl::ZeroDuration();
  for (const Sample& s : samples) {
    longest = std::max(longest, s.at - previous);
    previous = s.at;
  }
  return std::max(longest, duration - previous);
}

absl::Duration MeanSampleInterval(const RunData& run) {
  return run.samples.empty() ? run.duration
                             : run.duration / static_cast<int64_t>(run.samples.size());
}

bool SeveralRolesOrDatabases(const RunData& run) {
  return run.roles.size() > 1 || run.databases.size() > 1;
}

ClientGroup AssignClient(int client, int roles, int databases, int coordinators) {
  roles = std::max(roles, 1);
  databases = std::max(databases, 1);
  coordinators = std::max(coordinators, 1);
  const int rest = client / coordinators;
  return {rest % roles, (rest / roles) % databases, client % coordinators};
}

namespace {

// Sums run.clients into `names.size()` groups by `group_of` (a client whose
// index is out of range is left out).
template <typename GroupOf>
std::vector<GroupFigures> SumGroups(const RunData& run, const std::vector<std::string>& names,
                                    GroupOf group_of) {
  std::vector<GroupFigures> groups;
  for (const std::string& name : names) groups.push_back({name, 0, 0, 0});
  for (const ClientFigures& c : run.clients) {
    const int g = group_of(c);
    if (g < 0 || static_cast<size_t>(g) >= groups.size()) continue;
    ++groups[g].clients;
    groups[g].completed += c.completed;
    groups[g].failed += c.failed;
  }
  return groups;
}

}  // namespace

std::vector<GroupFigures> PerRole(const RunData& run) {
  return SumGroups(run, run.roles, [](const ClientFigures& c) { return c.role; });
}

std::vector<GroupFigures> PerDatabase(const RunData& run) {
  return SumGroups(run, run.databases, [](const ClientFigures& c) { return c.database; });
}

std::vector<GroupFigures> PerCoordinator(const RunData& run) {
  return SumGroups(run, run.coordinators, [](const ClientFigures& c) { return c.coordinator; });
}

namespace {

// The first sample in [from, to) at which `holds` is true of every
// worker's per-coordinator counts, as a time since `from`.
template <typename Holds>
std::optional<absl::Duration> FirstHolding(const RunData& run, absl::Duration from,
                                           absl::Duration to, Holds holds) {
  for (const Sample& s : run.samples) {
    if (s.at >= to) break;
    if (s.at < from || s.per_coordinator.size() != run.workers.size()) continue;
    bool all = true;
    for (size_t w = 0; w < s.per_coordinator.size() && all; ++w) {
      all = s.per_coordinator[w].size() == run.coordinators.size() &&
            holds(run.workers[w], s.per_coordinator[w]);
    }
    if (all) return s.at - from;
  }
  return std::nullopt;
}

}  // namespace

ShareTimes MeasureShareTimes(const RunData& run) {
  ShareTimes t;
  const int n = static_cast<int>(run.coordinators.size());
  if (n < 2 || !run.idle.has_value() || run.workers.empty()) return t;
  const size_t last = run.coordinators.size() - 1;
  t.taken = FirstHolding(run, run.idle->from, run.idle->to,
                         [&](const WorkerFigures& w, const std::vector<int>& c) {
                           int others = 0;
                           for (size_t i = 0; i < last; ++i) others += c[i];
                           return w.limit > 0 && others > w.limit * (n - 1) / n;
                         });
  if (run.idle->to < run.duration) {
    t.given_back = FirstHolding(run, run.idle->to, absl::InfiniteDuration(),
                                [&](const WorkerFigures& w, const std::vector<int>& c) {
                                  return w.limit > 0 && c[last] >= w.limit / n;
                                });
  }
  return t;
}

std::vector<std::vector<int64_t>> ThroughputPerSecond(const RunData& run) {
  const size_t seconds = static_cast<size_t>(std::ceil(absl::ToDoubleSeconds(run.duration)));
  const size_t n = std::max<size_t>(run.coordinators.size(), 1);
  std::vector<std::vector<int64_t>> out(seconds, std::vector<int64_t>(n, 0));
  for (const ClientFigures& c : run.clients) {
    if (c.coordinator < 0 || static_cast<size_t>(c.coordinator) >= n) continue;
    for (absl::Duration at : c.completion_times) {
      const int64_t s = absl::ToInt64Seconds(at);
      if (s >= 0 && static_cast<size_t>(s) < seconds) ++out[s][c.coordinator];
    }
  }
  return out;
}

double GroupJainIndex(const std::vector<GroupFigures>& groups) {
  std::vector<double> per_client;
  for (const GroupFigures& g : groups) {
    if (g.clients > 0) per_client.push_back(static_cast<double>(g.completed) / g.clients);
  }
  return JainIndex(per_client);
}

std::vector<Starvation> StarvedGroups(const std::vector<std::vector<absl::Duration>>& completions,
                                      absl::Duration duration, absl::Duration window) {
  std::vector<Starvation> starved;
  if (completions.size() < 2 || window <= absl::ZeroDuration() || duration < window) {
    return starved;
  }
  std::vector<std::vector<absl::Duration>> sorted = completions;
  for (std::vector<absl::Duration>& times : sorted) std::sort(times.begin(), times.end());
  // Completions of group g in [from, to).
  auto count = [&](size_t g, absl::Duration from, absl::Duration to) -> int64_t {
    return std::lower_bound(sorted[g].begin(), sorted[g].end(), to) -
           std::lower_bound(sorted[g].begin(), sorted[g].end(), from);
  };
  auto others = [&](size_t g, absl::Duration from, absl::Duration to) {
    int64_t n = 0;
    for (size_t h = 0; h < sorted.size(); ++h) n += h == g ? 0 : count(h, from, to);
    return n;
  };
  const absl::Duration step = window / 10;
  for (size_t g = 0; g < sorted.size(); ++g) {
    const std::vector<absl::Duration>& times = sorted[g];
    for (absl::Duration start = absl::ZeroDuration(); start + window <= duration; start += step) {
      if (count(g, start, start + window) > 0 || others(g, start, start + window) == 0) continue;
      // The group's whole silent stretch around this window.
      auto next = std::lower_bound(times.begin(), times.end(), start + window);
      const absl::Duration from = next == times.begin() ? absl::ZeroDuration() : *(next - 1);
      const absl::Duration to = next == times.end() ? duration : std::min(*next, duration);
      starved.push_back({static_cast<int>(g), from, to, others(g, from, to)});
      break;
    }
  }
  return starved;
}

void NoteError(RunData& run, const std::string& message) {
  std::string key = message.substr(0, 200);
  for (char& c : key) {
    if (c >= '0' && c <= '9') c = '#';
    if (c == '\n') c = ' ';
  }
  if (key.empty()) key = "(no message)";
  if (run.errors.size() >= kMaxErrorKinds && !run.errors.contains(key)) key = "(other messages)";
  ++run.errors[key];
}

Gap LongestGap(std::vector<absl::Duration> times, absl::Duration duration) {
  std::sort(times.begin(), times.end());
  Gap longest{absl::ZeroDuration(), absl::ZeroDuration()};
  absl::Duration previous = absl::ZeroDuration();
  times.push_back(duration);
  for (absl::Duration t : times) {
    t = std::min(t, duration);
    if (t - previous > longest.to - longest.from) longest = {previous, t};
    previous = std::max(previous, t);
  }
  return longest;
}

namespace {

void Fail(Verdict& v, std::string why) {
  v.passed = false;
  v.violations.push_back(std::move(why));
}

// The monitor's cadence: often enough on average, and never paused long.
void JudgeMonitor(const RunData& run, Verdict& v) {
  const absl::Duration mean = MeanSampleInterval(run);
  if (mean > kMaxSampleInterval) {
    Fail(v, absl::StrCat("the monitor sampled every ", HumanDuration(mean), " on average; at most ",
                         HumanDuration(kMaxSampleInterval), " is required"));
  }
  const absl::Duration gap = LongestSampleGap(run.samples, run.duration);
  if (gap > kMaxSampleGap) {
    Fail(v, absl::StrCat("the monitor went ", HumanDuration(gap), " without a sample (at most ",
                         HumanDuration(kMaxSampleGap), " allowed): a peak could have been missed"));
  }
}

// Every worker's peak within its limit (and forced connections). The limit
// is the node's, across every database: the peak judged is that of all of
// them together; with a per-database bound, each database's peak is judged
// against it too.
void JudgeLimits(const RunData& run, Verdict& v) {
  const bool several = run.coordinators.size() > 1;
  for (const WorkerFigures& w : run.workers) {
    const std::string forced = w.forced > 0 ? absl::StrCat(" + ", w.forced, " forced") : "";
    if (w.limit >= 0 && w.peak > w.limit + w.forced) {
      Fail(v, absl::StrCat("worker ", w.name, ": peak of ", w.peak, " coordinator connections",
                           several                       ? " (all coordinators)"
                           : w.peak_per_database.empty() ? ""
                                                         : " (all databases)",
                           " exceeds the ",
                           w.budget  ? "budget"
                           : several ? "coordinators' limits together"
                                     : "limit",
                           " of ", w.limit, forced));
    }
    for (size_t d = 0; d < w.peak_per_database.size() && w.database_limit >= 0; ++d) {
      if (w.peak_per_database[d] <= w.database_limit + w.forced) continue;
      Fail(v, absl::StrCat("worker ", w.name, ": peak of ", w.peak_per_database[d],
                           " coordinator connections of database ",
                           d < run.databases.size() ? run.databases[d] : absl::StrCat(d + 1),
                           " exceeds the per-database bound of ", w.database_limit, forced));
    }
    for (size_t c = 0; c < w.peak_per_coordinator.size() && c < run.coordinators.size(); ++c) {
      if (w.coordinator_limit < 0 || w.peak_per_coordinator[c] <= w.coordinator_limit + w.forced) {
        continue;
      }
      Fail(v, absl::StrCat("worker ", w.name, ": peak of ", w.peak_per_coordinator[c],
                           " connections from coordinator ", run.coordinators[c],
                           " exceeds its limit of ", w.coordinator_limit, forced));
    }
  }
}

// No client completing nothing for a whole `stall_window`; each stall is
// explained by the failures in it.
void JudgeStalls(const RunData& run, absl::Duration stall_window, Verdict& v) {
  std::vector<std::vector<absl::Duration>> completions;
  const int idle = run.idle.has_value() ? static_cast<int>(run.coordinators.size()) - 1 : -1;
  for (const ClientFigures& c : run.clients) {
    completions.push_back(c.completion_times);
    if (c.coordinator != idle || stall_window <= absl::ZeroDuration()) continue;
    // Idle on purpose: the window counts as busy, so that only a stall
    // before or after it is one.
    const absl::Duration to = std::min(run.idle->to, run.duration);
    for (absl::Duration t = run.idle->from; t <= to; t += stall_window / 20) {
      completions.back().push_back(t);
    }
  }
  for (int c : StalledClients(completions, run.duration, stall_window)) {
    const Gap gap = LongestGap(completions[c], run.duration);
    int failed = 0;
    std::string first;
    for (const auto& [when, error] : run.clients[c].failures) {
      if (when < gap.from || when > gap.to) continue;
      if (failed++ == 0) first = error;
    }
    Fail(v, absl::StrCat(
                "client ", c, " completed nothing from ", HumanDuration(gap.from), " to ",
                HumanDuration(gap.to), " (a stall: ", HumanDuration(stall_window), " allowed); ",
                failed, " operations failed meanwhile",
                first.empty() ? "" : absl::StrCat(", the first with: ", first.substr(0, 300))));
  }
}

// No role completing nothing for a whole `stall_window` while the others
// complete.
void JudgeStarvation(const RunData& run, absl::Duration stall_window, Verdict& v) {
  std::vector<std::vector<absl::Duration>> per_role(run.roles.size());
  for (const ClientFigures& c : run.clients) {
    if (c.role < 0 || static_cast<size_t>(c.role) >= per_role.size()) continue;
    per_role[c.role].insert(per_role[c.role].end(), c.completion_times.begin(),
                            c.completion_times.end());
  }
  for (const Starvation& s : StarvedGroups(per_role, run.duration, stall_window)) {
    Fail(v, absl::StrCat("role ", run.roles[s.group], " completed nothing from ",
                         HumanDuration(s.from), " to ", HumanDuration(s.to),
                         " while the other roles completed ", s.others_completed,
                         " (starved: ", HumanDuration(stall_window), " allowed)"));
  }
}

}  // namespace

Verdict Judge(const RunData& run, absl::Duration settle, absl::Duration stall_window,
              bool judge_timing) {
  Verdict v;
  if (judge_timing) JudgeMonitor(run, v);
  JudgeLimits(run, v);
  if (run.too_many_clients_errors > 0) {
    Fail(v, absl::StrCat(run.too_many_clients_errors, " \"too many clients\" errors"));
  }
  if (run.hung > 0) Fail(v, absl::StrCat(run.hung, " operations hung past their deadline"));
  if (!run.counters_zero_after.has_value() || *run.counters_zero_after > settle) {
    Fail(v, absl::StrCat("shared counters were not back to zero within ", HumanDuration(settle),
                         " after the clients stopped",
                         run.counters_left.empty() ? "" : absl::StrCat(": ", run.counters_left)));
  }
  if (judge_timing) JudgeStalls(run, stall_window, v);
  if (judge_timing && run.roles.size() >= 2) JudgeStarvation(run, stall_window, v);
  return v;
}

}  // namespace connthrottle::stress
