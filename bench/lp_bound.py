"""The stage MILP's LP relaxation bound, plain and with the recomputation cuts, per model.

For every configuration under configs/ (its committed profile) and budgets of 1/2, 1/3 and
1/4 of the unoptimised peak (solve_bench's budgets): the LP relaxation's optimum as extra
time over the unoptimised step, without cuts and with every recomputation cut
(``planner.recompute_cuts``) for each need-cut depth asked for (0: no need cuts), with the
LP's rows and seconds. The bound a solve reports is at least the best of these that its
worker solved in time. Rows are written as they finish.

    python bench/lp_bound.py                                  # all models, depths 0 and 3
    python bench/lp_bound.py --models resnet50 unet --depths 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import config_names, load_config, write_rows_as_they_finish  # noqa: E402
from planner import recompute_cuts  # noqa: E402
from planner.formulation import build_stage_milp  # noqa: E402
from planner.heuristic import solve_relaxation  # noqa: E402
from planner.schedule import baseline_decisions  # noqa: E402
from planner.solve import evaluate, planner_graph  # noqa: E402
from planner.time_shares import machine_speed  # noqa: E402
from profiler.config import ModelConfig  # noqa: E402

FRACTIONS = ((1 / 2, "1/2"), (1 / 3, "1/3"), (1 / 4, "1/4"))
# Far above any of these LPs (the slowest took 34 s at 1.28x the reference speed).
LP_TIME_LIMIT_S = 600.0


def bench_model(config: ModelConfig, depths: list[int]):
    profile = config.load_profile()
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    base = evaluate(profile, graph, baseline_decisions(graph))
    peak, step = base.result.peak_bytes, base.result.time_s
    for frac, label in FRACTIONS:
        budget = int(peak * frac)
        for depth in [None, *depths]:  # None: no cuts at all
            saved = recompute_cuts.NEED_CUT_DEPTH
            recompute_cuts.NEED_CUT_DEPTH = depth or 0
            try:
                milp = build_stage_milp(graph, times, budget, recompute_cuts=depth is not None)
            finally:
                recompute_cuts.NEED_CUT_DEPTH = saved
            t0 = time.perf_counter()
            value = solve_relaxation(milp, LP_TIME_LIMIT_S)
            seconds = time.perf_counter() - t0
            yield {"model": config.name, "timing": profile.timing, "budget": label,
                   "cuts": "none" if depth is None else f"all, need depth {depth}",
                   "bound": None if value is None else value / step,
                   "rows": len(milp.problem.constraints),
                   "seconds": seconds}


def render(rows: list[dict], args) -> str:
    lines = [
        f"# LP relaxation bounds ({datetime.date.today().isoformat()})", "",
        f"`python bench/lp_bound.py --depths {' '.join(map(str, args.depths))}` on "
        f"{platform.node() or 'this machine'}, {os.cpu_count()} cores, "
        f"{machine_speed():.2f}x the reference speed (`planner.time_shares`). Bound: the LP "
        "relaxation's optimum, extra time as a fraction of the unoptimised step; cuts: none, "
        "or every recomputation cut with need cuts followed that many inputs up (0: none). "
        "Seconds: loading the LP into HiGHS and solving it (`planner.heuristic.solve_relaxation`); "
        "infeasible: not solved to optimality.", "",
        "| model | budget | cuts | LP rows | LP bound | seconds |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        bound = "infeasible" if r["bound"] is None else f"+{r['bound']:.2%}"
        lines.append(f"| {r['model']} ({r['timing']}) | {r['budget']} | {r['cuts']} | "
                     f"{r['rows']} | {bound} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = config_names()
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--depths", nargs="+", type=int, default=[0, 3],
                        help="need-cut depths to solve the LP with every cut at")
    parser.add_argument("-o", "--output",
                        default=os.path.join(ROOT, "bench/results/lp_bound.md"))
    args = parser.parse_args()
    rows = (row for name in args.models for row in bench_model(
        load_config(name), args.depths))
    write_rows_as_they_finish(rows, args.output, lambda done: render(done, args))


if __name__ == "__main__":
    main()
