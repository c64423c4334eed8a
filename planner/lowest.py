"""Naming the smallest feasible budget: the error an infeasible budget raises, the floor
that proves it, and the search for the lowest-peak plan.

``solve`` raises ``InfeasibleBudgetError`` when no plan fits. Below the floor
(``planner.floor``) the budget is proven infeasible; either way the error names the
smallest budget a plan was found for, by a lowest-peak search and a bisection of budgeted
searches (``lowest_plan``). Lowest-peak plans are remembered per profile, so that a later
solve of a budget near the one an error named starts from the plan that set it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from profiler.ir import Profile

from .backends import SolveOptions, tightest_bound
from .budget import format_bytes
from .candidates import (
    Evaluation,
    evaluate,
    heuristic_candidates,
    lowest_peak_search,
    peak_search_from,
    planner_graph,
    uses_only_variants,
)
from .floor import PeakFloor, peak_floor
from .formulation import MIB_SCALE
from .graph import PlannerGraph
from .schedule import Decisions
from .time_shares import milp_fits, too_large

log = logging.getLogger(__name__)

BISECTION_PROBES = 3  # budgeted searches of smallest_feasible_budget
# The share of its time the lowest-plan search first gives the peak-directed search from
# its lowest candidate, for a budget searched in vain: a near miss of the repair is often
# a few moves from a plan that fits (U-Net's measured profile at 1/3: the repair's 10 s
# reach 5.04 GiB for a 5.02 GiB budget, 16 s reach 4.98 GiB), where the lowest-peak MILP,
# with recomputation chains of at most 12 ops, cannot go below 5.03 GiB.
NEAR_MISS_SHARE = 0.4
# Lowest-peak plans found in this process, per profile: later solves start from them too,
# so a budget just above a reported smallest feasible one is solved from that plan.
_LOW_PLANS: dict[str, list[Decisions]] = {}


class InfeasibleBudgetError(ValueError):
    """No schedule fits the budget; ``smallest_feasible`` is a budget that does, and
    ``floor`` (``planner.floor.PeakFloor``), where given, a peak no plan goes below."""

    def __init__(self, budget: int, smallest_feasible: int | None, reason: str,
                 proven: bool = True, floor: PeakFloor | None = None):
        """``proven``: ``reason`` shows that no plan fits (given decisions that peak above
        the budget); otherwise the budget is proven infeasible only if under ``floor``."""
        self.budget = budget
        self.smallest_feasible = smallest_feasible
        self.floor = floor
        self.lower_bound = floor.peak_bytes if floor is not None else None
        below_floor = floor is not None and budget < floor.peak_bytes
        self.proven = proven or below_floor
        note = ""
        if smallest_feasible is not None and floor is not None and \
                smallest_feasible <= floor.peak_bytes:
            note = ", proven: no plan peaks below it"
        elif smallest_feasible is not None and not proven:
            note = ", the best found in the time limit"
            if floor is not None:
                short = (smallest_feasible - floor.peak_bytes) / smallest_feasible
                note += f"; no plan peaks below {floor.peak_bytes} bytes, {100 * short:.2f} % less"
        found = (f"the smallest feasible budget is {format_bytes(smallest_feasible)} "
                 f"({smallest_feasible} bytes{note})"
                 if smallest_feasible is not None
                 else "no feasible budget was found within the time limit")
        if below_floor:
            assert floor is not None
            reason = f"{floor.describe()}; {reason}"
        head = f"budget {format_bytes(budget)} ({budget} bytes) is infeasible" \
            if self.proven else \
            f"no plan found for budget {format_bytes(budget)} ({budget} bytes) in the time limit"
        tail = "" if self.proven else "; a longer time limit may find one"
        super().__init__(f"{head}: {found}; {reason}{tail}")


def floor_text(profile: Profile, graph: PlannerGraph) -> str:
    params = sum(profile.storage_bytes[s] for s in graph.constant_storages)
    outs = sum(profile.storage_bytes[s] for s in graph.pinned_storages | graph.tangent_storages)
    return (f"parameters, buffers and inputs alone take {format_bytes(params)}, the outputs "
            f"and their gradients {format_bytes(outs)}")


def smallest_feasible_budget(profile: Profile, backend: str = "highs",
                             options: SolveOptions | None = None) -> tuple[int, float | None]:
    """The peak of the lowest-memory plan found (``lowest_plan``), and a lower bound
    (bytes) on the peak of any plan: the floor (``planner.floor``), or the lowest-peak
    MILP's bound where higher and not above the plan found (that bound holds for the MILP's
    recomputation candidates only: on U-Net's measured profile it was 5.17 GiB with a
    5.06 GiB plan found)."""
    options = options or SolveOptions()
    t0 = time.perf_counter()
    graph = planner_graph(profile)
    heuristic_only = too_large(graph, options.time_limit_s)
    candidates, _ = heuristic_candidates(profile, graph, None, options.time_limit_s / 8,
                                options.variants, lp=not heuristic_only)
    floor = peak_floor(profile, graph, options.variants, options.variants).peak_bytes
    left = options.time_limit_s - (time.perf_counter() - t0)
    best, bound = lowest_plan(profile, graph, backend, replace(options, time_limit_s=left),
                              candidates, floor)
    if bound is not None and bound > best.result.peak_bytes:
        bound = None
    return best.result.peak_bytes, max(bound or 0, floor)


def lowest_plan(profile: Profile, graph: PlannerGraph, backend: str, options: SolveOptions,
                candidates: list[Evaluation], floor: int, above: int = 0
                ) -> tuple[Evaluation, float | None]:
    """The lowest-peak plan found from ``candidates`` (and the lowest plans of earlier
    solves) in ``options.time_limit_s``, ``floor`` (bytes, ``planner.floor``) the least
    peak to bisect down to, and the lowest-peak MILP's bound (bytes, or None;
    it holds for the MILP's recomputation candidates only).

    Half the time goes to the lowest-peak search; the rest to budgeted searches that bisect
    between the best peak found and the higher of the floor and ``above`` (a budget already
    searched in vain, tried first): a min-max objective is hard for the solver and for
    window improvement, while a budgeted search starts from LP-rounded plans near its
    budget (on ResNet-50 it reaches budgets a third lower; on U-Net's measured profile
    5.03 GiB against the lowest-peak search's 5.25 GiB).
    """
    from .solve import probe_budget  # (solve calls this module when nothing fits)
    t0 = time.perf_counter()
    candidates = candidates + [evaluate(profile, graph, d)
                               for d in low_plans(profile.graph_hash)
                               if uses_only_variants(graph, options.variants, d)]
    if above > floor:
        # A budget searched in vain: go on from the lowest plan until one fits it.
        first = peak_search_from(profile, graph, replace(
            options, time_limit_s=NEAR_MISS_SHARE * options.time_limit_s), candidates,
            stop_at=above)
        remember_low_plan(profile.graph_hash, first.decisions)
        if first.result.peak_bytes <= above:
            return first, None
        candidates.append(first)
    low_options = replace(options, time_limit_s=0.5 * options.time_limit_s)
    if too_large(graph, options.time_limit_s) or not milp_fits(
            graph, options, t0 + low_options.time_limit_s, "lowest-peak MILP"):
        # For a budget searched in vain, the first plan that fits it is the one wanted.
        best = peak_search_from(profile, graph, low_options, candidates,
                                stop_at=above if above > floor else None)
        bound = None
    else:
        best, outcome = lowest_peak_search(profile, graph, backend, low_options, candidates)
        bound = tightest_bound(outcome.bound)
        bound = bound / MIB_SCALE if bound is not None else None
    # The bisection's low end is the floor, not the MILP's bound: that bound holds for the
    # MILP's recomputation candidates only, and on U-Net's measured profile a budgeted search
    # found a 4.97 GiB plan under a 5.03 GiB bound.
    # A budget searched in vain is tried once more first, from the plan just found (its
    # repair; U-Net's measured profile at 1/3: 5.02 GiB, lowest-peak plan 5.03 GiB).
    retry = above if above > floor else None
    lo = max(floor, above)
    remember_low_plan(profile.graph_hash, best.decisions)  # the probes start from it
    for probes_left in range(BISECTION_PROBES, 0, -1):
        left = options.time_limit_s - (time.perf_counter() - t0)
        peak = best.result.peak_bytes
        if left < 3.0 or (retry is None and peak - lo < 0.01 * peak) or peak <= above:
            break
        target, retry = retry if retry is not None else int(lo + 0.5 * (peak - lo)), None
        try:
            found = probe_budget(profile, target, backend, replace(
                options, time_limit_s=left / probes_left))
            if found.result.peak_bytes < peak:
                best = found
            log.info("budget %s reached: peak %s", format_bytes(target),
                     format_bytes(best.result.peak_bytes))
        except InfeasibleBudgetError:
            lo = target
    remember_low_plan(profile.graph_hash, best.decisions)
    return best, bound


def low_plans(graph_hash: str) -> list[Decisions]:
    """The lowest-peak plans remembered for a profile (``remember_low_plan``)."""
    return list(_LOW_PLANS.get(graph_hash, []))


def remember_low_plan(graph_hash: str, decisions: Decisions) -> None:
    """Keep a lowest-peak plan for later solves of the profile: a budget at the smallest
    feasible one an error named is then solved from the plan that set it."""
    plans = _LOW_PLANS.setdefault(graph_hash, [])
    if any(d is decisions for d in plans):
        return
    plans.append(decisions)
    del _LOW_PLANS[graph_hash][:-8]
