#!/usr/bin/env python3
"""Prints the README's stress-driver tables from several runs' JSON reports.

Each argument is a JSON report of `connthrottle-stress --json` (one run of the
driver: a throttled run and, with --compare_unthrottled, an unthrottled one).
Every figure is the median over the reports, with the spread (min-max) beside
it, so that a reader sees how much the figure moves between runs.
"""
import json
import statistics
import sys


def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"


def role_spread(run):
    """The least-served role's completions per client over the best-served one's."""
    per_client = [g["completed"] / g["clients"] for g in run.get("roles", []) if g["clients"]]
    if len(per_client) < 2 or max(per_client) == 0:
        return None
    return min(per_client) / max(per_client)


def figures(reports, label):
    runs = []
    for report in reports:
        runs += [r for r in report["runs"] if r["label"] == label]
    return runs


def main(paths):
    reports = [json.load(open(p)) for p in paths]
    labels = [r["label"] for r in reports[0]["runs"]]
    rows = [
        ("throughput, q/s", lambda r: r["throughput_qps"], lambda v: f"{v:,.0f}"),
        ("latency p50, ms", lambda r: r["latency_us"]["p50"] / 1000, lambda v: f"{v:,.1f}"),
        ("latency p99, ms", lambda r: r["latency_us"]["p99"] / 1000, lambda v: f"{v:,.0f}"),
        ("latency max, ms", lambda r: r["latency_us"]["max"] / 1000, lambda v: f"{v:,.0f}"),
    ] + [
        (f"latency p50, {kind}, ms",
         lambda r, kind=kind: r.get("latency_p50_us_by_kind", {}).get(kind, 0) / 1000 or None,
         lambda v: f"{v:,.1f}")
        for kind in ("fanout", "router", "copy")
    ] + [
        ("`too many clients` errors", lambda r: r["too_many_clients_errors"], lambda v: f"{v:.0f}"),
        ("operations hung past their deadline", lambda r: r["hung"], lambda v: f"{v:.0f}"),
        ("peak coordinator connections, busiest worker",
         lambda r: max(w["peak"] for w in r["workers"]), lambda v: f"{v:.0f}"),
        ("worker backends started per query (workers' logs)",
         lambda r: r.get("worker_backends_per_query"), lambda v: f"{v:.3f}"),
        ("worker sessions per query (pg_stat_database)",
         lambda r: r["worker_sessions_per_query"], lambda v: f"{v:.3f}"),
        ("wake-ups per wait (coordinator's table_stats)",
         lambda r: (r["wakeups"] / r["waits"]) if r.get("waits", -1) > 0 else None,
         lambda v: f"{v:.2f}"),
        ("completions per client, min", lambda r: min(r["completed_per_client"]),
         lambda v: f"{v:,.0f}"),
        ("Jain's fairness index", lambda r: r["jain_index"], lambda v: f"{v:.3f}"),
    ]
    # Reports of runs with several roles or databases (--roles, --databases)
    # carry these; the tables of other runs stay as they were.
    if any("jain_index_roles" in r for report in reports for r in report["runs"]):
        rows += [
            ("Jain's index across roles (per client)", lambda r: r.get("jain_index_roles"),
             lambda v: f"{v:.3f}"),
            ("completions per client of a role, least-served / best-served role",
             role_spread, lambda v: f"{v:.2f}"),
            ("operations failed with SQLSTATE 53300", lambda r: r.get("sqlstate_53300_errors"),
             lambda v: f"{v:.0f}"),
        ]
    print(f"{len(reports)} runs; median (min–max)")
    print()
    print("| | " + " | ".join(labels) + " |")
    print("| --- |" + " ---: |" * len(labels))
    for name, get, fmt in rows:
        cells = [spread([get(r) for r in figures(reports, l)], fmt) for l in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if "unthrottled" in labels:
        u = [r["throughput_qps"] for r in figures(reports, "unthrottled")]
        for label in labels:
            if label == "unthrottled":
                continue
            t = [r["throughput_qps"] for r in figures(reports, label)]
            ratios = [a / b for a, b in zip(t, u) if b > 0]
            print(f"| throughput ratio, {label} / unthrottled | "
                  f"{spread(ratios, lambda v: f'{v:.2f}')} |" + " |" * (len(labels) - 1))
    passed = sum(1 for r in reports if r["passed"])
    print()
    print(f"every invariant held in {passed} of {len(reports)} throttled runs")
    for i, r in enumerate(reports, 1):
        for v in r.get("violations", []):
            print(f"- run {i}: {v}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: stress_table.py REPORT.json...")
    main(sys.argv[1:])
