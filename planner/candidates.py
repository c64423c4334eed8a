"""Plans that need no search by the MILP, and how they are compared.

* ``evaluate``: a plan (``Decisions``) built into a schedule and simulated independently;
* ``heuristic_candidates``: the unoptimised plan, structural checkpoint sets, per-block
  checkpointing of the model's modules and LP-rounded plans, each with and without every
  variant, kept on their Pareto front of peak and time;
* ``lowest_peak_search``: the lowest-peak plan (min-max MILP, then the peak-directed local
  search and window improvement), which names the smallest feasible budget.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

from profiler.ir import Profile

from .backends import SolveOptions, SolveOutcome, solve_problem, tightest_bound
from .formulation import StageMILP, build_stage_milp
from .full_solve import FullSolveProcess, parallel_available
from .graph import PlannerGraph
from .heuristic import (
    lp_rounding_candidates,
    module_block_candidates,
    rounded_candidates,
    structural_candidates,
)
from .in_place import allows
from .lns import improve_by_windows
from .peak_search import lower_peak
from .schedule import Decisions, all_variants, baseline_decisions, build_schedule
from .simulator import SimulationResult, simulate, simulate_by_stage

log = logging.getLogger(__name__)

# The share of the time left that simulating the structural checkpoint plans may take
# (all of them on every model of solve_bench at 60 s; the GPT's take 6 s).
STRUCTURAL_SHARE = 0.25


@dataclass
class Evaluation:
    """A plan's decisions and their independent simulation."""

    decisions: Decisions
    result: SimulationResult


def evaluate(profile: Profile, graph: PlannerGraph, decisions: Decisions) -> Evaluation:
    """Build the schedule for ``decisions`` and simulate it independently."""
    return Evaluation(decisions, simulate(profile, build_schedule(graph, decisions)))


def planner_graph(profile: Profile) -> PlannerGraph:
    """The planner's view of a profile: stages, storages, recomputable ops, variants."""
    return PlannerGraph.build(profile.nodes, profile.storage_bytes, profile.outputs,
                              profile.pointwise_out)


def heuristic_candidates(profile: Profile, graph: PlannerGraph, budget: int | None,
                         time_limit_s: float, variants: str, lp: bool = True,
                         deadline: float | None = None, full: FullSolveProcess | None = None
                         ) -> tuple[list[Evaluation], float | None]:
    """Heuristic plans (all kept; checkpoint sets, structural and LP-rounded; each with
    and without every variant), simulated; the first is the unoptimised plan. Also the LP
    relaxation's optimum (for ``budget``, or of the lowest peak without one), solved in at
    most ``time_limit_s``: here, or with ``full`` (the full MILP's process, solving the
    same problem) by that process for its cuts, while this one simulates the other plans.
    GoogLeNet at 1/2 of its peak: the LP took 10.6 s of this core's 19 s of heuristics on a
    machine a third of the reference speed, while the worker solved it too.

    With a ``deadline`` (``time.perf_counter()``, the search's) the structural checkpoint
    sets are simulated in at most STRUCTURAL_SHARE of the time left after the LP, the others
    left out (the GPT's 60 take 6 s, more than a 5 s limit); the unoptimised, per-block and
    LP-rounded plans always are."""
    times = [n.time_s for n in profile.nodes]
    every = all_variants(graph, variants)
    first = itertools.chain(
        module_block_candidates(graph),
        module_block_candidates(graph, every) if every else [],
        [baseline_decisions(graph, every)] if every else [])
    structural = itertools.chain(  # with variants first: they are mostly faster
        structural_candidates(graph, times, every) if every else [],
        structural_candidates(graph, times))
    bound: list[float] = []
    if lp and full is not None:
        # Waited for even where no rounded plan fits: their near misses are what the
        # repair (repaired_candidates) makes a start of. Waiting at most 2 % of the limit
        # once the other plans were simulated (2026-12-06, paired 60 s solves at 1.0-1.2x
        # the reference speed) took GoogLeNet at 1/3 from +11.05 to +16.30 % (at 1/2 from
        # +7.71 to +6.72 %, at 1/4 +25.92 % against +24.46 % at 0.46x).
        rounded: Iterable[Decisions] = _rounded_by(full, graph, time.perf_counter() +
                                                   time_limit_s, bound)
    else:
        rounded, lp_bound = lp_rounding_candidates(
            graph, times, budget, time_limit_s=time_limit_s, variants=variants) \
            if lp else ([], None)
        bound += [lp_bound] if lp_bound is not None else []
    if deadline is not None:
        now = time.perf_counter()
        stop = now + STRUCTURAL_SHARE * (deadline - now)
        structural = itertools.takewhile(lambda _: time.perf_counter() < stop, structural)
    front = pareto_front_of(profile, graph, itertools.chain(
        [baseline_decisions(graph)], (with_in_place(d, variants) for d in first),
        (with_in_place(d, variants) for d in structural), rounded))
    return front, bound[0] if bound else None


