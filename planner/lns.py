"""Large-neighbourhood search over windows of stages (a fix-and-resolve decomposition).

The stage MILP of a large model (ResNet-50: ~12K binaries) leaves the solver with a good
first plan and a slow crawl after it. Fixing every variable outside a window of
consecutive stages to the incumbent's value leaves a small MILP the solver closes in a
second or two; sliding the window over the backward pass improves the plan where the
full solve stalls. Every step is warm-started from the incumbent, so the plan never gets
worse; the lower bound still comes from the full problem.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from .backends import SolveOptions, solve_problem
from .formulation import StageMILP
from .graph import PlannerGraph
from .schedule import Decisions
from .window_highs import PersistentHiGHS

log = logging.getLogger(__name__)


def _stages_of_variables(milp: StageMILP, graph: PlannerGraph) -> dict[str, set[int]]:
    stages: dict[str, set[int]] = {}
    for (k, _s), v in milp.keep.items():
        stages.setdefault(v.name, set()).add(k)
    for (k, _o), v in milp.recompute.items():
        stages.setdefault(v.name, set()).add(k)
    for (e, _name), v in milp.variant.items():
        stages.setdefault(v.name, set()).add(graph.site_stage[e])
    return stages


def improve_by_windows(milp: StageMILP, graph: PlannerGraph, start: Decisions, backend: str,
                       options: SolveOptions, time_budget_s: float, window: int = 16,
                       step_limit_s: float = 3.0) -> tuple[Decisions, int]:
    """Improve ``start`` (a point of ``milp``) by re-solving windows of ``window`` stages
    with everything else fixed, until ``time_budget_s`` is spent. A sweep over the backward
    pass that finds nothing better doubles the window (a larger neighbourhood); the search
    ends when a window spanning every stage finds nothing. Returns the best decisions and
    the number of improving windows."""
    K = len(graph.stages)
    stages_of = _stages_of_variables(milp, graph)
    variables = milp.problem.variables()
    bounds = {v.name: (v.lowBound, v.upBound) for v in variables}
    best = start
    best_obj = milp.objective_of(start)
    deadline = time.perf_counter() + time_budget_s
    improved = 0
    persistent = None
    if backend == "highs":  # one model, re-solved with changed bounds
        persistent = PersistentHiGHS(milp.problem, options.gap, options.threads,
                                     options.verbose)
    index = {v.name: i for i, v in enumerate(variables)}
    first_window = window  # a larger window gets proportionally more time per step
    try:
        while True:
            improved_this_sweep = False
            stride = max(1, window // 2)
            for lo in range(max(K - window, 0), -stride, -stride):
                left = deadline - time.perf_counter()
                if left < 1.0:
                    return best, improved
                free = set(range(max(lo, 0), min(lo + window, K)))
                value = milp.values(best)
                fixed = {v.name for v in variables
                         if v.name in stages_of and not (stages_of[v.name] & free)}
                limit = min(step_limit_s * window / first_window, left)
                if persistent is not None:
                    found = persistent.solve({index[n]: value[n] for n in fixed},
                                             [value[v.name] for v in variables], limit)
                else:
                    for v in variables:
                        if v.name in fixed:
                            v.lowBound = v.upBound = value[v.name]
                        else:
                            v.lowBound, v.upBound = bounds[v.name]
                    milp.set_start(best)
                    found = solve_problem(milp.problem, backend, replace(
                        options, time_limit_s=limit, warm_start=True)).has_solution
                if not found:
                    continue
                candidate = milp.decisions(K)
                objective = milp.objective_of(candidate)
                # Re-checked in bytes: the solver's rows are in MiB, within its tolerances.
                if objective < best_obj - 1e-9 * max(1.0, abs(best_obj)) and (
                        milp.budget is None or milp.evaluate_peak(candidate) <= milp.budget):
                    best = candidate
                    best_obj = objective
                    improved += 1
                    improved_this_sweep = True
                    log.info("window %d-%d: objective %.6g", max(lo, 0), lo + window - 1,
                             best_obj)
            if not improved_this_sweep:
                if window >= K:
                    return best, improved
                window *= 2
    finally:
        for v in variables:
            v.lowBound, v.upBound = bounds[v.name]
