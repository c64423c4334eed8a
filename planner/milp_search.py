"""The MILP stage of a budgeted solve: the full stage MILP warm-started from the best plan
found so far, then window-by-window improvement (``planner.lns``) until the deadline, beside
the full MILP in a second process (``planner.full_solve``) when there is one.

A first solve of the MILP without writes in place (a better start, when HiGHS's heuristics
stalled on the rows with them) was dropped on 2026-12-02: with the time-directed search
before it and faster windows after it, its 6 s (a second 25K-binary build and solve) were
worth more to the windows. Eight 60 s solves with and without it: ResNet-50 +8.54/+12.12/
+19.04 % against +7.37/+11.56/+18.34 % at 1/2, 1/3, 1/4; GoogLeNet +12.23/+18.16 % against
+8.60/+17.77 % at 1/3, 1/4; MobileNet-V2 at 1/4 +4.53 against +4.29 %; U-Net +1.53 % both at
1/2, and at 1/3 +17.29 against +19.42 % (the one loss)."""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from profiler.ir import Profile

from .backends import SolveOptions, SolveOutcome, outcome_of, solve_problem, tightest_bound
from .budget import format_bytes
from .candidates import Evaluation, evaluate
from .formulation import StageMILP, build_stage_milp
from .full_solve import FullSolveProcess
from .graph import PlannerGraph
from .lns import improve_by_windows
from .merge import merged_point
from .schedule import Decisions
from .window_highs import PersistentHiGHS

log = logging.getLogger(__name__)
# Share of the time left after the heuristics that the full MILP gets; window-by-window
# improvement (planner.lns) gets the rest when the full solve does not prove optimality.
# Without a warm start (no heuristic plan fits) the full MILP must first find a plan, and
# gets the larger share.
LNS_SHARE = 0.1
COLD_SHARE = 0.5
# The MILP's least share of the time limit when the heuristics took the rest (then the
# solve overruns its limit by up to this share: 1.25x on the GPT with its loss at 1/3 when
# the MILP had at least half the limit whatever the heuristics had used).
MILP_MIN_SHARE = 0.1


def milp_search(profile: Profile, graph: PlannerGraph, budget_bytes: int, backend: str,
                options: SolveOptions, start: Evaluation | None, fitting: list[Evaluation],
                deadline: float, full: FullSolveProcess | None = None,
                max_recompute_depth: int | None = 12, milp: StageMILP | None = None
                ) -> tuple[StageMILP, SolveOutcome, Evaluation | None, float | None]:
    """The full MILP warm-started from ``start``, and window-by-window improvement, until
    ``deadline`` (``time.perf_counter()``); plans that fit are appended to ``fitting``.
    With ``full`` (the full MILP already solving in a second process, ``planner.full_solve``)
    the window search runs beside it; otherwise the full MILP gets a share of the time
    first. ``milp``, if given, is that MILP already built (used where ``start`` is a point
    of it). Returns the MILP, the full solve's outcome, the MILP's last plan and its
    objective."""
    if milp is None or (start is not None and not milp.represents(start.decisions)):
        times = [n.time_s for n in profile.nodes]
        milp = build_stage_milp(graph, times, budget_bytes, variants=options.variants,
                                include=start.decisions if start is not None else None,
                                max_recompute_depth=max_recompute_depth)
    remaining = max(deadline - time.perf_counter(), MILP_MIN_SHARE * options.time_limit_s)
    log.info("MILP built; %.1f s left for it", remaining)
    warm = start is not None and milp.represents(start.decisions)
    if full is not None:
        return _beside(profile, graph, milp, options, start if warm else None, fitting,
                       time.perf_counter() + remaining, full)
    if warm:
        milp.set_start(start.decisions)
    t_full = time.perf_counter()
    share = LNS_SHARE if warm else COLD_SHARE
    outcome = solve_problem(milp.problem, backend,
                            replace(options, time_limit_s=share * remaining, warm_start=warm))
    from_milp = None
    objective_of_milp = outcome.objective
    if outcome.has_solution:
        from_milp = evaluate(profile, graph, milp.decisions(len(graph.stages)))
        if from_milp.result.peak_bytes <= budget_bytes:
            fitting.append(from_milp)
    left = remaining - (time.perf_counter() - t_full)
    incumbent = from_milp if from_milp is not None and from_milp in fitting else None
    if warm and (incumbent is None or
                 milp.objective_of(start.decisions) < milp.objective_of(incumbent.decisions)):
        # HiGHS keeps a warm start; CP-SAT need not (its rows are rounded up, so a start
        # that just fits may break one): the windows search from the better of the two.
        incumbent = start
    if outcome.status != "optimal" and incumbent is not None and left > 2.0:
        # The full solve stopped at its limit: improve its plan window by window.
        decisions, steps = improve_by_windows(milp, graph, incumbent.decisions, backend,
                                              options, left)
        if steps:
            improved = _checked(profile, graph, decisions, budget_bytes, fitting)
            if improved is not None:
                from_milp = improved
                objective_of_milp = milp.objective_of(decisions)
    return milp, outcome, from_milp, objective_of_milp


def _checked(profile: Profile, graph: PlannerGraph, decisions: Decisions, budget_bytes: int,
             fitting: list[Evaluation]) -> Evaluation | None:
    """``decisions`` simulated, and appended to ``fitting`` if they fit (the simulator has
    the last word)."""
    found = evaluate(profile, graph, decisions)
    if found.result.peak_bytes <= budget_bytes:
        fitting.append(found)
        return found
    log.warning("MILP plan peaks at %s over the budget %s: dropped",
                format_bytes(found.result.peak_bytes), format_bytes(budget_bytes))
    return None


