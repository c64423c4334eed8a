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

import numpy as np

from .backends import SolveOptions, solve_problem
from .formulation import StageMILP
from .full_solve import FullSolveProcess
from .graph import PlannerGraph
from .progress import ProgressLog
from .schedule import Decisions
from .window_highs import PersistentHiGHS

log = logging.getLogger(__name__)
# A sweep over the backward pass whose windows together lowered the objective by less than
# this share doubles the window, as one that found nothing does. On ResNet-50 at 1/2 of its
# peak, 32-stage sweeps gained 0.2 % (+7.155 to +7.141 s of recomputation) and kept the
# window at 32 for the rest of a 60 s solve; the 64-stage windows a 900 s run reached then
# took it to 5.16 s in four steps. At 1 % (until 2026-12-05) ResNet-50 at 1/4 spent 20 s
# on 16-stage sweeps gaining 5 % and 0.1 %, and its one 32-stage window at the end gained
# 4.4 %. At 10 %, 60 s solves on a machine at 1.43x the reference speed
# (bench/results/solve_bench_sweep_gain.md): ResNet-50 +9.66 % against +10.44 % at 1/2,
# +30.25-31.45 % against +33.18 % at 1/4, U-Net +40.76 % against +41.88 % at 1/3; GoogLeNet
# at 1/4 +25.27 % against +24.92 % (and +24.92 % in the next run), ResNet-50 at 1/3 +24.25 %
# against +24.13 % (both seen at 1 %).
SWEEP_MIN_GAIN = 0.1
# In the first sweep the worker's plan is taken up only when its objective is under this
# share of the best here: from a start far worse than the worker's plan the first sweep
# rarely catches up (ResNet-50 at 0.4 of its peak, 27 s: windows from the 22.8 s start
# found 0.7 s in 9 s beside the worker's 14.9 s plan; +14.2 % against +12.2 % when taken
# up), while from one close to it it can reach a better basin (GoogLeNet at 1/3: 12.1 s
# start, 9.7 s worker plan, below).
FIRST_SWEEP_TAKE_UP = 0.75


def _stage_spans(milp: StageMILP, graph: PlannerGraph) -> tuple[np.ndarray, np.ndarray]:
    """Per variable of ``milp.vectors``, the first and last stage it belongs to (a keep
    variable covers the stages since its storage's last event; an auxiliary none: -1 as
    its last)."""
    n = len(milp.vectors.variables)
    first, last = np.full(n, np.iinfo(np.int64).max), np.full(n, -1)
    index = milp.vectors.index
    stages = [(k, v) for (k, _s), v in milp.keep.items()] + \
        [(k, v) for (k, _o), v in milp.recompute.items()] + \
        [(graph.site_stage[e], v) for (e, _name), v in milp.variant.items()]
    for k, v in stages:
        i = index[v.name]
        first[i] = min(first[i], k)
        last[i] = max(last[i], k)
    return first, last


