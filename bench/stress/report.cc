// The reports: the text table (a row of figures per line, built by topic),
// the JSON report (an object per run), the CSV series and the gnuplot
// script. A default run's report is pinned by run_data_test.cc.

#include "stress/report.h"

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace connthrottle::stress {
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

// "throttled run", or the throttled runs by their labels.
std::string ThrottledLabels(const std::vector<RunData>& runs) {
  std::vector<std::string> labels;
  for (const RunData& r : runs) {
    if (r.label != "unthrottled") labels.push_back(r.label);
  }
  if (labels.size() == 1) return absl::StrCat(labels[0], " run");
  return absl::StrCat("runs: ", absl::StrJoin(labels, "; "));
}

// ---- the text report -------------------------------------------------------------

// The text report's table: a column of names, then a column per run.
class Table {
 public:
  explicit Table(const std::vector<RunData>& runs) : runs_(runs) {
    rows_.push_back({""});
    for (const RunData& r : runs) rows_[0].push_back(r.label);
  }

  // A row `name`, with `value` of each run.
  void Row(std::string name, const std::function<std::string(const RunData&)>& value) {
    std::vector<std::string> line = {std::move(name)};
    for (const RunData& r : runs_) line.push_back(value(r));
    rows_.push_back(std::move(line));
  }

  // The rows with their columns aligned, the header underlined.
  std::string Render() const {
    std::vector<size_t> width(rows_[0].size(), 0);
    for (const auto& line : rows_) {
      for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
    }
    std::string out;
    for (size_t l = 0; l < rows_.size(); ++l) {
      for (size_t i = 0; i < rows_[l].size(); ++i) {
        absl::StrAppend(&out, i == 0 ? "" : "  ", rows_[l][i],
                        std::string(width[i] - rows_[l][i].size(), ' '));
      }
      absl::StrAppend(&out, "\n");
      if (l == 0) {
        size_t total = 0;
        for (size_t w : width) total += w + 2;
        absl::StrAppend(&out, std::string(total - 2, '-'), "\n");
      }
    }
    return out;
  }

 private:
  const std::vector<RunData>& runs_;
  std::vector<std::vector<std::string>> rows_;
};

// How much was done and how fast: throughput and latencies (per kind too).
void AddThroughputRows(Table& table, const std::vector<RunData>& runs) {
  table.Row("duration", [](const RunData& r) { return HumanDuration(r.duration); });
  table.Row("clients", [](const RunData& r) { return absl::StrCat(r.clients.size()); });
  table.Row("queries completed", [](const RunData& r) { return absl::StrCat(r.queries); });
  table.Row("throughput",
            [](const RunData& r) { return absl::StrFormat("%.1f q/s", Summarize(r).throughput); });
  table.Row("latency p50", [](const RunData& r) { return Ms(r.latency.Percentile(50)); });
  table.Row("latency p99", [](const RunData& r) { return Ms(r.latency.Percentile(99)); });
  table.Row("latency max", [](const RunData& r) { return Ms(r.latency.Max()); });
  std::set<std::string> kinds;
  for (const RunData& r : runs) {
    for (const auto& [kind, l] : r.latency_by_kind) kinds.insert(kind);
  }
  for (const std::string& kind : kinds) {
    table.Row(absl::StrCat("latency p50, ", kind), [&kind](const RunData& r) {
      auto it = r.latency_by_kind.find(kind);
      return it == r.latency_by_kind.end() ? std::string("-") : Ms(it->second.Percentile(50));
    });
  }
}

void AddErrorRows(Table& table, const std::vector<RunData>& runs) {
  table.Row("\"too many clients\" errors",
            [](const RunData& r) { return absl::StrCat(r.too_many_clients_errors); });
  if (!runs.empty() && SeveralRolesOrDatabases(runs[0])) {
    table.Row("operations failed with SQLSTATE 53300",
              [](const RunData& r) { return absl::StrCat(r.sqlstate_53300_errors); });
  }
  table.Row("other errors", [](const RunData& r) { return absl::StrCat(r.other_errors); });
  table.Row("hung operations", [](const RunData& r) { return absl::StrCat(r.hung); });
}

// Each worker's peak against its limit (per database too where several).
void AddPeakRows(Table& table, const std::vector<RunData>& runs) {
  const size_t workers = runs.empty() ? 0 : runs[0].workers.size();
  for (size_t w = 0; w < workers; ++w) {
    table.Row(absl::StrCat("peak connections, ", runs[0].workers[w].name), [w](const RunData& r) {
      if (w >= r.workers.size()) return std::string("-");
      const WorkerFigures& f = r.workers[w];
      const bool several = !f.peak_per_coordinator.empty();
      return absl::StrCat(f.peak, several ? " (budget " : " (limit ",
                          f.limit < 0 ? "off" : absl::StrCat(f.limit),
                          f.limit >= 0 && several                        ? ", all coordinators"
                          : f.limit >= 0 && !f.peak_per_database.empty() ? ", all databases"
                                                                         : "",
                          ", max_connections ", f.max_connections, ")");
    });
    for (size_t c = 0; c < runs[0].workers[w].peak_per_coordinator.size(); ++c) {
      const std::string coordinator =
          c < runs[0].coordinators.size() ? runs[0].coordinators[c] : absl::StrCat(c + 1);
      table.Row(absl::StrCat("peak connections, ", runs[0].workers[w].name, ", ", coordinator),
                [w, c](const RunData& r) {
                  if (w >= r.workers.size() || c >= r.workers[w].peak_per_coordinator.size()) {
                    return std::string("-");
                  }
                  const WorkerFigures& f = r.workers[w];
                  return absl::StrCat(f.peak_per_coordinator[c], " (limit ",
                                      f.coordinator_limit < 0 ? std::string("off")
                                                              : absl::StrCat(f.coordinator_limit),
                                      ")");
                });
    }
    for (size_t d = 0; d < runs[0].workers[w].peak_per_database.size(); ++d) {
      const std::string database =
          d < runs[0].databases.size() ? runs[0].databases[d] : absl::StrCat(d + 1);
      table.Row(absl::StrCat("peak connections, ", runs[0].workers[w].name, ", ", database),
                [w, d](const RunData& r) {
                  if (w >= r.workers.size() || d >= r.workers[w].peak_per_database.size()) {
                    return std::string("-");
                  }
                  const WorkerFigures& f = r.workers[w];
                  return absl::StrCat(f.peak_per_database[d],
                                      f.database_limit < 0 ? std::string()
                                                           : absl::StrCat(" (per-database bound ",
                                                                          f.database_limit, ")"));
                });
    }
  }
}

// What the queries cost the workers, and the waits for a slot.
void AddCostRows(Table& table) {
  table.Row("worker backends started per query", [](const RunData& r) {
    const double b = Summarize(r).backends_per_query;
    return b < 0 ? std::string("- (not our cluster)") : absl::StrFormat("%.3f", b);
  });
  table.Row("worker sessions per query", [](const RunData& r) {
    return absl::StrFormat("%.3f", Summarize(r).sessions_per_query);
  });
  table.Row("waits (queued acquires) / wake-ups per wait", [](const RunData& r) {
    if (r.waits < 0 || r.wakeups < 0) return std::string("-");
    return absl::StrCat(r.waits, " / ",
                        r.waits == 0 ? std::string("-")
                                     : absl::StrFormat("%.2f", static_cast<double>(r.wakeups) /
                                                                   static_cast<double>(r.waits)));
  });
}

// Completions per role or per database (`per`), a row per group of `names`.
void AddGroupRows(Table& table, const std::string& kind, const std::vector<GroupFigures>& names,
                  std::vector<GroupFigures> (*per)(const RunData&)) {
  for (size_t g = 0; g < names.size(); ++g) {
    table.Row(absl::StrCat("completions, ", kind, " ", names[g].name), [g, per](const RunData& r) {
      const std::vector<GroupFigures> figures = per(r);
      if (g >= figures.size()) return std::string("-");
      return absl::StrCat(figures[g].completed, " (", figures[g].clients, " clients, ",
                          figures[g].failed, " failed)");
    });
  }
}

std::string OptionalSeconds(const std::optional<absl::Duration>& d) {
  return d.has_value() ? HumanDuration(*d) : std::string("-");
}

// Several coordinators: each one's completions, Jain's index across them
// (per client, as for roles) and how fast the budget moved around the idle
// window.
void AddCoordinatorRows(Table& table, const std::vector<RunData>& runs) {
  AddGroupRows(table, "coordinator", PerCoordinator(runs[0]), PerCoordinator);
  table.Row("Jain's index across coordinators (per client)", [](const RunData& r) {
    return absl::StrFormat("%.3f", GroupJainIndex(PerCoordinator(r)));
  });
  if (!runs[0].idle.has_value()) return;
  table.Row("idle coordinator's share taken by the others after",
            [](const RunData& r) { return OptionalSeconds(MeasureShareTimes(r).taken); });
  table.Row("its share back once busy again after",
            [](const RunData& r) { return OptionalSeconds(MeasureShareTimes(r).given_back); });
}

// How evenly the clients (and with several, the roles and databases) fared.
void AddFairnessRows(Table& table, const std::vector<RunData>& runs) {
  table.Row("per-client completions min/max", [](const RunData& r) {
    Summary s = Summarize(r);
    return absl::StrCat(s.min_completed, " / ", s.max_completed);
  });
  table.Row("Jain's fairness index",
            [](const RunData& r) { return absl::StrFormat("%.3f", Summarize(r).jain); });
  if (!runs.empty() && SeveralRolesOrDatabases(runs[0])) {
    // Every run of one invocation has the same roles and databases.
    AddGroupRows(table, "role", PerRole(runs[0]), PerRole);
    AddGroupRows(table, "database", PerDatabase(runs[0]), PerDatabase);
    table.Row("Jain's index across roles (per client)",
              [](const RunData& r) { return absl::StrFormat("%.3f", GroupJainIndex(PerRole(r))); });
  }
  if (!runs.empty() && runs[0].coordinators.size() > 1) AddCoordinatorRows(table, runs);
}

// The monitor, the faults and the counters after the run.
void AddRunRows(Table& table) {
  table.Row("monitor samples (mean / longest gap)", [](const RunData& r) {
    return absl::StrCat(r.samples.size(), " (", HumanDuration(MeanSampleInterval(r)), " / ",
                        HumanDuration(LongestSampleGap(r.samples, r.duration)), ")");
  });
  table.Row("faults injected", [](const RunData& r) {
    return absl::StrCat(r.faults.clients_killed, " kills, ",
                        r.faults.coordinator_backends_terminated, " coord. terminations, ",
                        r.faults.worker_backends_terminated, " worker terminations, ",
                        r.faults.worker_restarts, " worker restarts");
  });
  table.Row("counters back to zero", [](const RunData& r) {
    if (!r.counters_zero_after.has_value()) return std::string("NO");
    if (*r.counters_zero_after == absl::ZeroDuration()) return std::string("at once");
    return absl::StrCat("after ", HumanDuration(*r.counters_zero_after));
  });
}

// Each run's error messages, with how often.
std::string ErrorLists(const std::vector<RunData>& runs) {
  std::string out;
  for (const RunData& r : runs) {
    if (r.errors.empty()) continue;
    absl::StrAppend(&out, "\nerrors in the ", r.label, " run:\n");
    for (const auto& [message, count] : r.errors) {
      absl::StrAppend(&out, absl::StrFormat("  %6d  %s\n", count, message));
    }
  }
  return out;
}

// ---- the JSON report -------------------------------------------------------------

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

// {"name":...,"limit":...,...},... for each worker of `run`.
std::string JsonWorkers(const RunData& run) {
  std::vector<std::string> workers;
  for (const WorkerFigures& w : run.workers) {
    workers.push_back(absl::StrCat(
        "{\"name\":", JsonString(w.name), ",\"limit\":", w.limit,
        ",\"max_connections\":", w.max_connections, ",\"peak\":", w.peak, ",\"forced\":", w.forced,
        ",\"sessions_opened\":", w.sessions_opened, ",\"backends_started\":", w.backends_started,
        w.peak_per_database.empty() ? ""
                                    : absl::StrCat(",\"peak_per_database\":[",
                                                   absl::StrJoin(w.peak_per_database, ","), "]"),
        w.peak_per_coordinator.empty()
            ? ""
            : absl::StrCat(",\"budget\":", w.budget ? "true" : "false", ",\"coordinator_limit\":",
                           w.coordinator_limit, ",\"peak_per_coordinator\":[",
                           absl::StrJoin(w.peak_per_coordinator, ","), "]"),
        "}"));
  }
  return absl::StrJoin(workers, ",");
}

// The roles' and databases' figures: only when there is more than one role
// or database, so that a report of the default run is what it was before.
std::string JsonRolesAndDatabases(const RunData& r) {
  if (!SeveralRolesOrDatabases(r)) return "";
  return absl::StrCat(",", JsonGroups("roles", PerRole(r)), ",",
                      JsonGroups("databases", PerDatabase(r)),
                      ",\"jain_index_roles\":", GroupJainIndex(PerRole(r)),
                      ",\"sqlstate_53300_errors\":", r.sqlstate_53300_errors);
}

std::string JsonSeconds(const std::optional<absl::Duration>& d) {
  return d.has_value() ? absl::StrCat(absl::ToDoubleSeconds(*d)) : std::string("null");
}

// The coordinators' figures: only with several coordinators.
std::string JsonCoordinators(const RunData& r) {
  if (r.coordinators.size() <= 1) return "";
  const ShareTimes t = MeasureShareTimes(r);
  std::vector<std::string> series;
  for (const std::vector<int64_t>& second : ThroughputPerSecond(r)) {
    series.push_back(absl::StrCat("[", absl::StrJoin(second, ","), "]"));
  }
  return absl::StrCat(",", JsonGroups("coordinators", PerCoordinator(r)),
                      ",\"jain_index_coordinators\":", GroupJainIndex(PerCoordinator(r)),
                      ",\"share_taken_s\":", JsonSeconds(t.taken),
                      ",\"share_given_back_s\":", JsonSeconds(t.given_back),
                      ",\"completions_per_second\":[", absl::StrJoin(series, ","), "]");
}

// One run's object of the JSON report.
std::string JsonRun(const RunData& r) {
  Summary s = Summarize(r);
  std::vector<std::string> clients;
  for (const ClientFigures& c : r.clients) clients.push_back(absl::StrCat(c.completed));
  std::vector<std::string> kinds;
  for (const auto& [kind, l] : r.latency_by_kind) {
    kinds.push_back(absl::StrCat(JsonString(kind), ":", l.Percentile(50)));
  }
  return absl::StrCat(
      "{\"label\":", JsonString(r.label), ",\"duration_s\":", absl::ToDoubleSeconds(r.duration),
      ",\"queries\":", r.queries, ",\"throughput_qps\":", s.throughput,
      ",\"latency_us\":{\"p50\":", r.latency.Percentile(50), ",\"p99\":", r.latency.Percentile(99),
      ",\"max\":", r.latency.Max(), "},\"latency_p50_us_by_kind\":{", absl::StrJoin(kinds, ","),
      "},\"too_many_clients_errors\":", r.too_many_clients_errors,
      ",\"other_errors\":", r.other_errors, ",\"hung\":", r.hung, ",\"workers\":[", JsonWorkers(r),
      "],\"completed_per_client\":[", absl::StrJoin(clients, ","), "],\"errors\":{",
      JsonErrors(r.errors), "},\"jain_index\":", s.jain, JsonRolesAndDatabases(r),
      JsonCoordinators(r), ",\"waits\":", r.waits, ",\"wakeups\":", r.wakeups,
      ",\"worker_sessions_per_query\":", s.sessions_per_query, ",\"worker_backends_per_query\":",
      s.backends_per_query < 0 ? std::string("null") : absl::StrCat(s.backends_per_query),
      ",\"faults\":{\"clients_killed\":", r.faults.clients_killed,
      ",\"coordinator_backends_terminated\":", r.faults.coordinator_backends_terminated,
      ",\"worker_backends_terminated\":", r.faults.worker_backends_terminated,
      ",\"worker_restarts\":", r.faults.worker_restarts, "},\"samples\":", r.samples.size(),
      ",\"mean_sample_interval_s\":", absl::ToDoubleSeconds(MeanSampleInterval(r)),
      ",\"longest_sample_gap_s\":", absl::ToDoubleSeconds(LongestSampleGap(r.samples, r.duration)),
      ",\"counters_zero_after_s\":",
      r.counters_zero_after.has_value()
          ? absl::StrCat(absl::ToDoubleSeconds(*r.counters_zero_after))
          : std::string("null"),
      "}");
}

}  // namespace

