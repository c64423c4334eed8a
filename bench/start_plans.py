"""Where the window search starts: the start plan a solve reaches before its MILP search,
from the plain LP relaxation's rounding (what the planner uses) and with the rounding of
the LP re-solved with the recomputation cuts added.

For every configuration under configs/ (its committed profile) and budgets of 1/2, 1/3 and
1/4 of the unoptimised peak: the heuristic plans (``planner.candidates``) with the LP-rounded
ones, the near-miss repair (``repaired_candidates``) and the time-directed search
(``planner.time_search``) from the fastest plan that fits, as in ``planner.solve``, but with
fixed phase times (``--repair-s``, ``--search-s``) instead of shares of a limit, so that runs
on machines of different speeds compare. Each start is given as extra time over the
unoptimised step, before and after the time-directed search, with the seconds the plain LP,
making the cuts and the LP re-solved with them took (the worker solves the first and could
solve the third; ``planner.full_worker``). Rows are written as they finish.

    python bench/start_plans.py                                   # all models
    python bench/start_plans.py --models googlenet mobilenet_v2 --budgets 1/2
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

from bench.common import (  # noqa: E402
    config_names,
    load_config,
    parse_fraction,
    write_rows_as_they_finish,
)
from planner.candidates import heuristic_candidates, repaired_candidates  # noqa: E402
from planner.formulation import build_stage_milp  # noqa: E402
from planner.heuristic import LPRounding, rounded_candidates  # noqa: E402
from planner.recompute_cuts import recomputation_cuts, separate  # noqa: E402
from planner.schedule import baseline_decisions  # noqa: E402
from planner.solve import evaluate, planner_graph  # noqa: E402
from planner.time_search import faster_within  # noqa: E402
from planner.time_shares import machine_speed  # noqa: E402
from planner.window_highs import PersistentHiGHS  # noqa: E402
from profiler.config import ModelConfig  # noqa: E402

# Far above any of these LPs (the GPT with its loss re-solved with its cuts: 25 s at 0.73x).
LP_TIME_LIMIT_S = 600.0


def _roundings(graph, times, budget, variants):
    """The plain LP's rounding and that of the LP re-solved with the cuts it violates (one
    round, as the worker makes), with the seconds of the plain LP, the cuts and the
    re-solve; a rounding is None where its LP was not solved."""
    milp = build_stage_milp(graph, times, budget, variants=variants)
    model = PersistentHiGHS(milp.problem, 1e-4, None)
    marks: list[float] = [time.perf_counter()]
    roundings: dict[int, LPRounding] = {}
    made: list = []
    cut_s: list[float] = []

    def solved(round_: int, x, _objective: float) -> None:
        marks.append(time.perf_counter())
        model.set_values(x)
        roundings[round_] = LPRounding.of(milp, graph)

    def cuts() -> list:
        t0 = time.perf_counter()
        made.extend(recomputation_cuts(graph, milp.keep, milp.recompute,
                                       graph.variant_sites(variants)))
        cut_s.append(time.perf_counter() - t0)
        return made

    separate(model.highs, cuts, deadline=time.perf_counter() + LP_TIME_LIMIT_S, rounds=2,
             on_lp=solved)
    seconds = [marks[1] - marks[0] if len(marks) > 1 else None, cut_s[0] if cut_s else None,
               marks[2] - marks[1] - cut_s[0] if len(marks) > 2 and cut_s else None]
    return roundings.get(0), roundings.get(1), seconds


def _start(profile, graph, budget, candidates, roundings, variants, repair_s, search_s):
    """The fastest plan that fits among ``candidates`` and the plans rounded from
    ``roundings``, after the near-miss repair; and that plan after the time-directed
    search (None, None if nothing fits)."""
    plans = candidates + [evaluate(profile, graph, d) for r in roundings if r is not None
                          for d in rounded_candidates(graph, r)]
    repaired, _ = repaired_candidates(profile, graph, plans, budget, variants, repair_s)
    fitting = [e for e in plans + repaired if e.result.peak_bytes <= budget]
    if not fitting:
        return None, None
    start = min(fitting, key=lambda e: e.result.time_s)
    found = faster_within(profile, graph, start.decisions, budget, search_s,
                          graph.variant_sites(variants))
    after = start if found is None or found.result.time_s >= start.result.time_s else found
    return start.result.time_s, after.result.time_s


def bench_model(config: ModelConfig, fractions: list[tuple[float, str]], variants: str,
                repair_s: float, search_s: float):
    profile = config.load_profile()
    graph = planner_graph(profile)
    base = evaluate(profile, graph, baseline_decisions(graph)).result
    times = [n.time_s for n in profile.nodes]
    for frac, label in fractions:
        budget = int(base.peak_bytes * frac)
        candidates, _ = heuristic_candidates(profile, graph, budget, LP_TIME_LIMIT_S,
                                             variants, lp=False)
        plain, with_cuts, seconds = _roundings(graph, times, budget, variants)
        row = {"model": config.name, "budget": label, "step": base.time_s,
               "lp_s": seconds[0], "cuts_s": seconds[1], "resolve_s": seconds[2]}
        row["plain"] = _start(profile, graph, budget, candidates, [plain], variants,
                              repair_s, search_s)
        row["with_cuts"] = _start(profile, graph, budget, candidates, [plain, with_cuts],
                                  variants, repair_s, search_s)
        yield row


def _pct(seconds: float | None, step: float) -> str:
    return "none fits" if seconds is None else f"+{100 * (seconds / step - 1):.1f}%"


def _s(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


def render(rows, args) -> str:
    lines = [
        "# Start plans of the window search (`bench/start_plans.py`)", "",
        f"{datetime.date.today()}, cpu with {os.cpu_count()} cores at "
        f"{machine_speed():.2f}x the reference speed (`planner.time_shares`), "
        f"{platform.python_version()}; variants: {args.variants}; near-miss repair "
        f"{args.repair_s:.0f} s, time-directed search {args.search_s:.0f} s. Profiles from "
        "configs/. Each start is extra time over the unoptimised step: the fastest plan "
        "that fits (heuristic, LP-rounded or repaired), then after the time-directed search. "
        "'Plain LP' rounds the LP relaxation (what the planner does); 'with cuts' also "
        "rounds the LP re-solved with the recomputation cuts it violated.", "",
        "| model | budget | plain LP s | cuts s | re-solve s | start, plain LP | "
        "after search | start, with cuts | after search |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step = r["step"]
        plain, cut = r["plain"], r["with_cuts"]
        lines.append(f"| {r['model']} | {r['budget']} | {_s(r['lp_s'])} | {_s(r['cuts_s'])} | "
                     f"{_s(r['resolve_s'])} | {_pct(plain[0], step)} | "
                     f"{_pct(plain[1], step)} | {_pct(cut[0], step)} | {_pct(cut[1], step)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = config_names()
    parser.add_argument("--models", nargs="+", default=names, choices=names)
    parser.add_argument("--budgets", nargs="+", default=["1/2", "1/3", "1/4"],
                        help="fractions of the unoptimised peak")
    parser.add_argument("--variants", default="all", choices=["all", "exact", "none"])
    parser.add_argument("--repair-s", type=float, default=10.0)
    parser.add_argument("--search-s", type=float, default=8.0)
    parser.add_argument("-o", "--output",
                        default=os.path.join(ROOT, "bench/results/start_plans.md"))
    args = parser.parse_args()
    try:
        fractions = [(parse_fraction(b), b) for b in args.budgets]
    except ValueError as e:
        parser.error(str(e))
    rows = (row for name in args.models for row in bench_model(
        load_config(name), fractions,
        args.variants, args.repair_s, args.search_s))
    write_rows_as_they_finish(rows, args.output, lambda done: render(done, args))


if __name__ == "__main__":
    main()
