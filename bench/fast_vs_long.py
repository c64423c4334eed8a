"""The fast path against a long solve of the full problem, on small models.

For each small model and budget: the plan of ``planner.solve`` under a short time limit
(heuristics, depth-limited MILP, window-by-window improvement), and a long HiGHS solve of
the *unrestricted* MILP (recomputation chains of any depth) warm-started from it. Where
the long solve proves optimality, the fast plan's predicted step time is compared with the
optimum's; the target is within 1 %.

    python bench/fast_vs_long.py                       # writes bench/results/fast_vs_long.md
    python bench/fast_vs_long.py --fast-limit 20 --long-limit 600 --models gpt_small
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_rows_as_they_finish  # noqa: E402
from planner import solve  # noqa: E402
from planner.backends import SolveOptions, solve_problem  # noqa: E402
from planner.budget import format_bytes  # noqa: E402
from planner.formulation import build_stage_milp  # noqa: E402
from planner.solve import evaluate, planner_graph  # noqa: E402
from profiler import load_model, profile_model  # noqa: E402

# The small models of the test suite (tests/conftest.py), at the same inputs.
MODELS = {
    "resnet18": ("torchvision:resnet18", {"batch": 32, "image_size": 160}),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"batch": 16, "image_size": 96}),
    "gpt_small": ("examples.gpt:gpt_small", {}),
}


def compare(name: str, budgets: list[float], fast_s: float, long_s: float, variants: str):
    spec, kwargs = MODELS[name]
    model, inputs = load_model(spec, **kwargs)
    profile = profile_model(model, inputs, name=name, estimate=True)
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    for fraction in budgets:
        t0 = time.perf_counter()
        fast = solve(profile, fraction, options=SolveOptions(time_limit_s=fast_s,
                                                             variants=variants))
        fast_s_used = time.perf_counter() - t0
        milp = build_stage_milp(graph, times, fast.budget_bytes, max_recompute_depth=None,
                                variants=variants, include=fast.decisions())
        milp.set_start(fast.decisions())
        outcome = solve_problem(milp.problem, "highs", SolveOptions(
            time_limit_s=long_s, gap=1e-6, warm_start=True))
        long_time = None
        if outcome.has_solution:
            ev = evaluate(profile, graph, milp.decisions(len(graph.stages)))
            long_time = ev.result.time_s
        yield {"model": name, "fraction": fraction, "budget": fast.budget_bytes,
               "base": fast.baseline_time_s, "fast_time": fast.predicted_time_s,
               "fast_seconds": fast_s_used, "long_time": long_time,
               "long_status": outcome.status, "long_seconds": outcome.seconds,
               "long_bound": outcome.bound, "variables": len(milp.problem.variables())}


def render(rows, args) -> str:
    lines = [
        "# Fast path against a long solve (`bench/fast_vs_long.py`)", "",
        f"{datetime.date.today()}, torch {torch.__version__}, {platform.processor() or 'cpu'} "
        f"with {os.cpu_count()} cores; fast path `planner.solve` with {args.fast_limit:.0f} s, "
        f"long run: HiGHS on the unrestricted MILP (any recomputation depth), "
        f"{args.long_limit:.0f} s, warm-started from the fast plan; variants: {args.variants}. "
        "FLOP-estimated profiles at the test suite's inputs. Overheads are predicted extra "
        "step time over the unoptimised step; 'fast vs long' is the fast plan's step time "
        "over the long run's.", "",
        "| model | budget | fast overhead | fast s | long overhead | long status | long s | "
        "fast vs long |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fast = r["fast_time"] / r["base"] - 1
        if r["long_time"] is None:
            long, ratio = "", ""
        else:
            long = f"{r['long_time'] / r['base'] - 1:+.2%}"
            ratio = f"{r['fast_time'] / r['long_time'] - 1:+.2%}"
        lines.append(f"| {r['model']} | {r['fraction']:g} ({format_bytes(r['budget'])}) | "
                     f"{fast:+.2%} | {r['fast_seconds']:.1f} | {long} | {r['long_status']} | "
                     f"{r['long_seconds']:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.8, 0.7])
    parser.add_argument("--fast-limit", type=float, default=60)
    parser.add_argument("--long-limit", type=float, default=600)
    parser.add_argument("--variants", default="all", choices=["all", "exact", "none"])
    parser.add_argument("-o", "--output",
                        default=os.path.join(ROOT, "bench/results/fast_vs_long.md"))
    args = parser.parse_args()
    rows = (row for name in args.models for row in compare(
        name, args.budgets, args.fast_limit, args.long_limit, args.variants))
    write_rows_as_they_finish(rows, args.output, lambda done: render(done, args))


if __name__ == "__main__":
    main()
