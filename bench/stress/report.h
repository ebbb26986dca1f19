// The stress driver's reports of its runs: a text table of the runs side by
// side with the verdict, the same as JSON, and each run's connection series
// as CSV with a gnuplot script to chart it. Pure functions of run_data.h.

#ifndef CONNTHROTTLE_BENCH_STRESS_REPORT_H_
#define CONNTHROTTLE_BENCH_STRESS_REPORT_H_

#include <string>
#include <vector>

#include "stress/run_data.h"

namespace connthrottle::stress {

// A human-readable report: the figures of each run side by side and the
// verdict of the throttled one.
std::string TextReport(const std::vector<RunData>& runs, const Verdict& verdict);
// The same as JSON.
std::string JsonReport(const std::vector<RunData>& runs, const Verdict& verdict);
// The connection time series of a run: "seconds,worker1,worker2,...", and
// with several coordinators then "worker1/c1,worker1/c2,...,worker2/c1,...".
std::string SeriesCsv(const RunData& run);
// With several coordinators: each one's completions per second of the run,
// "second,c1,c2,...".
std::string ThroughputCsv(const RunData& run);
// A gnuplot script that draws the CSV files of `runs` against each worker's
// limit (or budget) into `png`; with `throughput_files` (ThroughputCsv of
// each run) each run's coordinators' completions per second beside them.
std::string GnuplotScript(const std::vector<RunData>& runs,
                          const std::vector<std::string>& csv_files, const std::string& png,
                          const std::vector<std::string>& throughput_files = {});

}  // namespace connthrottle::stress

#endif  // CONNTHROTTLE_BENCH_STRESS_REPORT_H_
