#!/usr/bin/env python3
"""Turns counter_table_benchmark's JSON output into a table of ratios.

Usage:
  counter_table_benchmark --benchmark_repetitions=5 --benchmark_min_time=0.2 \
      --benchmark_display_aggregates_only=true \
      --benchmark_out=bench.json --benchmark_out_format=json
  bench/ratios.py bench.json            # or: ... --benchmark_format=json | bench/ratios.py -
  bench/ratios.py --check bench.json    # exit status 1 when a target is missed

For every case it prints connthrottle, connthrottle with ownership tracking
for reclamation (a standalone segment's setting), the reference design (one
mutex over a hash table) and the floor (a bare atomic counter), in ns per acquire + release
pair of wall-clock time (real_time; the benchmark uses it for every case, and
for the two-thread cases Google Benchmark divides it by the iterations of both
threads, so it is the inverse of the aggregate throughput). With repetitions
the median (or, with --stat=min, the fastest) repetition is used, and the
largest coefficient of variation of the three is shown as a hint of the noise.
Keep the per-repetition entries in the file (--benchmark_display_aggregates_only
rather than --benchmark_report_aggregates_only) so that the script can also
check that the threads really ran: a case whose threads were on a CPU for less
than 90% of the wall time (another job on the machine) is flagged.

Targets:
  single thread              connthrottle <= 2.0x floor, >= 2.5x faster than reference;
                             with reclamation <= 2.5x floor
  two threads, distinct keys connthrottle >= 4x faster than reference
  keys falling to zero       (every release takes the count to zero; issue 14)
                             single thread: connthrottle <= 2.0x floor; every
                             case, one or two threads: faster than reference
"""

import argparse
import json
import re
import statistics
import sys

IMPLS = ("Connthrottle", "ConnthrottleReclaiming", "ReferenceMutexHash", "AtomicFloor")
# The per-database bound (two counters per acquire) and its two-counter floor:
# a table of their own.
TWO_LEVEL = ("ConnthrottlePerDatabase", "AtomicFloorTwoLevel")
NAME_RE = re.compile(r"^BM_(%s)_([^/]+)(.*)$" % "|".join(TWO_LEVEL + IMPLS))
# Single-thread cases: per-database <= 2.0x its floor.
TWO_LEVEL_TARGET = {"Optional": 2.0, "FallingToZero": 2.0}
UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}

# case family -> (max connthrottle/floor, min reference/connthrottle,
#                 max reclaiming/floor)
TARGETS = {
    "Optional": (2.0, 2.5, 2.5),
    "OptionalFixedKey": (2.0, 2.5, 2.5),
    "TwoThreadsDistinctKeys": (None, 4.0, None),
    "TwoThreadsOneKey": (None, None, None),
    "FallingToZero": (2.0, 1.0, None),
    "TwoThreadsFallingToZeroOwnKeys": (None, 1.0, None),
    "TwoThreadsFallingToZeroOneKey": (None, 1.0, None),
}


def case_of(run_name):
    """Splits a run name into (implementation, family, case label)."""
    m = NAME_RE.match(run_name)
    if not m:
        return None
    impl, family, rest = m.groups()
    threads = re.search(r"/threads:(\d+)", rest)
    rest = re.sub(r"/real_time|/threads:\d+", "", rest)
    label = family + rest
    if threads and threads.group(1) != "1":
        label += " (%s threads)" % threads.group(1)
    return impl, family, label


def load(path):
    if path == "-":
        return json.load(sys.stdin)
    with open(path) as f:
        return json.load(f)


