#!/usr/bin/env python3
"""Prints the table of bench/transport_benchmark's JSON output (stdin).

One row per workload and session count: executions per second of each
transport (median of the repetitions, with min-max), the shared pool's ratio
to the direct transport and to running unthrottled, and the worker backends
started per execution.
"""
import json
import re
import statistics
import sys

NAME = re.compile(r"BM_(?P<workload>\w+?)_(?P<transport>Direct|SharedPool|Unthrottled)/.*threads:(?P<threads>\d+)")


def main():
    data = json.load(sys.stdin)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        m = NAME.match(b["name"])
        if not m:
            continue
        key = (m["workload"], int(m["threads"]), m["transport"])
        r = runs.setdefault(key, {"rate": [], "backends": [], "jain": [], "slowest": []})
        r["rate"].append(b["items_per_second"])
        for field, counter in (("backends", "backends_per_exec"), ("jain", "jain"),
                               ("slowest", "slowest_ms")):
            if counter in b:
                r[field].append(b[counter])

    def med(key):
        r = runs.get(key)
        return statistics.median(r["rate"]) if r else None

    def span(key):
        r = runs.get(key)
        if not r:
            return "—"
        return f"{min(r['rate']):,.0f}–{max(r['rate']):,.0f}"

    def figure(key, field, fmt):
        r = runs.get(key)
        return format(statistics.median(r[field]), fmt) if r and r[field] else "—"

    def backends(key):
        return figure(key, "backends", ".3f")

    print("| workload | sessions | unthrottled exec/s | direct exec/s | shared pool exec/s "
          "| pool / direct | pool / unthrottled | backends per exec: direct / pool "
          "| Jain: direct / pool | slowest exec ms: direct / pool |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for workload, threads in sorted({(w, t) for (w, t, _) in runs}):
        u, d, p = (med((workload, threads, k)) for k in ("Unthrottled", "Direct", "SharedPool"))
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "—"
        print(f"| {workload} | {threads} | {u or 0:,.0f} ({span((workload, threads, 'Unthrottled'))}) "
              f"| {d or 0:,.0f} ({span((workload, threads, 'Direct'))}) "
              f"| {p or 0:,.0f} ({span((workload, threads, 'SharedPool'))}) "
              f"| {ratio(p, d)} | {ratio(p, u)} "
              f"| {backends((workload, threads, 'Direct'))} / {backends((workload, threads, 'SharedPool'))} "
              f"| {figure((workload, threads, 'Direct'), 'jain', '.3f')} / "
              f"{figure((workload, threads, 'SharedPool'), 'jain', '.3f')} "
              f"| {figure((workload, threads, 'Direct'), 'slowest', '.0f')} / "
              f"{figure((workload, threads, 'SharedPool'), 'slowest', '.0f')} |")


if __name__ == "__main__":
    main()