def pareto_front_of(profile: Profile, graph: PlannerGraph, plans: Iterable[Decisions]
                    ) -> list[Evaluation]:
    """``pareto_front`` of ``plans`` simulated: each is replayed a stage at a time and
    dropped at the first stage where a plan on the front so far peaks no higher and is no
    slower than it already is (both only grow). Same front as simulating every plan whole;
    GoogLeNet's heuristic plans at 1/3 took 8.8 s that way on this project's slow machine."""
    it = iter(plans)
    first = evaluate(profile, graph, next(it))
    front: list[Evaluation] = []

    def dominated(peak: int, seconds: float) -> bool:
        return any(f.result.peak_bytes <= peak and f.result.time_s <= seconds for f in front)

    for decisions in it:
        simulated = simulate_by_stage(profile, graph, decisions, dominated)
        if simulated is not None:
            front = _on_front(front, Evaluation(decisions, simulated[0]))
    return [first] + sorted(front, key=lambda e: e.result.peak_bytes)


def _rounded_by(full: FullSolveProcess, graph: PlannerGraph, until: float,
                bound: list[float]) -> Iterator[Decisions]:
    """The LP-rounded plans of the full MILP's LP relaxation (waiting for it until
    ``until``), appending its optimum to ``bound``."""
    rounding = full.lp_rounding(until)
    if rounding is None:
        log.info("no LP rounding: the full MILP's LP relaxation did not come in time")
        return
    bound.append(rounding.objective)
    yield from rounded_candidates(graph, rounding)


