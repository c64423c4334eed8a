"""Time-directed local search: a fitting checkpoint plan made faster within its budget.

The counterpart of ``planner.peak_search``. Heuristic plans that fit a budget (per-block
checkpointing, every m-th op) often fit it with room to spare: the GPT's per-block plan
peaks at 4.1 GiB for a budget of 8.3 GiB and recomputes every block. The MILP, warm-started
from such a plan on a 3,700-node graph, does not move away from it in the time limit. This
search works on the plan itself (a set of checkpoint ops and the variants, simulated
exactly): it makes ops checkpoints (kept from the forward pass instead of recomputed),
those that save the most recompute time per byte first:

* the longest prefix of that order that still fits the budget, found by bisection (a
  dozen simulations for a thousand ops), then
* the rest one at a time, each kept if the plan still fits and is faster,

until nothing more fits or the time is up. Every plan it returns was simulated and fits.
"""
from __future__ import annotations

import logging
import time

from profiler.ir import Profile

from .candidates import Evaluation, evaluate
from .graph import PlannerGraph
from .heuristic import checkpoint_decisions
from .peak_search import checkpoints_of
from .schedule import Decisions

log = logging.getLogger(__name__)


def _order(graph: PlannerGraph, times: list[float], decisions: Decisions,
           checkpoints: set[int]) -> list[int]:
    """Recomputed ops that are not checkpoints, by recompute time saved per byte kept."""
    count: dict[int, int] = {}
    for ops in decisions.recompute:
        for op in ops:
            if op not in checkpoints:
                count[op] = count.get(op, 0) + 1
    return sorted(count, key=lambda op: -times[op] * count[op] / max(graph.new_bytes(op), 1))


def faster_within(profile: Profile, graph: PlannerGraph, start: Decisions, budget: int,
                  time_limit_s: float) -> Evaluation | None:
    """The fastest checkpoint plan the search reaches from ``start`` (any plan: its
    checkpoints are the outputs it holds after the forward pass) within ``budget`` and
    ``time_limit_s``, simulated; None if ``start``'s checkpoints do not fit."""
    t0 = time.perf_counter()
    times = [n.time_s for n in profile.nodes]
    checkpoints = checkpoints_of(graph, start)
    variants, in_place = dict(start.variants), start.in_place

    def plan(points: set[int], hold: bool) -> Evaluation:
        return evaluate(profile, graph, checkpoint_decisions(
            graph, points, variants, hold_recomputed=hold, in_place=in_place))

    def better(trial: Evaluation) -> bool:
        return trial.result.peak_bytes <= budget and trial.result.time_s < best.result.time_s

    # Recomputed values held to their last use (torch.utils.checkpoint's way, the per-block
    # plans') or recomputed in every stage that needs them: whichever fits and is faster.
    starts = [(hold, plan(checkpoints, hold)) for hold in (True, False)]
    starts = [s for s in starts if s[1].result.peak_bytes <= budget]
    if not starts:
        return None
    hold, best = min(starts, key=lambda s: s[1].result.time_s)
    first_time = best.result.time_s
    order = _order(graph, times, best.decisions, checkpoints)
    lo, hi = 0, len(order)  # the longest fitting prefix, by bisection
    while lo < hi and time.perf_counter() - t0 < time_limit_s:
        mid = (lo + hi + 1) // 2
        trial = plan(checkpoints | set(order[:mid]), hold)
        if better(trial):
            lo, best = mid, trial
        else:
            hi = mid - 1
    checkpoints |= set(order[:lo])
    tried = 0
    for op in order[lo:]:
        if time.perf_counter() - t0 >= time_limit_s:
            break
        tried += 1
        trial = plan(checkpoints | {op}, hold)
        if better(trial):
            checkpoints.add(op)
            best = trial
    log.info("time search: %+.4g s (prefix of %d ops, %d more tried), peak %.3f GiB, %.1f s",
             best.result.time_s - first_time, lo, tried, best.result.peak_bytes / 2**30,
             time.perf_counter() - t0)
    return best