std::string TextReport(const std::vector<RunData>& runs, const Verdict& verdict) {
  Table table(runs);
  AddThroughputRows(table, runs);
  AddErrorRows(table, runs);
  AddPeakRows(table, runs);
  AddCostRows(table);
  AddFairnessRows(table, runs);
  AddRunRows(table);
  std::string out = table.Render() + ErrorLists(runs);
  absl::StrAppend(&out, "\n", verdict.passed ? "PASSED" : "FAILED", ": every invariant ",
                  verdict.passed ? "held" : "did not hold", " (", ThrottledLabels(runs), ")\n");
  for (const std::string& v : verdict.violations) absl::StrAppend(&out, "  - ", v, "\n");
  return out;
}

std::string JsonReport(const std::vector<RunData>& runs, const Verdict& verdict) {
  std::vector<std::string> parts;
  for (const RunData& r : runs) parts.push_back(JsonRun(r));
  std::vector<std::string> violations;
  for (const std::string& v : verdict.violations) violations.push_back(JsonString(v));
  return absl::StrCat("{\"passed\":", verdict.passed ? "true" : "false", ",\"violations\":[",
                      absl::StrJoin(violations, ","), "],\"runs\":[", absl::StrJoin(parts, ","),
                      "]}\n");
}

std::string SeriesCsv(const RunData& run) {
  std::string out = "seconds";
  for (const WorkerFigures& w : run.workers) absl::StrAppend(&out, ",", w.name);
  const size_t coordinators = run.coordinators.size() > 1 ? run.coordinators.size() : 0;
  for (const WorkerFigures& w : run.workers) {
    for (size_t c = 0; c < coordinators; ++c) {
      absl::StrAppend(&out, ",", w.name, "/", run.coordinators[c]);
    }
  }
  absl::StrAppend(&out, "\n");
  for (const Sample& s : run.samples) {
    absl::StrAppend(&out, absl::StrFormat("%.3f", absl::ToDoubleSeconds(s.at)));
    for (int c : s.coordinator_connections) absl::StrAppend(&out, ",", c);
    for (size_t w = 0; coordinators > 0 && w < run.workers.size(); ++w) {
      for (size_t c = 0; c < coordinators; ++c) {
        const bool have = w < s.per_coordinator.size() && c < s.per_coordinator[w].size();
        absl::StrAppend(&out, ",", have ? s.per_coordinator[w][c] : 0);
      }
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string ThroughputCsv(const RunData& run) {
  std::string out = "second";
  for (const std::string& c : run.coordinators) absl::StrAppend(&out, ",", c);
  absl::StrAppend(&out, "\n");
  const std::vector<std::vector<int64_t>> series = ThroughputPerSecond(run);
  for (size_t s = 0; s < series.size(); ++s) {
    absl::StrAppend(&out, s, ",", absl::StrJoin(series[s], ","), "\n");
  }
  return out;
}

namespace {

// The connections plot of `run` from `csv`: each worker's total, and with
// several coordinators each one's connections to each worker; the limit (or
// budget) and the workers' max_connections as lines.
std::string ConnectionsPlot(const RunData& run, const std::string& csv) {
  int top = 0;
  for (const WorkerFigures& w : run.workers) top = std::max({top, w.peak, w.max_connections});
  const bool several = run.coordinators.size() > 1;
  std::string script = absl::StrCat("set title '", run.label, several ? ": connections" : "", "'\n",
                                    "set ylabel 'connections from the coordinator",
                                    several ? "s" : "", "'\n", "set yrange [0:", top + 5, "]\n");
  std::vector<std::string> plots;
  for (size_t w = 0; w < run.workers.size(); ++w) {
    plots.push_back(absl::StrCat("'", csv, "' using 1:", w + 2, " with steps lw 2 title '",
                                 run.workers[w].name, several ? " (all)" : "", "'"));
  }
  for (size_t w = 0; several && w < run.workers.size(); ++w) {
    for (size_t c = 0; c < run.coordinators.size(); ++c) {
      const size_t column = 2 + run.workers.size() + w * run.coordinators.size() + c;
      plots.push_back(absl::StrCat("'", csv, "' using 1:", column, " with steps lw 1 title '",
                                   run.workers[w].name, " ", run.coordinators[c], "'"));
    }
  }
  if (!run.workers.empty()) {
    const WorkerFigures& w0 = run.workers[0];
    const char* limit = w0.budget ? "budget" : several ? "coordinators' limits" : "limit";
    if (w0.limit >= 0) {
      plots.push_back(absl::StrCat(w0.limit, " with lines dt 2 lw 2 lc 'red' title '", limit, " (",
                                   w0.limit, ")'"));
    }
    plots.push_back(absl::StrCat(w0.max_connections,
                                 " with lines dt 3 lw 1 lc 'black' title 'worker "
                                 "max_connections (",
                                 w0.max_connections, ")'"));
  }
  return absl::StrCat(script, "plot ", absl::StrJoin(plots, ", \\\n     "), "\n");
}

// Each coordinator's completions per second, from `csv` (ThroughputCsv).
std::string ThroughputPlot(const RunData& run, const std::string& csv) {
  std::vector<std::string> plots;
  for (size_t c = 0; c < run.coordinators.size(); ++c) {
    plots.push_back(absl::StrCat("'", csv, "' using 1:", c + 2, " with steps lw 2 title '",
                                 run.coordinators[c], "'"));
  }
  return absl::StrCat("set title '", run.label, ": completions per second'\n",
                      "set ylabel 'completions per second'\nset yrange [0:*]\n", "plot ",
                      absl::StrJoin(plots, ", \\\n     "), "\n");
}

}  // namespace

std::string GnuplotScript(const std::vector<RunData>& runs,
                          const std::vector<std::string>& csv_files, const std::string& png,
                          const std::vector<std::string>& throughput_files) {
  const bool throughput = !throughput_files.empty();
  std::string script =
      absl::StrCat("set terminal pngcairo size ", throughput ? 1800 : 1200, ",",
                   320 * std::max<size_t>(runs.size(), 1), " font 'sans,10' noenhanced\n",
                   "set output '", png, "'\n", "set datafile separator ','\n",
                   "set key outside right\n", "set grid\n", "set xlabel 'seconds'\n",
                   "set multiplot layout ", runs.size(), ",", throughput ? 2 : 1, "\n");
  for (size_t r = 0; r < runs.size(); ++r) {
    absl::StrAppend(&script, ConnectionsPlot(runs[r], csv_files[r]));
    if (throughput && r < throughput_files.size()) {
      absl::StrAppend(&script, ThroughputPlot(runs[r], throughput_files[r]));
    }
  }
  absl::StrAppend(&script, "unset multiplot\n");
  return script;
}

}  // namespace connthrottle::stress
