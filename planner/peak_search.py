"""Peak-directed local search for low-memory checkpoint plans.

The lowest-peak MILP is hard for the solver (a min-max objective over thousands of memory
rows), and on ResNet-50 its best plans recompute long chains whose intermediates pile up
at one step. This search works on the plans themselves: a plan is a set of checkpoint ops
and a variant per site (``heuristic.checkpoint_decisions``), simulated exactly. Each round
looks at the step where the peak occurs and tries the moves that can lower it:

* make an op recomputed in the peak's stage a checkpoint (shorter recompute chains),
* stop keeping a checkpoint held at the peak (recompute it instead),
* switch the variant of a site whose stage is at or after the peak's (keep a 1-bit mask or
  the output instead of the input).

Moves are tried largest bytes first and the first one that lowers the peak (or keeps it
and lowers the step time) is taken, until none does or the time is up.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from profiler.ir import Profile

from .graph import PlannerGraph
from .heuristic import checkpoint_decisions
from .schedule import Decisions
from .simulator import SimulationResult, simulate_by_stage

log = logging.getLogger(__name__)


def checkpoints_of(graph: PlannerGraph, decisions: Decisions) -> set[int]:
    """The ops whose outputs ``decisions`` hold after the forward pass."""
    ops = set(graph.ops())
    return {graph.creator[s] for s in decisions.keep[0]
            if s in graph.creator and graph.creator[s] in ops}


def _moves(graph: PlannerGraph, decisions: Decisions, checkpoints: set[int],
           variants: dict[int, str], stage: int, sites: dict) -> list[tuple[set[int], dict]]:
    """Candidate (checkpoints, variants) around a peak in ``stage`` (-1: the forward)."""
    moves: list[tuple[int, set[int], dict]] = []
    if stage >= 0:
        for op in decisions.recompute[stage]:
            if op not in checkpoints:
                moves.append((graph.new_bytes(op), checkpoints | {op}, variants))
    held = decisions.keep[max(stage, 0)]
    for s in held:
        op = graph.creator.get(s)
        if op in checkpoints:
            moves.append((graph.storage_bytes[s], checkpoints - {op}, variants))
    for site, options in sites.items():
        if stage >= 0 and graph.site_stage.get(site, -1) < stage:
            continue
        saved = sum(graph.storage_bytes[s] for s in graph.planned_needs(site))
        for v in options:
            if variants.get(site) != v.name:
                moves.append((saved, checkpoints, {**variants, site: v.name}))
        if site in variants:
            moves.append((0, checkpoints, {k: n for k, n in variants.items() if k != site}))
    moves.sort(key=lambda m: -m[0])
    return [(c, v) for _, c, v in moves]


def worse_than(peak_bytes: int, time_s: float) -> Callable[[int, float], bool]:
    """For ``simulate_by_stage``: reject a plan that peaks above ``peak_bytes``, or at it
    and no faster than ``time_s`` (the order the peak search takes a move in)."""
    return lambda peak, seconds: peak > peak_bytes or (peak == peak_bytes and
                                                      seconds >= time_s)


def lower_peak(profile: Profile, graph: PlannerGraph, start: Decisions, sites: dict,
               time_limit_s: float, stop_at: int | None = None
               ) -> tuple[Decisions, SimulationResult]:
    """Starting from ``start``'s checkpoints and variants, the lowest-peak checkpoint plan
    the local search reaches within ``time_limit_s`` (``sites``: the variants allowed), or
    the first one whose peak is at most ``stop_at``: the fewest moves from ``start``."""
    t0 = time.perf_counter()
    checkpoints = checkpoints_of(graph, start)
    variants = {e: n for e, n in start.variants.items() if e in sites}
    best = checkpoint_decisions(graph, checkpoints, variants, in_place=start.in_place)
    simulated = simulate_by_stage(profile, graph, best)
    assert simulated is not None
    result, stage = simulated
    moves = 0
    while time.perf_counter() - t0 < time_limit_s and \
            (stop_at is None or result.peak_bytes > stop_at):
        improved = False
        for cand_checkpoints, cand_variants in _moves(graph, best, checkpoints, variants,
                                                      stage, sites):
            if time.perf_counter() - t0 >= time_limit_s:
                break
            decisions = checkpoint_decisions(graph, cand_checkpoints, cand_variants,
                                             in_place=start.in_place)
            simulated = simulate_by_stage(profile, graph, decisions,
                                          worse_than(result.peak_bytes, result.time_s))
            if simulated is None:
                continue
            trial, trial_stage = simulated
            if (trial.peak_bytes, trial.time_s) < (result.peak_bytes, result.time_s):
                best, result, stage = decisions, trial, trial_stage
                checkpoints, variants = cand_checkpoints, cand_variants
                improved = True
                moves += 1
                break
        if not improved:
            break
    log.info("peak search: %d moves, peak %.3f GiB, %.1f s", moves,
             result.peak_bytes / 2**30, time.perf_counter() - t0)
    return best, result


