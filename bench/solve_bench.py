"""How fast and how well the planner solves the benchmark models, on this machine.

For every configuration under configs/ (its committed profile; made first if absent) and
budgets of 1/2, 1/3 and 1/4 of the unoptimised peak: one row with the graph's nodes, the
MILP's variables and constraints, the solver, wall seconds of the whole solve, the
objective (extra time over the unoptimised step), the lower bound, the gap, and the
predicted peak. Rows are written as they finish, so an interrupted run keeps them. With
``--repeats N`` each budget is solved N times (time-limited plans vary from run to run)
and a second table gives, per budget, the median and range of the overhead and the gap.

    python bench/solve_bench.py                          # all models, HiGHS, 60 s
    python bench/solve_bench.py --models resnet50 --solvers highs cpsat --time-limit 60
    python bench/solve_bench.py --models resnet50 googlenet --repeats 3
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import config_names, load_config, write_rows_as_they_finish  # noqa: E402
from planner import InfeasibleBudgetError, solve  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from planner.budget import format_bytes  # noqa: E402
from planner.schedule import baseline_decisions  # noqa: E402
from planner.solve import evaluate, planner_graph  # noqa: E402
from planner.time_shares import machine_speed  # noqa: E402
from profiler.config import ModelConfig  # noqa: E402

FRACTIONS = ((1 / 2, "1/2"), (1 / 3, "1/3"), (1 / 4, "1/4"))


def bench_model(config: ModelConfig, solvers: list[str], time_limit: float, variants: str,
                repeats: int = 1):
    profile = config.load_profile()
    graph = planner_graph(profile)
    base = evaluate(profile, graph, baseline_decisions(graph))
    peak, step = base.result.peak_bytes, base.result.time_s
    for frac, label in FRACTIONS:
        for solver, run in ((s, r) for s in solvers for r in range(1, repeats + 1)):
            t0 = time.perf_counter()
            row = {"model": config.name, "nodes": len(profile.nodes), "timing": profile.timing,
                   "budget": label, "budget_bytes": int(peak * frac), "solver": solver,
                   "peak0": peak, "run": run}
            try:
                plan = solve(profile, row["budget_bytes"], backend=solver,
                             options=SolveOptions(time_limit_s=time_limit, variants=variants))
            except InfeasibleBudgetError as e:
                row.update(seconds=time.perf_counter() - t0, status="infeasible",
                           smallest=e.smallest_feasible, floor=e.lower_bound,
                           proven=e.proven)
                yield row
                continue
            s = plan.solver
            row.update(seconds=time.perf_counter() - t0, status=s.status,
                       variables=s.variables, constraints=s.constraints,
                       objective=s.objective / step if s.objective is not None else None,
                       bound=s.bound / step if s.bound is not None else None, gap=s.gap,
                       step_gap=plan.step_gap,
                       predicted_peak=plan.predicted_peak_bytes,
                       overhead=plan.predicted_time_s / step - 1,
                       variants_used=len(plan.variants))
            yield row


def _infeasible(row) -> str:
    """An infeasible budget's status: the smallest budget found, and whether the floor
    (``planner.floor``) proves the budget infeasible or how far below the found one it is."""
    found = "none found" if row["smallest"] is None else \
        f"smallest found {format_bytes(row['smallest'])}"
    floor = row.get("floor")
    if floor is None:
        return f"infeasible ({found})"
    proof = "proven: below the floor" if row["proven"] else "not proven: above the floor"
    return f"infeasible ({found}; floor {format_bytes(floor)}, {proof})"


def _pct(x):
    return "" if x is None else f"{x:+.2%}"


def render(rows, args) -> str:
    lines = [
        "# Planner speed and quality (`bench/solve_bench.py`)", "",
        f"{datetime.date.today()}, torch {torch.__version__}, {platform.processor() or 'cpu'} "
        f"with {os.cpu_count()} cores building MILPs at {machine_speed():.2f}x the reference "
        f"speed (`planner.time_shares`), time limit {args.time_limit:.0f} s per budget, "
        f"variants: {args.variants}. Profiles from configs/ (timing column: measured on a GPU "
        "or FLOP-estimated). Objective and bound are extra time as a fraction of the "
        "unoptimised step; the gap is (objective - bound) / objective, the step gap "
        "(objective - bound) / (1 + objective): the same bound measured on the whole step, "
        "MONeT's and Checkmate's objective. An infeasible budget gives the smallest budget "
        "found and the floor (`planner.floor`): the largest memory any single op needs while "
        "it runs, a peak no plan goes below; a budget under it is proven infeasible.", "",
        "| model | nodes | budget | solver | variables | constraints | seconds | status | "
        "objective | bound | gap | step gap | predicted peak | variants used |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        solver = r["solver"] + (f" (run {r['run']})" if args.repeats > 1 else "")
        if r["status"] == "infeasible":
            lines.append(f"| {r['model']} ({r['timing']}) | {r['nodes']} | {r['budget']} of "
                         f"{format_bytes(r['peak0'])} | {solver} | | | "
                         f"{r['seconds']:.1f} | {_infeasible(r)} | | | | | | |")
            continue
        gap = "" if r["gap"] is None else f"{r['gap']:.1%}"
        step_gap = "" if r.get("step_gap") is None else f"{r['step_gap']:.2%}"
        lines.append(
            f"| {r['model']} ({r['timing']}) | {r['nodes']} | {r['budget']} of "
            f"{format_bytes(r['peak0'])} | {solver} | {r['variables'] or ''} | "
            f"{r['constraints'] or ''} | {r['seconds']:.1f} | {r['status']} | "
            f"{_pct(r['objective'])} | {_pct(r['bound'])} | {gap} | {step_gap} | "
            f"{format_bytes(r['predicted_peak'])} | {r['variants_used']} |")
    if args.repeats > 1:
        lines += ["", *spread(rows)]
    return "\n".join(lines) + "\n"


def spread(rows) -> list[str]:
    """Per model, budget and solver solved more than once: the median, least and most
    overhead and gap of its runs (infeasible runs counted apart)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["model"], r["budget"], r["solver"]), []).append(r)
    lines = ["Run to run (`--repeats`): overhead over the unoptimised step and gap of the "
             "extra time, median [least, most].", "",
             "| model | budget | solver | runs | infeasible | overhead | gap |",
             "|---|---|---|---|---|---|---|"]

    def summary(values, fmt) -> str:
        if not values:
            return ""
        return f"{fmt(statistics.median(values))} [{fmt(min(values))}, {fmt(max(values))}]"

    for (model, budget, solver), runs in groups.items():
        solved = [r for r in runs if r["status"] != "infeasible"]
        gaps = [r["gap"] for r in solved if r["gap"] is not None]
        lines.append(f"| {model} | {budget} | {solver} | {len(runs)} | "
                     f"{len(runs) - len(solved)} | "
                     f"{summary([r['overhead'] for r in solved], _pct)} | "
                     f"{summary(gaps, lambda g: f'{g:.1%}')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = config_names()
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--solvers", nargs="+", default=["highs"],
                        choices=["highs", "cbc", "cpsat"])
    parser.add_argument("--time-limit", type=float, default=60)
    parser.add_argument("--variants", default="all", choices=["all", "exact", "none"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="solve each budget this many times (run-to-run spread)")
    parser.add_argument("-o", "--output",
                        default=os.path.join(ROOT, "bench/results/solve_bench.md"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    rows = (row for name in args.models for row in bench_model(
        load_config(name), args.solvers,
        args.time_limit, args.variants, args.repeats))
    write_rows_as_they_finish(rows, args.output, lambda done: render(done, args))


if __name__ == "__main__":
    main()
