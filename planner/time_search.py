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

until nothing more fits. Then, stuck at the budget, it *kicks*: one move of the peak search
(``planner.peak_search.lower_peak``: a checkpoint held at the peak recomputed instead, or a
variant switched) lowers the peak, and the two steps above grow the plan again from there;
the result is kept if it is faster, and the kicks go on while they pay or until the time is
up. Every plan it returns was simulated and fits.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from profiler.ir import Profile

from .candidates import Evaluation, evaluate
from .graph import PlannerGraph
from .heuristic import checkpoint_decisions
from .peak_search import checkpoints_of, lower_peak
from .schedule import Decisions
from .simulator import simulate_by_stage

log = logging.getLogger(__name__)
# The one-at-a-time phase stops after this many ops in a row that do not fit or pay, leaving
# the time to the kicks.
MAX_MISSES = 25


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
                  time_limit_s: float, sites: dict | None = None) -> Evaluation | None:
    """The fastest checkpoint plan the search reaches from ``start`` (any plan: its
    checkpoints are the outputs it holds after the forward pass) within ``budget`` and
    ``time_limit_s``, simulated; None if ``start``'s checkpoints do not fit. ``sites``: the
    variants a peak-lowering kick may switch (``graph.variant_sites``; none by default)."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    times = [n.time_s for n in profile.nodes]
    in_place = start.in_place

    def decisions_of(points: set[int], variants: dict[int, str], hold: bool) -> Decisions:
        return checkpoint_decisions(graph, points, variants, hold_recomputed=hold,
                                    in_place=in_place)

    def plan(points: set[int], variants: dict[int, str], hold: bool,
             than: Evaluation) -> Evaluation | None:
        """The plan of ``points`` if it fits and is faster than ``than``, else None: its
        simulation stops at the first stage above the budget or past ``than``'s time."""
        decisions = decisions_of(points, variants, hold)
        simulated = simulate_by_stage(profile, graph, decisions, lambda peak, seconds:
                                      peak > budget or seconds >= than.result.time_s)
        return None if simulated is None else Evaluation(decisions, simulated[0])

    # Recomputed values held to their last use (torch.utils.checkpoint's way, the per-block
    # plans') or recomputed in every stage that needs them: whichever fits and is faster.
    checkpoints, variants = checkpoints_of(graph, start), dict(start.variants)
    starts = [(hold, evaluate(profile, graph, decisions_of(checkpoints, variants, hold)))
              for hold in (True, False)]
    starts = [s for s in starts if s[1].result.peak_bytes <= budget]
    if not starts:
        return None
    hold, best = min(starts, key=lambda s: s[1].result.time_s)
    first_time = best.result.time_s
    best, grown = _grow(graph, times, checkpoints, best,
                        lambda points, than: plan(points, variants, hold, than), deadline)
    kicks = 0
    while sites and time.perf_counter() < deadline:
        # Stuck at the budget: lower the peak by one move of the peak search (a checkpoint
        # held at the peak recomputed instead, or a variant switched) and grow again from
        # there; kept if the result is faster.
        low, low_result = lower_peak(profile, graph, best.decisions, sites,
                                     deadline - time.perf_counter(),
                                     stop_at=best.result.peak_bytes - 1)
        if low_result.peak_bytes >= best.result.peak_bytes:
            break
        points, kick_variants = checkpoints_of(graph, low), dict(low.variants)
        kicked = evaluate(profile, graph, decisions_of(points, kick_variants, hold))
        if kicked.result.peak_bytes > budget:
            break
        kicked, more = _grow(graph, times, points, kicked,
                             lambda p, than: plan(p, kick_variants, hold, than), deadline)
        if kicked.result.time_s >= best.result.time_s:
            break
        best = kicked
        grown += more
        kicks += 1
    log.info("time search: %+.4g s (%d checkpoints added, %d kicks), peak %.3f GiB, %.1f s",
             best.result.time_s - first_time, grown, kicks, best.result.peak_bytes / 2**30,
             time.perf_counter() - t0)
    return best


def _grow(graph: PlannerGraph, times: list[float], checkpoints: set[int],
          best: Evaluation, plan: Callable[[set[int], Evaluation], Evaluation | None],
          deadline: float) -> tuple[Evaluation, int]:
    """More checkpoints for ``best`` (made of ``checkpoints``) while the plan fits and gets
    faster: the longest fitting prefix of ``_order`` by bisection, then one op at a time.
    ``plan(points, than)``: the plan of ``points`` if it fits and is faster than ``than``,
    else None. Returns the plan reached and how many checkpoints were added."""
    order = _order(graph, times, best.decisions, checkpoints)
    lo, hi = 0, len(order)
    while lo < hi and time.perf_counter() < deadline:
        mid = (lo + hi + 1) // 2
        trial = plan(checkpoints | set(order[:mid]), best)
        if trial is not None:
            lo, best = mid, trial
        else:
            hi = mid - 1
    checkpoints = checkpoints | set(order[:lo])
    added, misses = lo, 0
    for op in order[lo:]:
        if time.perf_counter() >= deadline or misses >= MAX_MISSES:
            break
        trial = plan(checkpoints | {op}, best)
        if trial is not None:
            checkpoints.add(op)
            best = trial
            added += 1
            misses = 0
        else:
            misses += 1
    return best, added