def worker_outcome(profile: Profile, graph: PlannerGraph, budget_bytes: int,
                   fitting: list[Evaluation], deadline: float, full: FullSolveProcess
                   ) -> tuple[None, SolveOutcome, Evaluation | None, float | None]:
    """What ``milp_search`` returns when no time is left to build the MILP here: the full
    MILP worker's outcome and its newest plan, checked by the simulator (appended to
    ``fitting`` if it fits), with no objective of its own (the simulator's is reported).
    Building it anyway overran the limit by the build (the GPT at 60 s on a machine a third
    as fast: 77 s)."""
    outcome, last = full.close(min(max(deadline - time.perf_counter(), 0.0), 1.0))
    if last is None:
        return None, outcome, None, None
    return None, outcome, _checked(profile, graph, last[1], budget_bytes, fitting), None


def _objective(milp: StageMILP, decisions: Decisions | None) -> float | None:
    return None if decisions is None else milp.objective_of(decisions)


def _beside(profile: Profile, graph: PlannerGraph, milp: StageMILP, options: SolveOptions,
            start: Evaluation | None, fitting: list[Evaluation], deadline: float,
            full: FullSolveProcess
            ) -> tuple[StageMILP, SolveOutcome, Evaluation | None, float | None]:
    """The window search on ``milp`` from ``start`` (or, without one, from the full MILP's
    first plan, waited for up to COLD_SHARE of the time) beside ``full`` until
    ``deadline``."""
    # A short full solve here first, as in one process: HiGHS's heuristics around a
    # checkpoint plan find what windows take many steps for (ResNet-50 at 0.3 in 27 s:
    # +17.2 % with it, +20.6-21.3 % from the start alone), the worker's problem may not
    # contain the start (deeper recomputations than its candidates), and small problems are
    # proved (or refuted) at once, while the worker still starts and builds its own.
    # On one HiGHS model, which the window search then re-solves.
    limit = LNS_SHARE * (deadline - time.perf_counter())
    log.info("solving with highs: %d variables, %d constraints, time limit %.1f s",
             milp.vectors.columns, len(milp.problem.constraints), limit)
    t0 = time.perf_counter()
    persistent = PersistentHiGHS(milp.problem, options.gap, options.threads, options.verbose)
    status, bound = persistent.solve_whole(
        milp.vectors.values(start.decisions)[:milp.vectors.columns].tolist()
        if start is not None else None, limit)
    first = outcome_of(milp.problem, status, time.perf_counter() - t0, bound)
    log.info("highs: %s in %.2f s, objective %s, bound %s", first.status, first.seconds,
             first.objective, first.bound)
    decisions = start.decisions if start is not None else None
    if first.has_solution:
        found = milp.decisions(len(graph.stages))
        if milp.improves(milp.vectors.values(found), _objective(milp, decisions)):
            decisions = found
    if decisions is not None:
        full.offer(decisions)
    proved_here = first.status in ("optimal", "infeasible")
    wait_until = time.perf_counter() + COLD_SHARE * (deadline - time.perf_counter())
    while decisions is None and not proved_here and not full.finished and \
            time.perf_counter() < wait_until:
        found = full.take_plan()  # no plan to start the windows from: wait for one
        if found is not None:
            decisions = found[1]
        else:
            time.sleep(0.05)
    steps = 0
    # (A worker that ended without proving its optimum leaves the windows to run: its
    # problem may lack the plan's deeper recomputations and be infeasible without them.)
    if decisions is not None and not full.proved_optimal and not proved_here:
        decisions, steps = improve_by_windows(
            milp, graph, decisions, "highs", options, deadline - time.perf_counter(),
            full=full, persistent=persistent)
    # The window search ends early only when it has converged (a window spanning every
    # stage found nothing) or the worker proved its plan: then the solve ends, as in one
    # process, with the bound the worker has reached.
    outcome, last = full.close(min(deadline - time.perf_counter(), 1.0)
                               if decisions is not None and not proved_here else 0.0)
    if outcome.status == "infeasible" and decisions is not None:
        # The worker's problem lacks this plan's recomputations (deeper than its
        # candidates; U-Net's measured profile at 1/3): its infeasibility and its missing
        # bound say nothing about the plan. The bound is the in-process MILP's, whose
        # problem holds them.
        outcome = replace(first, status="feasible")
    if proved_here:  # nothing left for the worker to find
        outcome = replace(first, bound=tightest_bound(first.bound, outcome.bound))
        if first.status == "infeasible":
            return milp, outcome, None, None
    if last is not None and decisions is not None and last[2] is not None:
        # The worker's last changes (it searched windows too), merged into the plan here.
        merged = merged_point(milp, persistent, decisions, last[2], last[1],
                              _objective(milp, decisions))
        if merged is not None:
            decisions = merged
    if last is not None and milp.represents(last[1]) and \
            milp.improves(milp.vectors.values(last[1]), _objective(milp, decisions)):
        decisions = last[1]
    if decisions is None:
        return milp, outcome, None, None
    objective = milp.objective_of(decisions)
    from_milp = _checked(profile, graph, decisions, milp.budget, fitting) \
        if start is None or decisions is not start.decisions else None
    if outcome.status == "no_solution" and from_milp is not None:
        outcome = replace(outcome, status="feasible")  # the window search's plan
    if outcome.status == "optimal" and objective > outcome.objective + 1e-9 * max(
            1.0, abs(outcome.objective)):
        outcome = replace(outcome, status="feasible")  # its optimum did not fit in bytes
    return milp, outcome, from_milp, objective
