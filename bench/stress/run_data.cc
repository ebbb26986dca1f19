#include "stress/run_data.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace connthrottle::stress {
namespace {

// A duration as a person reads it: "1.234s", "10.4ms".
std::string Dur(absl::Duration d) {
  return absl::FormatDuration(
      absl::Trunc(d, d < absl::Seconds(1) ? absl::Microseconds(100) : absl::Milliseconds(1)));
}

}  // namespace

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

std::vector<std::vector<int>> PeakPerWorkerAndDatabase(const std::vector<Sample>& samples,
                                                       size_t workers, size_t databases) {
  std::vector<std::vector<int>> peak(workers, std::vector<int>(databases, 0));
  for (const Sample& s : samples) {
    for (size_t w = 0; w < workers && w < s.per_database.size(); ++w) {
      for (size_t d = 0; d < databases && d < s.per_database[w].size(); ++d) {
        peak[w][d] = std::max(peak[w][d], s.per_database[w][d]);
      }
    }
  }
  return peak;
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

ClientGroup AssignClient(int client, int roles, int databases) {
  roles = std::max(roles, 1);
  databases = std::max(databases, 1);
  return {client % roles, (client / roles) % databases};
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

Verdict Judge(const RunData& run, absl::Duration settle, absl::Duration stall_window,
              bool judge_timing) {
  Verdict v;
  auto fail = [&](std::string why) {
    v.passed = false;
    v.violations.push_back(std::move(why));
  };
  const absl::Duration mean = MeanSampleInterval(run);
  if (judge_timing && mean > kMaxSampleInterval) {
    fail(absl::StrCat("the monitor sampled every ", Dur(mean), " on average; at most ",
                      Dur(kMaxSampleInterval), " is required"));
  }
  const absl::Duration gap = LongestSampleGap(run.samples, run.duration);
  if (judge_timing && gap > kMaxSampleGap) {
    fail(absl::StrCat("the monitor went ", Dur(gap), " without a sample (at most ",
                      Dur(kMaxSampleGap), " allowed): a peak could have been missed"));
  }
  for (const WorkerFigures& w : run.workers) {
    const std::string forced = w.forced > 0 ? absl::StrCat(" + ", w.forced, " forced") : "";
    if (w.limit >= 0 && w.peak_per_database.empty() && w.peak > w.limit + w.forced) {
      fail(absl::StrCat("worker ", w.name, ": peak of ", w.peak,
                        " coordinator connections exceeds the limit of ", w.limit, forced));
    }
    // The extension counts per (node, database): each database has the limit.
    for (size_t d = 0; w.limit >= 0 && d < w.peak_per_database.size(); ++d) {
      if (w.peak_per_database[d] <= w.limit + w.forced) continue;
      fail(absl::StrCat("worker ", w.name, ", database ",
                        d < run.databases.size() ? run.databases[d] : absl::StrCat(d + 1),
                        ": peak of ", w.peak_per_database[d],
                        " coordinator connections exceeds the limit of ", w.limit, forced));
    }
  }
  if (run.too_many_clients_errors > 0) {
    fail(absl::StrCat(run.too_many_clients_errors, " \"too many clients\" errors"));
  }
  if (run.hung > 0) fail(absl::StrCat(run.hung, " operations hung past their deadline"));
  if (!run.counters_zero_after.has_value() || *run.counters_zero_after > settle) {
    fail(absl::StrCat("shared counters were not back to zero within ", Dur(settle),
                      " after the clients stopped",
                      run.counters_left.empty() ? "" : absl::StrCat(": ", run.counters_left)));
  }
  std::vector<std::vector<absl::Duration>> completions;
  for (const ClientFigures& c : run.clients) completions.push_back(c.completion_times);
  for (int c : judge_timing ? StalledClients(completions, run.duration, stall_window)
                            : std::vector<int>{}) {
    const Gap gap = LongestGap(completions[c], run.duration);
    int failed = 0;
    std::string first;
    for (const auto& [when, error] : run.clients[c].failures) {
      if (when < gap.from || when > gap.to) continue;
      if (failed++ == 0) first = error;
    }
    fail(absl::StrCat(
        "client ", c, " completed nothing from ", Dur(gap.from), " to ", Dur(gap.to),
        " (a stall: ", Dur(stall_window), " allowed); ", failed, " operations failed meanwhile",
        first.empty() ? "" : absl::StrCat(", the first with: ", first.substr(0, 300))));
  }
  if (judge_timing && run.roles.size() >= 2) {
    std::vector<std::vector<absl::Duration>> per_role(run.roles.size());
    for (const ClientFigures& c : run.clients) {
      if (c.role < 0 || static_cast<size_t>(c.role) >= per_role.size()) continue;
      per_role[c.role].insert(per_role[c.role].end(), c.completion_times.begin(),
                              c.completion_times.end());
    }
    for (const Starvation& s : StarvedGroups(per_role, run.duration, stall_window)) {
      fail(absl::StrCat("role ", run.roles[s.group], " completed nothing from ", Dur(s.from),
                        " to ", Dur(s.to), " while the other roles completed ", s.others_completed,
                        " (starved: ", Dur(stall_window), " allowed)"));
    }
  }
  return v;
}

namespace {

struct Summary {
  double throughput = 0;  // queries per second
  double jain = 1;
  int64_t min_completed = 0, max_completed = 0;
  double sessions_per_query = 0;
  double backends_per_query = -1;  // -1: not measured
};

Summary Summarize(const RunData& run) {
  Summary s;
  const double seconds = std::max(absl::ToDoubleSeconds(run.duration), 1e-9);
  s.throughput = static_cast<double>(run.queries) / seconds;
  std::vector<double> per_client;
  for (const ClientFigures& c : run.clients) per_client.push_back(static_cast<double>(c.completed));
  s.jain = JainIndex(per_client);
  if (!run.clients.empty()) {
    auto [lo, hi] =
        std::minmax_element(run.clients.begin(), run.clients.end(),
                            [](const auto& a, const auto& b) { return a.completed < b.completed; });
    s.min_completed = lo->completed;
    s.max_completed = hi->completed;
  }
  int64_t sessions = 0, backends = 0;
  bool backends_known = !run.workers.empty();
  for (const WorkerFigures& w : run.workers) {
    sessions += w.sessions_opened;
    backends += w.backends_started;
    backends_known = backends_known && w.backends_started >= 0;
  }
  auto per_query = [&](int64_t n) {
    return run.queries > 0 ? static_cast<double>(n) / static_cast<double>(run.queries) : 0;
  };
  s.sessions_per_query = per_query(sessions);
  s.backends_per_query = backends_known ? per_query(backends) : -1;
  return s;
}

std::string Ms(int64_t micros) { return absl::StrFormat("%.1f ms", micros / 1000.0); }

}  // namespace

// "throttled run", or the throttled runs by their labels.
static std::string ThrottledLabels(const std::vector<RunData>& runs) {
  std::vector<std::string> labels;
  for (const RunData& r : runs) {
    if (r.label != "unthrottled") labels.push_back(r.label);
  }
  if (labels.size() == 1) return absl::StrCat(labels[0], " run");
  return absl::StrCat("runs: ", absl::StrJoin(labels, "; "));
}

std::string TextReport(const std::vector<RunData>& runs, const Verdict& verdict) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({""});
  for (const RunData& r : runs) rows[0].push_back(r.label);
  auto row = [&](std::string name, auto value) {
    std::vector<std::string> line = {std::move(name)};
    for (const RunData& r : runs) line.push_back(value(r));
    rows.push_back(std::move(line));
  };
  row("duration", [](const RunData& r) { return Dur(r.duration); });
  row("clients", [](const RunData& r) { return absl::StrCat(r.clients.size()); });
  row("queries completed", [](const RunData& r) { return absl::StrCat(r.queries); });
  row("throughput",
      [](const RunData& r) { return absl::StrFormat("%.1f q/s", Summarize(r).throughput); });
  row("latency p50", [](const RunData& r) { return Ms(r.latency.Percentile(50)); });
  row("latency p99", [](const RunData& r) { return Ms(r.latency.Percentile(99)); });
  row("latency max", [](const RunData& r) { return Ms(r.latency.Max()); });
  std::set<std::string> kinds;
  for (const RunData& r : runs) {
    for (const auto& [kind, l] : r.latency_by_kind) kinds.insert(kind);
  }
  for (const std::string& kind : kinds) {
    row(absl::StrCat("latency p50, ", kind), [&kind](const RunData& r) {
      auto it = r.latency_by_kind.find(kind);
      return it == r.latency_by_kind.end() ? std::string("-") : Ms(it->second.Percentile(50));
    });
  }
  row("\"too many clients\" errors",
      [](const RunData& r) { return absl::StrCat(r.too_many_clients_errors); });
  if (!runs.empty() && SeveralRolesOrDatabases(runs[0])) {
    row("operations failed with SQLSTATE 53300",
        [](const RunData& r) { return absl::StrCat(r.sqlstate_53300_errors); });
  }
  row("other errors", [](const RunData& r) { return absl::StrCat(r.other_errors); });
  row("hung operations", [](const RunData& r) { return absl::StrCat(r.hung); });
  const size_t workers = runs.empty() ? 0 : runs[0].workers.size();
  for (size_t w = 0; w < workers; ++w) {
    row(absl::StrCat("peak connections, ", runs[0].workers[w].name), [w](const RunData& r) {
      if (w >= r.workers.size()) return std::string("-");
      const WorkerFigures& f = r.workers[w];
      return absl::StrCat(f.peak, " (limit ", f.limit < 0 ? "off" : absl::StrCat(f.limit),
                          f.limit >= 0 && !f.peak_per_database.empty() ? " per database" : "",
                          ", max_connections ", f.max_connections, ")");
    });
    for (size_t d = 0; d < runs[0].workers[w].peak_per_database.size(); ++d) {
      const std::string database =
          d < runs[0].databases.size() ? runs[0].databases[d] : absl::StrCat(d + 1);
      row(absl::StrCat("peak connections, ", runs[0].workers[w].name, ", ", database),
          [w, d](const RunData& r) {
            if (w >= r.workers.size() || d >= r.workers[w].peak_per_database.size()) {
              return std::string("-");
            }
            return absl::StrCat(r.workers[w].peak_per_database[d]);
          });
    }
  }
  row("worker backends started per query", [](const RunData& r) {
    const double b = Summarize(r).backends_per_query;
    return b < 0 ? std::string("- (not our cluster)") : absl::StrFormat("%.3f", b);
  });
  row("worker sessions per query",
      [](const RunData& r) { return absl::StrFormat("%.3f", Summarize(r).sessions_per_query); });
  row("waits (queued acquires) / wake-ups per wait", [](const RunData& r) {
    if (r.waits < 0 || r.wakeups < 0) return std::string("-");
    return absl::StrCat(r.waits, " / ",
                        r.waits == 0 ? std::string("-")
                                     : absl::StrFormat("%.2f", static_cast<double>(r.wakeups) /
                                                                   static_cast<double>(r.waits)));
  });
  row("per-client completions min/max", [](const RunData& r) {
    Summary s = Summarize(r);
    return absl::StrCat(s.min_completed, " / ", s.max_completed);
  });
  row("Jain's fairness index",
      [](const RunData& r) { return absl::StrFormat("%.3f", Summarize(r).jain); });
  if (!runs.empty() && SeveralRolesOrDatabases(runs[0])) {
    // Every run of one invocation has the same roles and databases.
    auto groups = [&row](const std::string& kind, const std::vector<GroupFigures>& names,
                         std::vector<GroupFigures> (*per)(const RunData&)) {
      for (size_t g = 0; g < names.size(); ++g) {
        row(absl::StrCat("completions, ", kind, " ", names[g].name), [g, per](const RunData& r) {
          const std::vector<GroupFigures> figures = per(r);
          if (g >= figures.size()) return std::string("-");
          return absl::StrCat(figures[g].completed, " (", figures[g].clients, " clients, ",
                              figures[g].failed, " failed)");
        });
      }
    };
    groups("role", PerRole(runs[0]), PerRole);
    groups("database", PerDatabase(runs[0]), PerDatabase);
    row("Jain's index across roles (per client)",
        [](const RunData& r) { return absl::StrFormat("%.3f", GroupJainIndex(PerRole(r))); });
  }
  row("monitor samples (mean / longest gap)", [](const RunData& r) {
    return absl::StrCat(r.samples.size(), " (", Dur(MeanSampleInterval(r)), " / ",
                        Dur(LongestSampleGap(r.samples, r.duration)), ")");
  });
  row("faults injected", [](const RunData& r) {
    return absl::StrCat(r.faults.clients_killed, " kills, ",
                        r.faults.coordinator_backends_terminated, " coord. terminations, ",
                        r.faults.worker_backends_terminated, " worker terminations, ",
                        r.faults.worker_restarts, " worker restarts");
  });
  row("counters back to zero", [](const RunData& r) {
    if (!r.counters_zero_after.has_value()) return std::string("NO");
    if (*r.counters_zero_after == absl::ZeroDuration()) return std::string("at once");
    return absl::StrCat("after ", Dur(*r.counters_zero_after));
  });
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& line : rows) {
    for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  }
  std::string out;
  for (size_t l = 0; l < rows.size(); ++l) {
    for (size_t i = 0; i < rows[l].size(); ++i) {
      absl::StrAppend(&out, i == 0 ? "" : "  ", rows[l][i],
                      std::string(width[i] - rows[l][i].size(), ' '));
    }
    absl::StrAppend(&out, "\n");
    if (l == 0) {
      size_t total = 0;
      for (size_t w : width) total += w + 2;
      absl::StrAppend(&out, std::string(total - 2, '-'), "\n");
    }
  }
  for (const RunData& r : runs) {
    if (r.errors.empty()) continue;
    absl::StrAppend(&out, "\nerrors in the ", r.label, " run:\n");
    for (const auto& [message, count] : r.errors) {
      absl::StrAppend(&out, absl::StrFormat("  %6d  %s\n", count, message));
    }
  }
  absl::StrAppend(&out, "\n", verdict.passed ? "PASSED" : "FAILED", ": every invariant ",
                  verdict.passed ? "held" : "did not hold", " (", ThrottledLabels(runs), ")\n");
  for (const std::string& v : verdict.violations) absl::StrAppend(&out, "  - ", v, "\n");
  return out;
}

namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// "name":[{"name":...,"clients":...,"completed":...},...]
std::string JsonGroups(const std::string& name, const std::vector<GroupFigures>& groups) {
  std::vector<std::string> parts;
  for (const GroupFigures& g : groups) {
    parts.push_back(absl::StrCat("{\"name\":", JsonString(g.name), ",\"clients\":", g.clients,
                                 ",\"completed\":", g.completed, ",\"failed\":", g.failed, "}"));
  }
  return absl::StrCat(JsonString(name), ":[", absl::StrJoin(parts, ","), "]");
}

std::string JsonErrors(const std::map<std::string, int64_t>& errors) {
  std::vector<std::string> parts;
  for (const auto& [message, count] : errors) {
    parts.push_back(absl::StrCat(JsonString(message), ":", count));
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace

std::string JsonReport(const std::vector<RunData>& runs, const Verdict& verdict) {
  std::vector<std::string> parts;
  for (const RunData& r : runs) {
    Summary s = Summarize(r);
    std::vector<std::string> workers;
    for (const WorkerFigures& w : r.workers) {
      workers.push_back(absl::StrCat(
          "{\"name\":", JsonString(w.name), ",\"limit\":", w.limit, ",\"max_connections\":",
          w.max_connections, ",\"peak\":", w.peak, ",\"forced\":", w.forced,
          ",\"sessions_opened\":", w.sessions_opened, ",\"backends_started\":", w.backends_started,
          w.peak_per_database.empty() ? ""
                                      : absl::StrCat(",\"peak_per_database\":[",
                                                     absl::StrJoin(w.peak_per_database, ","), "]"),
          "}"));
    }
    // Only when there is more than one role or database, so that a report
    // of the default run is what it was before.
    const std::string groups =
        SeveralRolesOrDatabases(r)
            ? absl::StrCat(",", JsonGroups("roles", PerRole(r)), ",",
                           JsonGroups("databases", PerDatabase(r)),
                           ",\"jain_index_roles\":", GroupJainIndex(PerRole(r)),
                           ",\"sqlstate_53300_errors\":", r.sqlstate_53300_errors)
            : "";
    std::vector<std::string> clients;
    for (const ClientFigures& c : r.clients) clients.push_back(absl::StrCat(c.completed));
    std::vector<std::string> kinds;
    for (const auto& [kind, l] : r.latency_by_kind) {
      kinds.push_back(absl::StrCat(JsonString(kind), ":", l.Percentile(50)));
    }
    parts.push_back(absl::StrCat(
        "{\"label\":", JsonString(r.label), ",\"duration_s\":", absl::ToDoubleSeconds(r.duration),
        ",\"queries\":", r.queries, ",\"throughput_qps\":", s.throughput,
        ",\"latency_us\":{\"p50\":", r.latency.Percentile(50), ",\"p99\":",
        r.latency.Percentile(99), ",\"max\":", r.latency.Max(), "},\"latency_p50_us_by_kind\":{",
        absl::StrJoin(kinds, ","), "},\"too_many_clients_errors\":", r.too_many_clients_errors,
        ",\"other_errors\":", r.other_errors, ",\"hung\":", r.hung, ",\"workers\":[",
        absl::StrJoin(workers, ","), "],\"completed_per_client\":[", absl::StrJoin(clients, ","),
        "],\"errors\":{", JsonErrors(r.errors), "},\"jain_index\":", s.jain, groups,
        ",\"waits\":", r.waits, ",\"wakeups\":", r.wakeups,
        ",\"worker_sessions_per_query\":", s.sessions_per_query, ",\"worker_backends_per_query\":",
        s.backends_per_query < 0 ? std::string("null") : absl::StrCat(s.backends_per_query),
        ",\"faults\":{\"clients_killed\":", r.faults.clients_killed,
        ",\"coordinator_backends_terminated\":", r.faults.coordinator_backends_terminated,
        ",\"worker_backends_terminated\":", r.faults.worker_backends_terminated,
        ",\"worker_restarts\":", r.faults.worker_restarts, "},\"samples\":", r.samples.size(),
        ",\"mean_sample_interval_s\":", absl::ToDoubleSeconds(MeanSampleInterval(r)),
        ",\"longest_sample_gap_s\":",
        absl::ToDoubleSeconds(LongestSampleGap(r.samples, r.duration)),
        ",\"counters_zero_after_s\":",
        r.counters_zero_after.has_value()
            ? absl::StrCat(absl::ToDoubleSeconds(*r.counters_zero_after))
            : std::string("null"),
        "}"));
  }
  std::vector<std::string> violations;
  for (const std::string& v : verdict.violations) violations.push_back(JsonString(v));
  return absl::StrCat("{\"passed\":", verdict.passed ? "true" : "false", ",\"violations\":[",
                      absl::StrJoin(violations, ","), "],\"runs\":[", absl::StrJoin(parts, ","),
                      "]}\n");
}

std::string SeriesCsv(const RunData& run) {
  std::string out = "seconds";
  for (const WorkerFigures& w : run.workers) absl::StrAppend(&out, ",", w.name);
  absl::StrAppend(&out, "\n");
  for (const Sample& s : run.samples) {
    absl::StrAppend(&out, absl::StrFormat("%.3f", absl::ToDoubleSeconds(s.at)));
    for (int c : s.coordinator_connections) absl::StrAppend(&out, ",", c);
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string GnuplotScript(const std::vector<RunData>& runs,
                          const std::vector<std::string>& csv_files, const std::string& png) {
  std::string script =
      absl::StrCat("set terminal pngcairo size 1200,", 320 * std::max<size_t>(runs.size(), 1),
                   " font 'sans,10' noenhanced\n", "set output '", png, "'\n",
                   "set datafile separator ','\n", "set key outside right\n", "set grid\n",
                   "set xlabel 'seconds'\n", "set ylabel 'connections from the coordinator'\n");
  absl::StrAppend(&script, "set multiplot layout ", runs.size(), ",1\n");
  for (size_t r = 0; r < runs.size(); ++r) {
    const RunData& run = runs[r];
    int top = 0;
    for (const WorkerFigures& w : run.workers) top = std::max({top, w.peak, w.max_connections});
    absl::StrAppend(&script, "set title '", run.label, "'\n", "set yrange [0:", top + 5, "]\n");
    std::vector<std::string> plots;
    for (size_t w = 0; w < run.workers.size(); ++w) {
      plots.push_back(absl::StrCat("'", csv_files[r], "' using 1:", w + 2,
                                   " with steps lw 2 title '", run.workers[w].name, "'"));
    }
    if (!run.workers.empty()) {
      const WorkerFigures& w0 = run.workers[0];
      if (w0.limit >= 0) {
        plots.push_back(absl::StrCat(w0.limit, " with lines dt 2 lw 2 lc 'red' title 'limit (",
                                     w0.limit, ")'"));
      }
      plots.push_back(absl::StrCat(w0.max_connections,
                                   " with lines dt 3 lw 1 lc 'black' title 'worker "
                                   "max_connections (",
                                   w0.max_connections, ")'"));
    }
    absl::StrAppend(&script, "plot ", absl::StrJoin(plots, ", \\\n     "), "\n");
  }
  absl::StrAppend(&script, "unset multiplot\n");
  return script;
}

}  // namespace connthrottle::stress
