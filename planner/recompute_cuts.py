"""Recomputation cuts: rows valid at every plan that tighten the stage MILP's LP relaxation.

The relaxation of ``planner.formulation`` is weak in three ways these rows close:

* *Gathering*: it holds a sliver of a tensor s all along and recomputes that sliver of the
  op o that reads s at stage after stage, so o's output t is gathered nearly whole for the
  price of the sliver (each step obeys the carry and dependency rows).
* *Split choices*: at a variant site whose options read s or t (a batch norm's backward
  reads its input or its output), it splits the choice, holds half of s for the original
  and lets the same half recompute t for the variant.
* *Split needs*: a need of stage k met partly by t held since o's first recompute stage
  and partly by o recomputed at k, each path backed by its own share of o's input (and of
  that input's creator's inputs, up the graph); ``_need_cuts`` counts the sources once.

Not closed: *knapsack across stages*. The relaxation recomputes slivers of a tensor at
stages where memory is slack, gathers them (each step obeys the carry and dependency rows,
and the recomputations are paid in full), and holds the gathered fraction through the tight
stages, where a plan holds all of it or none. On ``gpt_small`` at 1/2 of its peak
(2026-12-06, ad hoc) ``mul_3`` is recomputed at 0.05 a stage over stages 6-10, then 0.38 at
11 and 13, and 0.62 of it is held at 12-13; the LP with every row is at +15.50 % of the step,
HiGHS's bound after 240 s +16.17 %, the best plan found +18.90 %.

``separate`` adds only the rows an LP solution violates, round after round, to a HiGHS
model: all of them (~9K on ResNet-50) slowed HiGHS's proof on the U-Net at 1/2 from 39 s
to over 60 s. The LP relaxation with every row, as % of the step (2026-12-06,
``bench/results/lp_bound.md``): ResNet-50 at 1/3 of its peak +10.73 % without the need
cuts, +14.79 % with them; U-Net at 1/3 +17.26 / +20.67 %; the GPT with its
loss at 1/3 +8.07 / +12.66 %; GoogLeNet at 1/4 +12.19 / +12.71 %.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import pulp

from .graph import PlannerGraph

log = logging.getLogger(__name__)
# How many inputs up from a stage's need the need cuts follow (``_need_cuts``). The LP
# relaxation with every row at 1, 2, 3, 4 (% of the step, ad hoc script, 2026-12-06): U-Net
# at 1/3 +19.21, +20.22, +20.67, +20.70; ResNet-50 at 1/3 +10.91, +14.62, +14.79, +14.81
# (+14.93 at 6); GoogLeNet at 1/4 +12.40, +12.68, +12.71 (to 3); the GPT with its loss at
# 1/3 +8.58, +12.29, +12.66 (to 3). Each level adds a few hundred rows.
NEED_CUT_DEPTH = 3


def recomputation_cuts(graph: PlannerGraph, S: dict[tuple[int, int], pulp.LpVariable],
                       R: dict[tuple[int, int], pulp.LpVariable], sites: dict
                       ) -> list[pulp.LpConstraint]:
    """The gathering, split-choice and need cuts of a problem with keep variables ``S``,
    recompute variables ``R`` and variant ``sites`` (site -> its variants), named."""
    stages_of: dict[int, list[int]] = {}
    for (k, o) in sorted(R):
        stages_of.setdefault(o, []).append(k)
    return _gathering_cuts(graph, S, R, stages_of) + \
        _choice_cuts(graph, S, R, sites, stages_of) + \
        _need_cuts(graph, S, R, sites, stages_of)


def _made_by(graph: PlannerGraph, o: int) -> list[int]:
    return [t for t in graph.nodes[o].new_storages if graph.creator.get(t) == o]


def _gathering_cuts(graph: PlannerGraph, S: dict, R: dict,
                    stages_of: dict[int, list[int]]) -> list[pulp.LpConstraint]:
    """Let f be the first stage that may recompute op o. Storage t made by o can be held at
    stage b+1 without being held at f only if o was recomputed at some stage j in f..b,
    which needs each input s of o at j: held then, so held at f or recomputed at some stage
    in f..j. So ``S[b+1][t] <= S[f][t] + S[f][s] + sum_{f<=j<=b} R[j][creator(s)]``."""
    cuts = []
    for o, ks in stages_of.items():
        made = _made_by(graph, o)
        first = ks[0]
        for s in graph.op_inputs(o) if made else ():
            c = graph.creator.get(s)
            sources = stages_of.get(c, []) if c is not None else []
            for t in made:
                if (first, t) not in S:
                    continue
                for b in range(first, len(graph.stages) - 1):
                    if (b + 1, t) not in S:
                        break
                    if S[b + 1, t] is S[b, t]:
                        continue
                    source = pulp.lpSum(R[j, c] for j in sources if first <= j <= b)
                    if (first, s) in S:
                        source += S[first, s]
                    cut = S[b + 1, t] <= S[first, t] + source
                    cut.name = f"gain_{b}_{t}_{s}"
                    cuts.append(cut)
    return cuts


def _choice_cuts(graph: PlannerGraph, S: dict, R: dict, sites: dict,
                 stages_of: dict[int, list[int]]) -> list[pulp.LpConstraint]:
    """For a variant site at stage k whose every option reads storage s or a storage t made
    from s (by an op o reading s): whichever runs, s is held or recomputed at some stage
    from f (the earliest first stage of the o's, at most k) to k, unless t was held at o's
    first stage f_t: ``S[f][s] + sum_{f<=j<=k} R[j][creator(s)] + sum_t S[f_t][t] >= 1``
    (the argument on t is the gathering cut's)."""
    first = {o: ks[0] for o, ks in stages_of.items()}
    stage_of = {e: k for k, nodes in enumerate(graph.stages) for e in nodes}
    made_from: dict[int, list[int]] = {}  # storage s -> storages made by ops reading s
    for o in first:
        for s in graph.op_inputs(o):
            made_from.setdefault(s, []).extend(_made_by(graph, o))
    cuts = []
    for e, vs in sites.items():
        k = stage_of[e]
        options = [graph.planned_needs(e, "")] + [graph.planned_needs(e, v.name) for v in vs]
        for s in set().union(*options) - set.intersection(*options):
            made = [t for t in made_from.get(s, ()) if first[graph.creator[t]] <= k]
            via: set[int] = set()
            for needs in options:
                if s in needs:
                    continue
                found = [t for t in made if t in needs]
                if not found:
                    break
                via.add(found[0])
            else:
                if not via:
                    continue
                f = min([k] + [first[graph.creator[t]] for t in via])
                c = graph.creator.get(s)
                held = pulp.lpSum(S[first[graph.creator[t]], t] for t in via
                                  if (first[graph.creator[t]], t) in S)
                source = pulp.lpSum(R[j, c] for j in stages_of.get(c, ()) if f <= j <= k)
                if (f, s) in S:
                    source += S[f, s]
                cut = source + held >= 1
                cut.name = f"choice_{e}_{s}"
                cuts.append(cut)
    return cuts


def _need_cuts(graph: PlannerGraph, S: dict, R: dict, sites: dict,
               stages_of: dict[int, list[int]], depth: int | None = None
               ) -> list[pulp.LpConstraint]:
    """For a storage t that stage k reads whatever runs, made by op o first recomputable at
    stage f <= k, and each input s of o: t is held since f, or o runs at some stage j in
    f..k, which needs s then, so s is held since f or recomputed in f..j:
    ``S[f][t] + S[f][s] + sum_{f<=j<=k} R[j][creator(s)] >= 1``. The recomputation of s's
    creator needs each of its inputs in turn, so a path of ``depth`` inputs up from t
    gives ``S[f][t] + S[f][s] + S[f][s2] + sum_{f<=j<=k} R[j][creator(s2)] >= 1`` and so on
    (one row per path and length). The LP relaxation meets the need with a share of o's
    recomputation at k and a share of t held since f, each backed by its own share of s's
    sources: these rows count them once. (HiGHS finds some in its root cut rounds; made
    here, they are in the LP the worker separates.)"""
    depth = NEED_CUT_DEPTH if depth is None else depth
    cuts: list[pulp.LpConstraint] = []
    if depth < 1:
        return cuts

    def sources(s: int, f: int, k: int) -> tuple[list, list]:
        c = graph.creator.get(s)
        held = [S[f, s]] if (f, s) in S else []
        return held, [R[j, c] for j in stages_of.get(c, ()) if f <= j <= k]

    def paths(prefix: list, s: int, f: int, k: int, hops: int, name: str) -> None:
        held, recomputed = sources(s, f, k)
        if not held and not recomputed:
            return
        cut = pulp.lpSum(prefix + held + recomputed) >= 1
        cut.name = name
        cuts.append(cut)
        if hops < depth and recomputed:
            for s2 in sorted(graph.op_inputs(graph.creator[s])):
                paths(prefix + held, s2, f, k, hops + 1, f"{name}_{s2}")

    for k in range(len(graph.stages)):
        for t in sorted(graph.stage_hard_needs(k, sites)):
            o = graph.creator.get(t)
            if o is None or o not in stages_of or stages_of[o][0] > k:
                continue
            f = stages_of[o][0]
            prefix = [S[f, t]] if (f, t) in S else []
            for s in sorted(graph.op_inputs(o)):
                paths(prefix, s, f, k, 1, f"needpath_{k}_{t}_{s}")
    return cuts


def _add_row(highs, row: tuple[np.ndarray, np.ndarray, float, int]) -> None:
    import highspy
    idx, coef, rhs, sense = row
    low = rhs if sense == pulp.LpConstraintGE else -highspy.kHighsInf
    high = rhs if sense == pulp.LpConstraintLE else highspy.kHighsInf
    highs.addRow(low, high, len(idx), idx, coef)


def separate(highs, cuts: list[pulp.LpConstraint] | Callable[[], list[pulp.LpConstraint]],
             deadline: float, rounds: int = 10, tolerance: float = 1e-6,
             add_rest_above: float | None = None,
             on_lp: Callable[[int, np.ndarray, float], None] | None = None,
             first_deadline: float | None = None) -> int:
    """Add to the HiGHS model ``highs`` (built from the problem by PuLP, so every variable
    has its column ``index``) the cuts its LP relaxation violates, re-solving the LP after
    each round until none is violated, ``rounds`` rounds were made or ``deadline``
    (``time.perf_counter()``) has passed. If it stopped with more than ``add_rest_above`` of
    the cuts it checked last still violated (far from done: its next rounds would add many),
    or with no LP solved in time (whatever ``add_rest_above``, if not None), all the others
    are added too, without re-solving. The model's integrality is restored. ``on_lp`` is
    called with the round, the solution and the objective of every LP solved to optimality
    (the first is the plain relaxation's; each objective is a lower bound on the MILP's).
    ``cuts`` may be a function that makes them, called after the first LP (whose ``on_lp``
    then comes sooner); ``first_deadline``, if later than ``deadline``, is the first LP's.
    Returns how many cuts were added."""
    import highspy
    rows: list | None = None
    pending: list[int] = []

    def make_rows() -> list:
        nonlocal rows, pending
        made = cuts() if callable(cuts) else cuts
        rows = [(np.array([v.index for v in c.keys()], dtype=np.int32),
                 np.array(list(c.values()), dtype=float), -c.constant, c.sense) for c in made]
        pending = list(range(len(rows)))
        return rows

    if not callable(cuts) and not make_rows():
        return 0
    n = highs.getNumCol()
    columns = np.arange(n, dtype=np.int32)
    integrality = np.array(highs.getLp().integrality_, dtype=np.uint8)
    highs.changeColsIntegrality(n, columns, np.zeros(n, dtype=np.uint8))
    added = 0
    violated_share: float | None = None  # of the cuts the last LP checked
    try:
        for r in range(rounds):
            until = max(deadline, first_deadline or deadline) if r == 0 else deadline
            if time.perf_counter() >= until:
                break
            highs.setOptionValue("time_limit", max(until - time.perf_counter(), 0.1))
            highs.run()
            if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                break
            x = np.asarray(highs.getSolution().col_value)
            if on_lp is not None:
                on_lp(r, x, highs.getInfo().objective_function_value)
            if rows is None and not make_rows():
                break
            violated, kept = [], []
            for i in pending:
                idx, coef, rhs, sense = rows[i]
                lhs = float(coef @ x[idx])
                bad = lhs > rhs + tolerance if sense == pulp.LpConstraintLE else \
                    lhs < rhs - tolerance
                (violated if bad else kept).append(i)
            log.info("cut round %d: LP %.6g, %d of %d cuts violated", r,
                     highs.getInfo().objective_function_value, len(violated), len(pending))
            violated_share = len(violated) / len(pending)
            if not violated:
                break
            for i in violated:
                _add_row(highs, rows[i])
            added += len(violated)
            pending = kept
        unchecked = violated_share is None  # no LP solved in time: all count as violated
        if rows is None and add_rest_above is not None:
            make_rows()
        if add_rest_above is not None and pending and (
                unchecked or violated_share > add_rest_above):
            log.info("%s of the cuts still violated when the separation stopped: adding "
                     "the other %d", "all" if unchecked else f"{violated_share:.0%}",
                     len(pending))
            for i in pending:
                _add_row(highs, rows[i])
            added += len(pending)
    finally:
        highs.changeColsIntegrality(n, columns, integrality)
        # Without this the branch and bound starts from the last LP's solution: HiGHS then
        # runs a sub-MIP around it whose callbacks report that sub-MIP's bound as the MIP's
        # dual bound (on MobileNet-V2 at 1/4: 3.27 against plans of 3.15 found later).
        highs.clearSolver()
    return added
