#!/usr/bin/env python3
"""Turns the JSON reports of bench/budget-bench.sh's stress runs into its table.

Usage:
  bench/budget_table.py --idle A.json B.json C.json --busy D.json E.json F.json \
      --window G.json H.json I.json [--check]

--idle:   two coordinators sharing a budget, the second idle the whole run,
          leased and on a static split of the same budget (--compare_static_split):
          the busy coordinator's throughput leased / static. Target: median >= 1.8.
--busy:   both coordinators busy, leased: Jain's index across the coordinators
          (per client). Target: median >= 0.95. Also their total throughput.
--window: the second coordinator idle for a window in the middle of the run:
          how long until the busy one held more than its static share on every
          worker (T_share), and until the returning one had its share back.
Every run must have passed (the budget held in every worker sample).
--check exits 1 when a target is missed.
"""

import argparse
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def run_of(report, prefix):
    for r in report["runs"]:
        if r["label"].startswith(prefix):
            return r
    raise SystemExit("no run labelled %r in the report" % prefix)


def qps(run, coordinator):
    for c in run["coordinators"]:
        if c["name"] == coordinator:
            return c["completed"] / run["duration_s"]
    raise SystemExit("no coordinator %r in run %r" % (coordinator, run["label"]))


def peaks(run):
    return "/".join("%d<=%d" % (w["peak"], w["limit"]) for w in run["workers"])


def spread(values, fmt):
    return "median " + fmt % statistics.median(values) + " (" + ", ".join(fmt % v for v in values) + ")"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", nargs="+", required=True)
    ap.add_argument("--busy", nargs="+", required=True)
    ap.add_argument("--window", nargs="+", required=True)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    failed = []
    passed = all(load(p)["passed"] for p in a.idle + a.busy + a.window)
    if not passed:
        failed.append("a run failed its invariants (see its report)")

    ratios, leased_qps, static_qps, idle_peaks = [], [], [], []
    for p in a.idle:
        rep = load(p)
        leased, static = run_of(rep, "throttled"), run_of(rep, "static split")
        leased_qps.append(qps(leased, "c1"))
        static_qps.append(qps(static, "c1"))
        ratios.append(leased_qps[-1] / static_qps[-1])
        idle_peaks.append(peaks(leased))
    jains, totals, busy_peaks = [], [], []
    for p in a.busy:
        r = run_of(load(p), "throttled")
        jains.append(r["jain_index_coordinators"])
        totals.append(r["throughput_qps"])
        busy_peaks.append(peaks(r))
    taken, back = [], []
    for p in a.window:
        r = run_of(load(p), "throttled")
        taken.append(r["share_taken_s"] if r["share_taken_s"] is not None else float("inf"))
        back.append(r["share_given_back_s"] if r["share_given_back_s"] is not None else float("inf"))

    print("one busy, one idle coordinator: the busy one's throughput")
    print("  leased            %s q/s" % spread(leased_qps, "%.1f"))
    print("  static split      %s q/s" % spread(static_qps, "%.1f"))
    print("  leased / static   %s   target >= 1.8" % spread(ratios, "%.2fx"))
    print("  worker peaks (leased run, peak<=budget): %s" % ", ".join(idle_peaks))
    print("both coordinators busy, leased")
    print("  Jain's index      %s   target >= 0.95" % spread(jains, "%.3f"))
    print("  throughput        %s q/s (both together)" % spread(totals, "%.1f"))
    print("  worker peaks: %s" % ", ".join(busy_peaks))
    print("one coordinator idle for a window, then busy again")
    print("  T_share           %s s  (idle -> the busy one above its static share on every worker)"
          % spread(taken, "%.3f"))
    print("  share back        %s s  (busy again -> its static share on every worker)"
          % spread(back, "%.3f"))
    if statistics.median(ratios) < 1.8:
        failed.append("busy/idle ratio below 1.8x")
    if statistics.median(jains) < 0.95:
        failed.append("Jain's index below 0.95")
    for f in failed:
        print("MISSED: " + f)
    if a.check and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