def improve_by_windows(milp: StageMILP, graph: PlannerGraph, start: Decisions, backend: str,
                       options: SolveOptions, time_budget_s: float, window: int = 16,
                       step_limit_s: float = 3.0, full: FullSolveProcess | None = None,
                       persistent: PersistentHiGHS | None = None) -> tuple[Decisions, int]:
    """Improve ``start`` (a point of ``milp``) by re-solving windows of ``window`` stages
    with everything else fixed, until ``time_budget_s`` is spent. A sweep over the backward
    pass that finds nothing better doubles the window (a larger neighbourhood). A window
    spanning every stage is the whole problem and gets the rest of the time: the search
    ends when it proves its plan optimal or finds nothing better (until 2026-12-05 it had
    a step's limit, and U-Net at 1/2 ended a 60 s solve at 38 s, its gap 9.4 %). With
    ``full`` (the full MILP
    solving in another process) its plans are taken up between windows from the second
    sweep on, and the window search's are offered to it; the search ends when it proves
    optimality. ``persistent``: ``milp``'s HiGHS model, if one was built already (HiGHS
    only). The first sweep keeps to ``start`` unless the worker's plan is far better
    (``FIRST_SWEEP_TAKE_UP``): a lower objective is not a better place to search from
    (GoogLeNet at 1/3 of its peak: windows from the worker's 9.67 s plan ended at 8.06 s,
    from the 12.11 s start at 4.01 s, in the same 60 s solve). Returns the best decisions
    and the number of improving windows (or plans taken up)."""
    K = len(graph.stages)
    vectors = milp.vectors
    first, last = _stage_spans(milp, graph)
    staged = last >= 0  # the others (auxiliaries, the peak) are never fixed
    variables = vectors.variables[:vectors.columns]
    bounds = {v.name: (v.lowBound, v.upBound) for v in variables}
    best = start
    best_x = vectors.values(start)
    best_obj = vectors.objective_of(best_x)
    deadline = time.perf_counter() + time_budget_s
    improved = 0
    if backend != "highs":
        persistent = None
    elif persistent is None:  # one model, re-solved with changed bounds
        persistent = PersistentHiGHS(milp.problem, options.gap, options.threads,
                                     options.verbose)

    def better(candidate: Decisions, where: str) -> bool:
        nonlocal best, best_x, best_obj, improved
        x = vectors.values(candidate)
        if milp.improves(x, best_obj):
            best, best_x, best_obj = candidate, x, vectors.objective_of(x)
            improved += 1
            log.info("%s: objective %.6g", where, best_obj)
            return True
        return False

    progress = ProgressLog("highs")

    held: tuple[float, Decisions] | None = None  # the worker's newest plan, not taken up

    def take_up(first_sweep: bool) -> None:
        """The full MILP's newest plan, if better (in the first sweep only a proven optimum
        or one far better than the best here); progress of both searches."""
        nonlocal held
        if full is None:
            return
        found = full.take_plan()
        if found is not None:
            held = found
        if held is not None and (not first_sweep or full.proved_optimal
                                 or held[0] < FIRST_SWEEP_TAKE_UP * best_obj):
            better(held[1], "full MILP")
            held = None
        progress.update(best_obj, full.bound)

    first_window = window  # a larger window gets proportionally more time per step
    sweeps = 0
    try:
        while True:
            improved_this_sweep = proved = False
            sweep_start = best_obj
            stride = max(1, window // 2)
            for lo in range(max(K - window, 0), -stride, -stride):
                take_up(sweeps == 0)
                if full is not None and full.proved_optimal:
                    return best, improved
                left = deadline - time.perf_counter()
                if left < 1.0:
                    return best, improved
                # Fixed: the variables of stages outside [lo, lo + window) only.
                fixed = np.flatnonzero((staged & ((last < lo) | (first >= lo + window)))
                                       [:vectors.columns]).tolist()
                # A window spanning every stage is the whole problem: it gets the rest of
                # the time (the search then ends, below).
                limit = left if window >= K else min(step_limit_s * window / first_window,
                                                     left)
                start_values = best_x[:vectors.columns].tolist()
                if persistent is not None:
                    status = persistent.solve(
                        {i: start_values[i] for i in fixed}, start_values, limit,
                        stop=None if full is None else lambda: full.proved_optimal)
                else:
                    fixed_set = set(fixed)
                    for i, v in enumerate(variables):
                        if i in fixed_set:
                            v.lowBound = v.upBound = start_values[i]
                        else:
                            v.lowBound, v.upBound = bounds[v.name]
                        v.varValue = start_values[i]  # the warm start
                    status = solve_problem(milp.problem, backend, replace(
                        options, time_limit_s=limit, warm_start=True)).status
                proved = status == "optimal"
                if status in ("optimal", "feasible") and better(
                        milp.decisions(K), f"window {max(lo, 0)}-{lo + window - 1}"):
                    improved_this_sweep = True
                    if full is not None:
                        full.offer(best)
            sweeps += 1
            if window >= K and (proved or not improved_this_sweep):
                return best, improved
            if window < K and (not improved_this_sweep or
                               sweep_start - best_obj < SWEEP_MIN_GAIN * abs(sweep_start)):
                window *= 2
    finally:
        for v in variables:
            v.lowBound, v.upBound = bounds[v.name]
