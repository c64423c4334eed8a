"""Large-neighbourhood search over windows of stages and of forward ops (a fix-and-resolve
decomposition).

The stage MILP of a large model (ResNet-50: ~12K binaries) leaves the solver with a good
first plan and a slow crawl after it. Fixing every variable outside a window of
consecutive stages to the incumbent's value leaves a small MILP the solver closes in a
second or two; sliding the window over the backward pass improves the plan where the
full solve stalls. Windows of consecutive forward ops, at every stage, take turns with
them: they move what a stage window cannot, a tensor kept from the forward pass to a late
stage. Every step is warm-started from the incumbent, so the plan never gets
worse; the lower bound still comes from the full problem.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pulp

from .backends import SolveOptions, solve_problem
from .formulation import StageMILP
from .full_solve import FullSolveProcess
from .graph import PlannerGraph
from .merge import merged_point
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
# Sweeps take turns between windows of stages and windows of consecutive forward ops (every
# variable of those ops' values, at every stage): a stage window cannot move a decision
# that spans stages outside it, such as keeping a tensor from the forward pass to its
# backward stage, which a forward-op window frees whole. From ResNet-50's 60 s plan at 1/3
# (+22.9 %), where 40 s more of stage windows found nothing, 40 s of forward-op windows
# reached +18.1 %. Same machine, one run each (bench/results/solve_bench_fast_machine.md):
# with a whole forward-op sweep at each turn, 60 s solves of ResNet-50 at 1/3 went from
# +24.25 to +18.92 % and U-Net at 1/3 from +42.63 to +39.98 %, but GoogLeNet at 1/2 from
# +7.08 to +7.75 %, and the 10-budget ResNet-50 sweep (27 s a budget) lost 0.3-1.1 points
# at 0.7-0.45; with each forward-op turn held to FORWARD_TURN_SHARE of the time left, the
# sweep is within 0.3 point of the planner before at 0.7-0.35 except 0.45 (+13.00 ->
# +14.08 %) and at +28.24 % instead of +34.28 and +35.47 % at 0.3 and 0.25, ResNet-50 at
# 1/3 is at +20.97 and +22.03 % (two runs). A forward-op sweep only after a stage sweep
# that gained under SWEEP_MIN_GAIN left ResNet-50 at 1/3 at +24.25 %. The first forward-op
# windows are 1/FORWARD_WINDOW_PARTS of the forward pass.
FORWARD_WINDOW_PARTS = 8
# One turn of forward-op windows takes at most this share of the time left; a sweep cut
# short goes on where it stopped at the kind's next turn.
FORWARD_TURN_SHARE = 0.5
NEIGHBOURHOODS = ("stages", "forward ops")


def _spans(milp: StageMILP, places: list[tuple[int, pulp.LpVariable]]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per variable of ``milp.vectors``, the first and last place ``places`` gives it
    (-1 as the last where it has none: auxiliaries, the peak)."""
    n = len(milp.vectors.variables)
    first, last = np.full(n, np.iinfo(np.int64).max), np.full(n, -1)
    index = milp.vectors.index
    for p, v in places:
        i = index[v.name]
        first[i] = min(first[i], p)
        last[i] = max(last[i], p)
    return first, last


def _stage_places(milp: StageMILP, graph: PlannerGraph) -> list[tuple[int, pulp.LpVariable]]:
    """Each variable's stages (a keep variable covers the stages since its storage's last
    event)."""
    return [(k, v) for (k, _s), v in milp.keep.items()] + \
        [(k, v) for (k, _o), v in milp.recompute.items()] + \
        [(graph.site_stage[e], v) for (e, _name), v in milp.variant.items()]


def _forward_places(milp: StageMILP, graph: PlannerGraph
                    ) -> list[tuple[int, pulp.LpVariable]]:
    """Each variable's positions in the forward pass: a keep variable its storage's
    creator, a recomputation its op, a variant choice the values its options read and its
    pack."""
    position = {o: i for i, o in enumerate(graph.forward)}
    places = [(position[graph.creator[s]], v) for (_k, s), v in milp.keep.items()] + \
        [(position[o], v) for (_k, o), v in milp.recompute.items()]
    for (e, name), v in milp.variant.items():
        reads = graph.needs_of_choice.get((e, ""), set()) | \
            graph.needs_of_choice.get((e, name), set())
        pack = graph.variant(e, name).pack
        places += [(position[f], v) for f in reads | {pack} if f in position]
    return places