def collect(data, stat):
    """Returns {run_name: {"ns", "cv", "on_cpu", "error"}}.

    ns is the median (or minimum, with stat == "min") real_time over the
    repetitions; on_cpu is cpu_time / (real_time * threads), the share of the
    wall time the benchmark's threads were actually running (below ~0.9 the
    machine was busy with something else and the figure is suspect).
    """
    runs = {}
    for b in data.get("benchmarks", []):
        run = b.get("run_name", b["name"])
        r = runs.setdefault(run, {"real": [], "cpu": [], "agg": {}, "error": None,
                                  "threads": b.get("threads", 1)})
        if b.get("error_occurred"):
            r["error"] = b.get("error_message", "error")
            continue
        scale = UNIT_NS.get(b.get("time_unit", "ns"), 1.0)
        if b.get("run_type") == "aggregate":
            name = b.get("aggregate_name")
            if name == "cv":
                r["agg"]["cv"] = b["real_time"]  # a fraction, not a time
            else:
                r["agg"][name] = (b["real_time"] * scale, b["cpu_time"] * scale)
        else:
            r["real"].append(b["real_time"] * scale)
            r["cpu"].append(b["cpu_time"] * scale)
    out = {}
    for run, r in runs.items():
        ns = cpu = cv = None
        if r["real"]:
            if stat == "min":
                i = min(range(len(r["real"])), key=lambda k: r["real"][k])
                ns, cpu = r["real"][i], r["cpu"][i]
            else:
                ns, cpu = statistics.median(r["real"]), statistics.median(r["cpu"])
            if len(r["real"]) >= 2:
                cv = statistics.stdev(r["real"]) / statistics.mean(r["real"])
        elif "median" in r["agg"]:  # --benchmark_report_aggregates_only=true
            ns, cpu = r["agg"]["median"]
        if cv is None:
            cv = r["agg"].get("cv")
        on_cpu = cpu / (ns * r["threads"]) if ns and cpu else None
        out[run] = {"ns": ns, "cv": cv, "on_cpu": on_cpu, "error": r["error"]}
    return out


def fmt_ns(v):
    return "—" if v is None else ("%.1f" % v if v < 1000 else "%.0f" % v)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="benchmark JSON output, or - for stdin")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="how to combine repetitions (default: median)")
    args = parser.parse_args()

    data = load(args.json)
    runs = collect(data, args.stat)

    cases = {}  # label -> {"family": ..., impl: run}
    for run_name, r in runs.items():
        parsed = case_of(run_name)
        if parsed is None:
            continue
        impl, family, label = parsed
        cases.setdefault(label, {"family": family})[impl] = r

    ctx = data.get("context", {})
    reps = max((b.get("repetitions", 1) for b in data.get("benchmarks", [])), default=1)
    warnings = []
    print("counter_table_benchmark, %s, %s CPUs, load average %s" % (
        ctx.get("date", "?"), ctx.get("num_cpus", "?"),
        " ".join("%.2f" % x for x in ctx.get("load_avg", [])) or "?"))
    print("ns per acquire + release pair, real_time, %s\n" % (
        "%s of %d repetitions" % (args.stat, reps) if reps > 1 else "single run"))
    print("| case | connthrottle ns/op | with reclamation ns/op | reference ns/op | floor ns/op | "
          "connthrottle/floor (target) | with reclamation/floor (target) | "
          "reference/connthrottle speed-up (target) | met | max CV |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")

    missed = 0
    families = list(TARGETS)

    def order(item):
        label, c = item
        fam = c["family"]
        num = re.search(r":(\d+)", label)
        return (families.index(fam) if fam in families else len(families), fam,
                int(num.group(1)) if num else 0, label)

    # Fixed order, whatever order the benchmark ran in (random interleaving).
    for label, c in sorted(cases.items(), key=order):
        ct, rc, ref, fl = (c.get(i, {}) for i in IMPLS)
        errors = [r["error"] for r in (ct, rc, ref, fl) if r.get("error")]
        ct_ns, rc_ns, ref_ns, fl_ns = (r.get("ns") for r in (ct, rc, ref, fl))
        ratio = ct_ns / fl_ns if ct_ns and fl_ns else None
        rc_ratio = rc_ns / fl_ns if rc_ns and fl_ns else None
        speedup = ref_ns / ct_ns if ct_ns and ref_ns else None
        max_ratio, min_speedup, max_rc_ratio = TARGETS.get(c["family"], (None, None, None))
        verdicts = []
        if max_ratio is not None:
            verdicts.append(ratio is not None and ratio <= max_ratio)
        if min_speedup is not None:
            verdicts.append(speedup is not None and speedup >= min_speedup)
        if max_rc_ratio is not None and rc_ns is not None:
            verdicts.append(rc_ratio <= max_rc_ratio)
        if errors:
            met = "error: " + "; ".join(errors)
            missed += 1
        elif not verdicts:
            met = "—"
        elif all(verdicts):
            met = "yes"
        else:
            met = "**no**"
            missed += 1
        cvs = [r["cv"] for r in (ct, rc, ref, fl) if r.get("cv") is not None]
        for impl, r in zip(IMPLS, (ct, rc, ref, fl)):
            if r.get("on_cpu") is not None and r["on_cpu"] < 0.9:
                warnings.append("%s %s: its threads were on a CPU only %.0f%% of the wall time "
                                "(machine busy?); the figure is suspect" %
                                (impl, label, 100 * r["on_cpu"]))

        def with_target(value, target, fmt, cmp):
            if value is None:
                return "—"
            text = fmt % value
            return "%s (%s %.1fx)" % (text, cmp, target) if target is not None else text

        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt_ns(ct_ns), fmt_ns(rc_ns), fmt_ns(ref_ns), fmt_ns(fl_ns),
            with_target(ratio, max_ratio, "%.2fx", "<="),
            with_target(rc_ratio, max_rc_ratio, "%.2fx", "<="),
            with_target(speedup, min_speedup, "%.2fx", ">="),
            met,
            "%.1f%%" % (100 * max(cvs)) if cvs else "—"))

    missed += two_level_table(cases, order)

    for w in warnings:
        print("\nwarning: " + w, end="")
    if warnings:
        print()
    if args.check and missed:
        print("\n%d case(s) miss a target" % missed, file=sys.stderr)
        return 1
    return 0


