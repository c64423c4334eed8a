"""Heuristic plans: checkpoint sets, chosen by rounding the MILP's LP relaxation.

A *checkpoint* op keeps its outputs from the forward pass until their last use; every
other op a stage needs is recomputed in that stage from the nearest checkpoints. Any set
of checkpoints gives a valid plan, so these plans serve as warm starts for the MILP and as
fall-backs when the solver runs out of time (Checkmate's LP rounding, in spirit).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pulp

from .formulation import StageMILP, build_stage_milp
from .graph import PlannerGraph
from .schedule import Decisions
from .window_highs import use_highs_threads

log = logging.getLogger(__name__)


def checkpoint_decisions(graph: PlannerGraph, checkpoints: set[int],
                         variants: dict[int, str] | None = None,
                         hold_recomputed: bool = False, in_place: str = "none") -> Decisions:
    """The plan that keeps the outputs of ``checkpoints`` (and of the chosen ``variants``'
    packs) and recomputes everything else where it is needed. With ``hold_recomputed`` an
    op is recomputed once, in the first stage that needs it, and its outputs are then held
    until their last use (what ``torch.utils.checkpoint`` does for a block); otherwise each
    stage recomputes what it needs from the checkpoints. ``in_place``: the writes in place
    the plan uses (``planner.in_place``)."""
    K = len(graph.stages)
    variants = dict(variants or {})
    recompute: list[set[int]] = [set() for _ in range(K)]
    last_use: dict[int, int] = {}
    recomputed_at: dict[int, int] = {}  # op -> its stage, where recomputed values are held
    recomputable = set(graph.ops())
    for k in range(K):
        stack = list(graph.stage_need_storages(k, variants))
        while stack:
            s = stack.pop()
            op = graph.creator[s]
            if op in checkpoints or op in graph.packs or op not in recomputable:
                last_use[s] = k
            elif recomputed_at.get(op, k) < k:  # held since an earlier stage recomputed it
                last_use[s] = k
            elif op not in recompute[k]:
                recompute[k].add(op)
                if hold_recomputed:
                    recomputed_at[op] = k
                stack.extend(graph.op_inputs(op))

    # Storage s is kept from the stage after the one that recomputed and held it (from the
    # forward pass if none did) to its last use: an interval, swept stage by stage. A set
    # comprehension per stage over every storage made ResNet-50's time-directed search at
    # 1/4 take 8.6-9.4 s instead of 7.4-7.7 s.
    starting: list[list[int]] = [[] for _ in range(K)]
    ending: list[list[int]] = [[] for _ in range(K + 1)]
    for s, last in last_use.items():
        first = recomputed_at.get(graph.creator[s], -1) + 1
        if first <= last:
            starting[first].append(s)
            ending[last + 1].append(s)
    keep: list[set[int]] = []
    held: set[int] = set()
    for k in range(K):
        held.difference_update(ending[k])
        held.update(starting[k])
        keep.append(set(held))
    return Decisions(keep=keep, recompute=recompute, variants=variants, in_place=in_place)


def module_block_candidates(graph: PlannerGraph, variants: dict[int, str] | None = None,
                            depths: tuple[int, ...] = (2, 3, 4)) -> Iterator[Decisions]:
    """Per-block checkpointing, as ``torch.utils.checkpoint`` around every block does: for
    each depth, the modules whose dotted path has that many parts (``layer1.0``,
    ``blocks.3``) are blocks. A block keeps only its last op's output and recomputes the
    rest; ops outside every block keep their outputs. A plan no worse than per-block
    checkpointing is then always among the candidates."""
    ops = graph.ops()
    seen: set[frozenset[int]] = set()
    for depth in depths:
        last: dict[str, int] = {}
        outside: set[int] = set()
        for o in ops:  # graph order: the last op seen in a block is its output
            parts = graph.nodes[o].module.split(".") if graph.nodes[o].module else []
            if len(parts) >= depth:
                last[".".join(parts[:depth])] = o
            else:
                outside.add(o)
        if len(last) < 2:
            continue
        checkpoints = frozenset(outside | set(last.values()))
        if checkpoints not in seen and len(checkpoints) < len(ops):
            seen.add(checkpoints)
            yield checkpoint_decisions(graph, set(checkpoints), variants, hold_recomputed=True)
            yield checkpoint_decisions(graph, set(checkpoints), variants)


@dataclass
class LPRounding:
    """What rounding needs of an LP relaxation's optimum: its objective (a lower bound on
    the MILP's), per op the largest share of its outputs the LP keeps after the forward
    pass, the variants it chooses to at least one half, and the problem's writes in
    place. Plain data: the full MILP's process (``planner.full_worker``) sends it here."""

    objective: float
    score: dict[int, float]
    variants: dict[int, str]
    in_place: str

    @classmethod
    def of(cls, milp: StageMILP, graph: PlannerGraph) -> "LPRounding":
        """From ``milp``'s variables, holding the LP relaxation's solution."""
        score = {o: 0.0 for o in graph.ops()}
        for (k, s), v in milp.keep.items():
            if k == 0 and graph.creator[s] in score:
                score[graph.creator[s]] = max(score[graph.creator[s]], v.value() or 0.0)
        variants = {e: name for (e, name), v in milp.variant.items() if (v.value() or 0) >= 0.5}
        return cls(pulp.value(milp.problem.objective), score, variants, milp.in_place)

    def to_json(self) -> dict:
        return {"objective": self.objective, "score": {str(o): x for o, x in self.score.items()},
                "variants": {str(e): n for e, n in self.variants.items()},
                "in_place": self.in_place}

    @classmethod
    def from_json(cls, data: dict) -> "LPRounding":
        return cls(float(data["objective"]), {int(o): float(x) for o, x in data["score"].items()},
                   {int(e): str(n) for e, n in data["variants"].items()}, str(data["in_place"]))