def pareto_front(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """The first evaluation (the unoptimised plan) and those no other beats in both peak
    and time, kept as they come: on large graphs (EfficientNet-B7's 814 stages) dozens of
    dominated plans' keep sets would take gigabytes."""
    it = iter(evaluations)
    first = next(it)
    front: list[Evaluation] = []
    for e in it:
        front = _on_front(front, e)
    return [first] + sorted(front, key=lambda e: e.result.peak_bytes)


def _on_front(front: list[Evaluation], e: Evaluation) -> list[Evaluation]:
    """``front`` with ``e`` added, unless a plan on it is no worse in both peak and time,
    and without the plans ``e`` is no worse than."""
    if any(f.result.peak_bytes <= e.result.peak_bytes and f.result.time_s <= e.result.time_s
           for f in front):
        return front
    return [f for f in front if not (e.result.peak_bytes <= f.result.peak_bytes
                                     and e.result.time_s <= f.result.time_s)] + [e]


def uses_only_variants(graph: PlannerGraph, mode: str, decisions: Decisions) -> bool:
    """Whether ``decisions`` choose only variants and writes in place that ``mode``
    allows."""
    allowed = graph.variant_sites(mode)
    return allows(mode, decisions.in_place) and all(
        any(v.name == name for v in allowed.get(e, [])) for e, name in
        decisions.variants.items())


def with_in_place(decisions: Decisions, mode: str) -> Decisions:
    """``decisions`` with every write in place ``mode`` allows (never costs memory or
    time: ``planner.in_place``)."""
    decisions.in_place = mode
    return decisions


def lowest_peak_search(profile: Profile, graph: PlannerGraph, backend: str, options: SolveOptions,
                 candidates: list[Evaluation]) -> tuple[Evaluation, SolveOutcome]:
    """The lowest-peak plan among ``candidates`` and the MILP's answer.

    The MILP is warm-started from the unoptimised plan (``candidates[0]``): measured on
    resnet18, HiGHS proves the optimum in 0.5 s from it, and stalls for 15 s when started
    from the best checkpoint plan instead. Unless it proves optimality, a peak-directed
    local search (``planner.peak_search``; up to 40 % of the time, on ResNet-50 it lowers
    the MILP's best peak by 7 %) and window-by-window improvement follow.
    """
    t0 = time.perf_counter()  # the MILP's build counts (3-5 s on the GPT)
    milp = build_stage_milp(graph, [n.time_s for n in profile.nodes], None, minimize_peak=True,
                            variants=options.variants)
    limit = options.time_limit_s
    if parallel_available(options, backend):
        return _lowest_peak_beside(profile, graph, milp, options, candidates, t0 + limit)
    milp.set_start(candidates[0].decisions)
    outcome = solve_problem(milp.problem, backend, replace(
        options, warm_start=True,
        time_limit_s=max(0.5 * limit - (time.perf_counter() - t0), 0.1 * limit)))
    found = list(candidates)
    if outcome.has_solution:
        found.append(evaluate(profile, graph, milp.decisions(len(graph.stages))))
    if outcome.status != "optimal":
        # Peak-directed local search from the lowest plan so far (stops when stuck).
        found.append(peak_search_from(profile, graph, replace(
            options, time_limit_s=min(0.4 * limit, limit - (time.perf_counter() - t0))),
            found))
    left = limit - (time.perf_counter() - t0)
    if outcome.status != "optimal" and left > 2.0:
        # Improve the lowest-peak point of the problem window by window.
        decisions, steps = improve_by_windows(milp, graph, _lowest_point(milp, found),
                                              backend, options, left)
        if steps:
            found.append(evaluate(profile, graph, decisions))
    return min(found, key=lambda e: e.result.peak_bytes), outcome


def _lowest_point(milp: StageMILP, found: list[Evaluation]) -> Decisions:
    """The plan of ``found`` that is a point of ``milp`` with the lowest peak by its rows."""
    return min((e for e in found if milp.represents(e.decisions)),
               key=lambda e: milp.evaluate_peak(replace(e.decisions, in_place=milp.in_place))
               ).decisions


def _lowest_peak_beside(profile: Profile, graph: PlannerGraph, milp: StageMILP,
                        options: SolveOptions, candidates: list[Evaluation], deadline: float
                        ) -> tuple[Evaluation, SolveOutcome]:
    """The min-peak MILP in a second process (``planner.full_solve``) until ``deadline``,
    from the unoptimised plan; here, beside it, the peak-directed search and then windows
    from the lowest point found, taking up the worker's plans."""
    limit = options.time_limit_s
    # A short solve here first: small problems are proved at once (VGG-16: 1 s; 8-9 s
    # when the worker, which starts a process and builds its own problem, had to prove it),
    # and then the worker is not started at all.
    milp.set_start(candidates[0].decisions)
    first = solve_problem(milp.problem, "highs", replace(
        options, warm_start=True, time_limit_s=0.1 * limit))
    found = list(candidates)
    if first.has_solution:
        found.append(evaluate(profile, graph, milp.decisions(len(graph.stages))))
    if first.status == "optimal":
        return min(found, key=lambda e: e.result.peak_bytes), first
    full = FullSolveProcess(profile, None, deadline - time.perf_counter(), options,
                            start=candidates[0].decisions)
    try:
        found.append(peak_search_from(profile, graph, replace(
            options, time_limit_s=min(0.4 * limit, deadline - time.perf_counter())), found))
        start = _lowest_point(milp, found)
        full.offer(start)
        decisions, steps = start, 0
        if deadline - time.perf_counter() > 2.0 and not full.proved_optimal:
            decisions, steps = improve_by_windows(
                milp, graph, start, "highs", options, deadline - time.perf_counter(),
                full=full)
        outcome, last = full.close(deadline - time.perf_counter())
    finally:
        full.stop()
    outcome = replace(outcome, bound=tightest_bound(first.bound, outcome.bound))
    if steps:
        found.append(evaluate(profile, graph, decisions))
    if last is not None:
        found.append(evaluate(profile, graph, last[1]))
    return min(found, key=lambda e: e.result.peak_bytes), outcome


def peak_search_from(profile: Profile, graph: PlannerGraph, options: SolveOptions,
                     candidates: list[Evaluation], stop_at: int | None = None) -> Evaluation:
    """The peak-directed local search from the lowest-peak candidate (no solver), stopping
    at the first plan that peaks at most ``stop_at`` bytes, if given."""
    lowest = min(candidates, key=lambda e: e.result.peak_bytes)
    decisions, result = lower_peak(profile, graph, lowest.decisions,
                                   graph.variant_sites(options.variants), options.time_limit_s,
                                   stop_at=stop_at)
    return min((lowest, Evaluation(decisions, result)), key=lambda e: e.result.peak_bytes)


# Repair only when every fitting plan is this much slower (total step time). The GPT with
# its loss at 1/3 had only a 19x slower LP-rounding plan fitting. At 3.0 (until 2026-12-05)
# GoogLeNet at 1/2, whose fastest fitting plan is 1.5x slower than a plan at 1.4x the
# budget, was not repaired and ended at +21.5-26.8 % (+8.9-9.7 % repaired), at 1/3 at
# +18.8 % (+11.1 %), on a machine a third of the reference speed. The repaired plan is not
# always the better start: GoogLeNet at 1/4 ended at +25.9-26.8 % from it, +21.1-22.1 %
# without it (the time search took the slower unrepaired plan further); searching from both
# with half the time each gave +24.9-27.9 % there and cost ResNet-50 at 1/4 8 points. From
# both only where the first search took less than a quarter of the step off (092f3e0, which
# spared ResNet-50): GoogLeNet at 1/4 +23.5/+21.1/+24.9/+33.5 % against +27.6/+25.3/+25.4 %
# without, U-Net at 1/2 +12.55 % (3 runs) against +12.28/+12.40 %; no gain beyond the
# run-to-run variance, reverted.
REPAIR_SLOWDOWN = 1.3


def repaired_candidates(profile: Profile, graph: PlannerGraph, candidates: list[Evaluation],
                        budget: int, variants: str, time_limit_s: float,
                        tries: int = 2) -> tuple[list[Evaluation], list[Evaluation]]:
    """Plans within ``budget`` reached from the fastest candidates just above it, where
    every candidate that fits is ``REPAIR_SLOWDOWN`` times slower than they are (or none
    fits); and the plans reached that are still above it (near misses: where a longer
    search goes on from, ``planner.lowest``).

    When only slow heuristic plans fit (LP rounding that recomputes almost everything), the
    MILP starts from them, and on a large graph it does not get far in the time limit (the
    GPT with its loss at 1/3: +1773 % after 60 s). The peak-directed search from the
    ``tries`` fastest Pareto candidates whose peak is within 1.5x the budget stops at the
    first plan that fits: a few checkpoints away from a fast plan. Each try gets all the
    time the earlier ones left: a search ends early only when it fits or is stuck, and one
    still lowering the peak when its time is up is nearer a fit than the next try's start
    (U-Net's measured profile at 1/3 on a machine a third as fast: with half the time each,
    the first try reached 5.054 GiB for a 5.01 GiB budget in 10 s and the second 5.090 GiB,
    and the plan that fits came 35 s later, from the first try's end).
    """
    fitting = [e.result.time_s for e in candidates if e.result.peak_bytes <= budget]
    fastest_fit = min(fitting, default=float("inf"))
    near = [e for e in pareto_front(candidates)
            if budget < e.result.peak_bytes <= 1.5 * budget
            and e.result.time_s * REPAIR_SLOWDOWN < fastest_fit]
    near.sort(key=lambda e: e.result.time_s)
    deadline = time.perf_counter() + time_limit_s
    repaired, missed = [], []
    starts = near[:tries]
    for start in starts:
        if time.perf_counter() >= deadline:  # the earlier tries took the time
            missed.append(start)
            continue
        decisions, result = lower_peak(profile, graph, start.decisions,
                                       graph.variant_sites(variants),
                                       deadline - time.perf_counter(), stop_at=budget)
        (repaired if result.peak_bytes <= budget else missed).append(
            Evaluation(decisions, result))
    return repaired, missed