@dataclass
class _Neighbourhood:
    """Windows of consecutive places (stages of the backward pass, or positions in the
    forward pass): a window frees the variables whose places meet it."""

    name: str
    first: np.ndarray
    last: np.ndarray
    extent: int  # places in all: a window this wide is the whole problem
    width: int
    turn_share: float = 1.0  # of the time left, the most one turn of this kind may take
    # The search's own state:
    first_width: int = field(init=False, default=0)  # the width it started with
    pending: list[int] = field(init=False, default_factory=list)  # windows of this sweep
    sweep_start: float = field(init=False, default=0.0)  # the objective when it began
    improved: bool = field(init=False, default=False)  # whether it found a better plan

    def __post_init__(self) -> None:
        self.first_width = self.width

    def begin_sweep(self, objective: float) -> None:
        """Queue the windows of a new sweep (from the last place, by half a window)."""
        stride = max(1, self.width // 2)
        self.pending = list(range(max(self.extent - self.width, 0), -stride, -stride))
        self.sweep_start, self.improved = objective, False


def improve_by_windows(milp: StageMILP, graph: PlannerGraph, start: Decisions, backend: str,
                       options: SolveOptions, time_budget_s: float, window: int = 16,
                       step_limit_s: float = 3.0, full: FullSolveProcess | None = None,
                       persistent: PersistentHiGHS | None = None,
                       neighbourhoods: tuple[str, ...] = NEIGHBOURHOODS
                       ) -> tuple[Decisions, int]:
    """Improve ``start`` (a point of ``milp``) by re-solving windows of ``window`` stages,
    and of consecutive forward ops, with everything else fixed, until ``time_budget_s`` is
    spent. Sweeps take turns between the ``neighbourhoods`` ("stages", "forward ops"); a
    sweep that finds nothing better (or gains under ``SWEEP_MIN_GAIN``) doubles its kind's
    window (a larger neighbourhood). A window spanning every stage (or op) is the whole
    problem and gets the rest of the time: the search
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
    F = len(graph.forward)
    kinds = {"stages": lambda: _Neighbourhood(
                 "window", *_spans(milp, _stage_places(milp, graph)), K, window),
             "forward ops": lambda: _Neighbourhood(
                 "forward-op window", *_spans(milp, _forward_places(milp, graph)), F,
                 max(1, -(-F // FORWARD_WINDOW_PARTS)), FORWARD_TURN_SHARE)}
    sweep_kinds = [kinds[name]() for name in neighbourhoods]
    variables = vectors.variables[:vectors.columns]
    bounds = {v.name: (v.lowBound, v.upBound) for v in variables}
    best = start
    best_x = vectors.values(start)
    best_obj = vectors.objective_of(best_x)
    deadline = time.perf_counter() + time_budget_s
    improved = 0
    if backend != "highs":
        persistent = None
    elif persistent is None:  # one model, whose windows are cut out of it
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

    # The other side's newest plan not taken up: (objective, decisions, base).
    held: tuple[float, Decisions, Decisions | None] | None = None
    origin = start  # the plan this side's own changes started from, sent with its plans

    def take_up(first_sweep: bool) -> None:
        """The other side's newest plan: its changes merged into the best here, if they
        came with their base and the merge keeps every row and is better; else the plan
        itself if better (in the first sweep only a proven optimum or one far better than
        the best here); progress of both searches."""
        nonlocal held, origin
        if full is None:
            return
        found = full.take_plan()
        if found is not None:
            held = found
            merged = None if found[2] is None or persistent is None else \
                merged_point(milp, persistent, best, found[2], found[1], best_obj)
            if merged is not None and better(merged, "merged"):
                held = None
        if held is not None and (not first_sweep or full.proved_optimal
                                 or held[0] < FIRST_SWEEP_TAKE_UP * best_obj):
            if better(held[1], "full MILP"):
                origin = best
            held = None
        progress.update(best_obj, full.bound)

    sweeps = 0
    beyond_limit = 0.0
    try:
        while True:
            near = sweep_kinds[sweeps % len(sweep_kinds)]  # the kinds take turns
            staged = near.last >= 0  # the others (auxiliaries, the peak) are never fixed
            whole = near.width >= near.extent
            if not near.pending:
                near.begin_sweep(best_obj)
            turn_ends = deadline if whole else time.perf_counter() + near.turn_share * (
                deadline - time.perf_counter())
            proved = False
            while near.pending and (near.turn_share >= 1.0 or
                                    time.perf_counter() < turn_ends):
                lo = near.pending.pop(0)
                take_up(sweeps == 0)
                if full is not None and full.proved_optimal:
                    return best, improved
                # What a window took beyond its solver's limit at most (model and process
                # set-up: 4-5 s a window with CP-SAT on a machine at 0.46x, whose 60 s solves
                # took up to 70 s without this) is kept out of the time left.
                left = deadline - time.perf_counter() - beyond_limit
                if left < 1.0:
                    return best, improved
                hi = lo + near.width
                # Fixed: the variables whose places all lie outside [lo, hi), and (with
                # HiGHS) the auxiliaries they alone set.
                outside = staged & ((near.last < lo) | (near.first >= hi))
                if persistent is not None:
                    outside = vectors.held_auxiliaries(outside)
                fixed = np.flatnonzero(outside[:vectors.columns]).tolist()
                # A window spanning everything is the whole problem: it gets the rest of
                # the time (the search then ends, below).
                limit = left if whole else min(
                    step_limit_s * near.width / near.first_width, left)
                start_values = best_x[:vectors.columns].tolist()
                t_window = time.perf_counter()
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
                took = time.perf_counter() - t_window
                beyond_limit = max(beyond_limit, took - limit)
                log.debug("%s %d-%d: %s in %.2f s (limit %.1f s, %d of %d fixed)", near.name,
                          max(lo, 0), hi - 1, status, took, limit, len(fixed), vectors.columns)
                if status in ("optimal", "feasible") and better(
                        milp.decisions(K), f"{near.name} {max(lo, 0)}-{hi - 1}"):
                    near.improved = True
                    if full is not None:
                        full.offer(best, origin)
            sweeps += 1
            if near.pending:  # its turn is over: the next turn of this kind goes on from here
                if deadline - time.perf_counter() < 1.0:
                    # A turn cut short may have run no window (a solve overran the
                    # deadline); without this, turns of no window would follow forever.
                    return best, improved
                continue
            if whole and (proved or not near.improved):
                return best, improved
            if not whole and (not near.improved or near.sweep_start - best_obj <
                              SWEEP_MIN_GAIN * abs(near.sweep_start)):
                near.width *= 2
    finally:
        for v in variables:
            v.lowBound, v.upBound = bounds[v.name]
