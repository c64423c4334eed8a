"""A budget sweep of one benchmark model, timed end to end (issue: 10 budgets in 5 minutes).

Runs ``planner.sweep.run_sweep`` on a committed profile, then writes the sweep's own CSV and
Pareto plot under the output directory and a summary (wall time, rows) beside them.

    python bench/sweep_bench.py                       # ResNet-50, 0.25:0.7:0.05, 27 s each
    python bench/sweep_bench.py --profile configs/profiles/gpt_8x1024.measured.json \
        --budgets 0.45:0.9:0.05 -o bench/results/sweep_gpt
"""
from __future__ import annotations

import argparse
import csv
import datetime
import logging
import os
import platform
import shutil
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_atomic  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from planner.plots import pareto_plot  # noqa: E402
from planner.sweep import run_sweep  # noqa: E402
from profiler import Profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.path.join(
        ROOT, "configs/profiles/resnet50_184x3x224x224.measured.json"))
    parser.add_argument("--budgets", nargs="+", default=["0.25:0.7:0.05"])
    parser.add_argument("--time-limit", type=float, default=27,
                        help="mean seconds per budget")
    parser.add_argument("--time-split", choices=["tight", "even"], default="tight")
    parser.add_argument("-o", "--output", default=os.path.join(ROOT,
                                                               "bench/results/sweep_resnet50_h200"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.path.isdir(args.output):  # a timed run starts from nothing, not from a resume
        shutil.rmtree(args.output)
    profile = Profile.load(args.profile)
    t0 = time.perf_counter()
    result = run_sweep(profile, args.budgets, args.output,
                       options=SolveOptions(time_limit_s=args.time_limit),
                       profile_path=args.profile, time_split=args.time_split)
    wall = time.perf_counter() - t0
    pareto_plot(result, os.path.join(args.output, "pareto.png"))
    with open(os.path.join(args.output, "sweep.csv")) as f:
        rows = list(csv.DictReader(f))
    lines = [f"# Sweep of {profile.model} (`bench/sweep_bench.py`)", "",
             f"{datetime.date.today()}, torch {torch.__version__}, "
             f"{platform.processor() or 'cpu'} with {os.cpu_count()} cores, profile "
             f"`{os.path.relpath(args.profile, ROOT)}` ({profile.timing}), budgets "
             f"{' '.join(args.budgets)}, time limit {args.time_limit:.0f} s per budget on average "
             f"({args.time_split} split: `planner.sweep.time_shares`).", "",
             f"**{len(rows)} budgets in {wall:.0f} s** (wall, whole sweep).", "",
             "| budget | status | predicted peak (GiB) | overhead | solve s | gap |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{int(r['predicted_peak_bytes']) / 2**30:.2f}" if r["predicted_peak_bytes"] \
            else ""
        overhead = f"{float(r['overhead']):+.2%}" if r["overhead"] else ""
        gap = f"{float(r['gap']):.0%}" if r["gap"] else ""
        lines.append(f"| {r['budget']} | {r['status']} | {peak} | {overhead} | "
                     f"{float(r['solve_time_s']):.1f} | {gap} |")
    path = os.path.join(args.output, "README.md")
    write_atomic(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