LP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


def rounded_candidates(graph: PlannerGraph, rounding: LPRounding,
                       thresholds: tuple[float, ...] = LP_THRESHOLDS) -> list[Decisions]:
    """Checkpoint plans from an LP relaxation's optimum: ops whose outputs the LP keeps
    after the forward pass to at least a threshold become checkpoints, with the variants
    the LP chooses."""
    candidates, seen = [], set()
    for t in thresholds:
        chosen = frozenset(o for o, x in rounding.score.items() if x >= t)
        if chosen not in seen:
            seen.add(chosen)
            candidates.append(checkpoint_decisions(graph, set(chosen), rounding.variants,
                                                   in_place=rounding.in_place))
    return candidates


def lp_rounding_candidates(graph: PlannerGraph, times: list[float], budget: int | None,
                           thresholds: tuple[float, ...] = LP_THRESHOLDS,
                           time_limit_s: float = 30.0, variants: str = "all",
                           max_recompute_depth: int | None = 12
                           ) -> tuple[list[Decisions], float | None]:
    """Checkpoint plans from the LP relaxation (``rounded_candidates``), solved here in at
    most ``time_limit_s``. Also returns the LP's optimum, a lower bound on the MILP's
    with recomputation chains of at most ``max_recompute_depth`` ops (None: any, a bound
    on every plan; None if the LP was not solved)."""
    milp = build_stage_milp(graph, times, budget, minimize_peak=budget is None,
                            variants=variants, max_recompute_depth=max_recompute_depth)
    if solve_relaxation(milp, time_limit_s) is None:
        return [], None
    rounding = LPRounding.of(milp, graph)
    return rounded_candidates(graph, rounding, thresholds), rounding.objective


def solve_relaxation(milp: StageMILP, time_limit_s: float) -> float | None:
    """Solve the LP relaxation of ``milp`` in at most ``time_limit_s``, in place: its
    variables hold the LP's values afterwards and keep their integrality, so that the same
    problem can then be solved as a MILP. The LP's optimum (a lower bound on the MILP's);
    None where it was not solved to optimality."""
    categories = [(v, v.cat) for v in milp.problem.variables()]
    for v, _ in categories:
        v.cat = pulp.LpContinuous
    use_highs_threads(None)
    try:
        milp.problem.solve(pulp.HiGHS(msg=False, timeLimit=time_limit_s))
    finally:
        for v, category in categories:
            v.cat = category
    if milp.problem.sol_status != pulp.LpSolutionOptimal:
        # HiGHS reports status "Optimal" with a time-limited solution: say what stopped it.
        log.info("LP relaxation not solved to optimality in %.0f s (%s)", time_limit_s,
                 pulp.LpSolution.get(milp.problem.sol_status, milp.problem.sol_status))
        return None
    return pulp.value(milp.problem.objective)


def structural_candidates(graph: PlannerGraph, times: list[float],
                          variants: dict[int, str] | None = None) -> Iterator[Decisions]:
    """Checkpoint plans that need no solver: every m-th op (sqrt(n)-style segments), and the
    ops that are expensive per byte they allocate (recompute the cheap ones). Made one at a
    time: on large graphs each plan's keep sets take tens of megabytes."""
    ops = graph.ops()
    # the cost-ordered sets first: when a short time limit cuts the list, they are the ones
    # most often fastest (ResNet-50 at 1/3 of its peak: +101 % against +111 % or more)
    by_cost = sorted(ops, key=lambda o: times[o] / max(1, graph.new_bytes(o)))
    sets = [set(by_cost[int(q * len(by_cost)):]) for q in (0.6, 0.5, 0.4, 0.3, 0.2, 0.1)]
    sets += [set(ops[i::m]) for m in range(2, 11) for i in (0, m // 2)]
    for checkpoints in sets:
        yield checkpoint_decisions(graph, checkpoints, variants)