def two_level_table(cases, order):
    """Prints the per-database bound's table; returns the targets missed."""
    rows = [(label, c) for label, c in sorted(cases.items(), key=order)
            if any(i in c for i in TWO_LEVEL)]
    if not rows:
        return 0
    print("\nWith max_shared_pool_size_per_database on (a database counter and a node "
          "counter per acquire):\n")
    print("| case | per-database ns/op | two-counter floor ns/op | one level ns/op | "
          "per-database/two-counter floor (target) | per-database/one level | met | max CV |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    missed = 0
    for label, c in rows:
        pd, fl2, one = (c.get(i, {}) for i in TWO_LEVEL + ("Connthrottle",))
        pd_ns, fl2_ns, one_ns = (r.get("ns") for r in (pd, fl2, one))
        ratio = pd_ns / fl2_ns if pd_ns and fl2_ns else None
        vs_one = pd_ns / one_ns if pd_ns and one_ns else None
        target = TWO_LEVEL_TARGET.get(c["family"])
        errors = [r["error"] for r in (pd, fl2) if r.get("error")]
        if errors:
            met = "error: " + "; ".join(errors)
            missed += 1
        elif target is None:
            met = "—"
        elif ratio is not None and ratio <= target:
            met = "yes"
        else:
            met = "**no**"
            missed += 1
        cvs = [r["cv"] for r in (pd, fl2, one) if r.get("cv") is not None]
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, fmt_ns(pd_ns), fmt_ns(fl2_ns), fmt_ns(one_ns),
            "—" if ratio is None else "%.2fx%s" % (ratio, " (<= %.1fx)" % target if target else ""),
            "—" if vs_one is None else "%.2fx" % vs_one, met,
            "%.1f%%" % (100 * max(cvs)) if cvs else "—"))
    return missed


if __name__ == "__main__":
    sys.exit(main())
