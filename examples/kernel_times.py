"""Sums the GPU time of each kernel in an Nsight Compute CSV report (one metric,
gpu__time_duration.sum, per launch) and prints the kernels by total time:

  ncu --metrics gpu__time_duration.sum --csv --print-units base lua5.4 examples/bench_pretrain.lua ... > k.csv
  python3 examples/kernel_times.py k.csv [--top 40] [--per 2]

--per N divides the totals by N (the number of steps the profiled run took), so the table reads
in time per step. Names are shortened to the function name and its first template arguments.
"""
import argparse
import csv
import re
import sys

UNIT = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}


def short(name, width):
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    name = re.sub(r"^void ", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--per", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=100)
    a = ap.parse_args()
    with open(a.csv, newline="", errors="replace") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if '"Kernel Name"' in line and '"Metric Value"' in line), None)
    if start is None:
        sys.exit("no ncu CSV table in " + a.csv)
    totals, counts = {}, {}
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            ms = float(row["Metric Value"].replace(",", "")) * UNIT.get(row.get("Metric Unit", "ns"), 1e-6)
        except ValueError:
            continue
        name = row["Kernel Name"]
        totals[name] = totals.get(name, 0.0) + ms
        counts[name] = counts.get(name, 0) + 1
    grand = sum(totals.values())
    print(f"# {sum(counts.values())} launches, {grand / a.per:.2f} ms of kernel time per step "
          f"(totals / {a.per:g})")
    print(f"{'ms/step':>9} {'share':>6} {'calls':>7} {'us/call':>8}  kernel")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[: a.top]:
        n = counts[name]
        print(f"{ms / a.per:9.3f} {100 * ms / grand:5.1f}% {n / a.per:7.1f} {1e3 * ms / n:8.1f}  {short(name, a.width)}")


if __name__ == "__main__":
    main()
