"""The stage MILP (MONeT/Checkmate style) for keep/recompute decisions.

Variables, for stage k (0 = right after the forward pass):

* ``S[k][s]`` = 1 if forward storage s is held at the start of stage k;
* ``R[k][o]`` = 1 if forward op o is recomputed at the start of stage k.

Constraints: a stage's needs are held or recomputed; a recomputed op's inputs are held or
recomputed in the same stage; a storage is held at stage k+1 only if it was held or
recomputed in stage k; never hold and recompute the same storage; the memory at every
forward step and in every stage stays under the budget. The objective is the recompute
time. Memory coefficients follow exactly the execution rules of ``planner.schedule`` (see
``planner.graph``), so the solver's peak equals the simulator's.

Only useful variables are created: ``S[k][s]`` while some later stage can still use s (it
or a descendant is needed), and ``R[k][o]`` for ancestors of stage k's needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import pulp

from .graph import END, PlannerGraph
from .schedule import Decisions

# Memory rows are given to the solver in MiB: byte-sized coefficients (up to 1e10) next to
# 0/1 variables strain the solvers' tolerances. Plans are re-checked in bytes afterwards.
MIB_SCALE = 1.0 / 2**20


@dataclass
class StageMILP:
    """A built problem and the handles needed to read its solution back."""

    problem: pulp.LpProblem
    keep: dict[tuple[int, int], pulp.LpVariable]
    recompute: dict[tuple[int, int], pulp.LpVariable]
    memory_rows: list[pulp.LpAffineExpression] = field(default_factory=list)
    peak: pulp.LpVariable | None = None

    def decisions(self, stages: int) -> Decisions:
        keep = [set() for _ in range(stages)]
        recompute = [set() for _ in range(stages)]
        for (k, s), v in self.keep.items():
            if (v.value() or 0) > 0.5:
                keep[k].add(s)
        for (k, o), v in self.recompute.items():
            if (v.value() or 0) > 0.5:
                recompute[k].add(o)
        return Decisions(keep=keep, recompute=recompute)

    def represents(self, decisions: Decisions) -> bool:
        """Whether ``decisions`` is a point of this problem (recomputes within the window,
        keeps constant between a storage's events)."""
        if any((k, o) not in self.recompute for k, r in enumerate(decisions.recompute)
               for o in r):
            return False
        if any((k, s) not in self.keep for k, kept in enumerate(decisions.keep) for s in kept):
            return False
        value: dict[str, bool] = {}
        for (k, s), v in self.keep.items():
            if value.setdefault(v.name, s in decisions.keep[k]) != (s in decisions.keep[k]):
                return False
        return True

    def set_start(self, decisions: Decisions) -> None:
        """Give every variable the value it has in ``decisions`` (a solver warm start)."""
        for (k, s), v in self.keep.items():
            v.varValue = 1 if s in decisions.keep[k] else 0
        for (k, o), v in self.recompute.items():
            v.varValue = 1 if o in decisions.recompute[k] else 0
        if self.peak is not None:
            self.peak.varValue = self.evaluate_peak(decisions) * MIB_SCALE

    def evaluate_peak(self, decisions: Decisions) -> int:
        """The memory the formulation claims for ``decisions``: its largest memory row."""
        value = {}
        for (k, s), v in self.keep.items():
            value[v.name] = 1 if s in decisions.keep[k] else 0
        for (k, o), v in self.recompute.items():
            value[v.name] = 1 if o in decisions.recompute[k] else 0
        best = 0
        for row in self.memory_rows:
            total = row.constant + sum(c * value[v.name] for v, c in row.items())
            best = max(best, int(round(total)))
        return best


def storage_lifetimes(graph: PlannerGraph, order: list[int], node_last_use: dict[int, int]
                      ) -> tuple[dict[int, int], dict[int, int]]:
    """For the nodes run in ``order``: the position where each storage is allocated, and
    the last position where any node referencing it is live (views keep their base)."""
    created_at: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for t, n in enumerate(order):
        end = max(node_last_use[n], t)
        for s in graph.nodes[n].storages:
            last_use[s] = max(last_use.get(s, -1), end)
        for s in graph.nodes[n].new_storages:
            created_at[s] = t
    return created_at, last_use


def forward_memory_rows(graph: PlannerGraph, keep0: dict[int, pulp.LpVariable],
                        base: int) -> list[pulp.LpAffineExpression]:
    """Memory after each forward step, linear in the after-forward keep variables.

    Rows dominated by a later row (same or larger constant, superset of variables) are
    dropped: the set of storages past their last use only grows along the forward pass.
    """
    created_at, last_use = storage_lifetimes(graph, graph.forward, graph.forward_last_use)
    by_step: list[list[int]] = [[] for _ in graph.forward]
    for s, t in created_at.items():
        by_step[t].append(s)
    rows: list[tuple[int, pulp.LpAffineExpression]] = []
    created: list[int] = []
    for t in range(len(graph.forward)):
        created.extend(by_step[t])
        fixed = base
        expr = pulp.LpAffineExpression()
        for s in created:
            b = graph.storage_bytes[s]
            if last_use[s] >= t or s in graph.pinned_storages:
                fixed += b
            elif s in keep0:
                expr += b * keep0[s]
        expr += fixed
        rows.append((fixed, expr))
    kept: list[pulp.LpAffineExpression] = []
    best_later = -1
    for fixed, expr in reversed(rows):
        if fixed > best_later:
            kept.append(expr)
            best_later = fixed
    return kept


def backward_live_bytes(graph: PlannerGraph) -> list[int]:
    """Bytes of backward-allocated storages live while each executed node runs."""
    created_at, last_use = storage_lifetimes(graph, graph.executed, graph.backward_last_use)
    live = [0] * len(graph.executed)
    for s, t in created_at.items():
        stop = min(last_use[s], len(graph.executed) - 1) if last_use[s] < END else \
            len(graph.executed) - 1
        for j in range(t, stop + 1):
            live[j] += graph.storage_bytes[s]
    return live


def recompute_candidates(graph: PlannerGraph, dag: nx.DiGraph, k: int, ops: set[int],
                         max_depth: int | None) -> set[int]:
    """Forward ops stage k may recompute: ancestors of its needs at most ``max_depth``
    recomputed ops away (aliases are free and do not count)."""
    if not graph.stage_needs[k]:
        return set()
    # On the reversed forward graph, stepping from a consumer to its input costs 1 when the
    # consumer is an op that would be recomputed, so an op's distance counts the ops above it.
    dist = nx.multi_source_dijkstra_path_length(
        dag.reverse(copy=False), graph.stage_needs[k], cutoff=max_depth,
        weight=lambda consumer, _input, _data: 1 if consumer in ops else 0)
    return {n for n, d in dist.items() if n in ops and (max_depth is None or d < max_depth)}


def build_stage_milp(graph: PlannerGraph, times: list[float], budget: int | None,
                     minimize_peak: bool = False,
                     max_recompute_depth: int | None = 12) -> StageMILP:
    """The MILP for ``graph``: minimise recompute time under ``budget`` bytes, or (with
    ``minimize_peak``) minimise the peak itself. Recomputation chains are limited to
    ``max_recompute_depth`` ops per stage (None: unlimited), which keeps the problem small
    at no cost for the budgets where longer chains would not pay."""
    K = len(graph.stages)
    prob = pulp.LpProblem("monet_stages", pulp.LpMinimize)
    ops = set(graph.ops())

    dag = graph.forward_dag()
    anc_nodes = [recompute_candidates(graph, dag, k, ops, max_recompute_depth)
                 for k in range(K)]
    # Events of a storage: the stages that may read or recompute it. Between two events a
    # storage is either held throughout or not at all (dropping it earlier is never worse),
    # so one keep variable per event suffices: it covers the stages since the last event.
    events: dict[int, list[int]] = {}
    for k in range(K):
        useful = graph.stage_need_storages(k)
        for o in anc_nodes[k]:
            useful |= graph.planned_storages(o) | graph.op_inputs(o)
        for s in useful:
            events.setdefault(s, []).append(k)

    S: dict[tuple[int, int], pulp.LpVariable] = {}
    R: dict[tuple[int, int], pulp.LpVariable] = {}
    for s, stages in events.items():
        k = 0
        for e in stages:
            var = pulp.LpVariable(f"S_{e}_{s}", cat="Binary")
            while k <= e:
                S[k, s] = var
                k += 1
    for k in range(K):
        for o in sorted(anc_nodes[k] & ops):
            R[k, o] = pulp.LpVariable(f"R_{k}_{o}", cat="Binary")

    def avail(k: int, s: int) -> pulp.LpAffineExpression:
        e = pulp.LpAffineExpression()
        if (k, s) in S:
            e += S[k, s]
        c = graph.creator[s]
        if (k, c) in R:
            e += R[k, c]
        return e

    for k in range(K):
        for s in graph.stage_need_storages(k):
            prob += avail(k, s) >= 1, f"need_{k}_{s}"
        for o in anc_nodes[k] & ops:
            for s in graph.op_inputs(o):
                prob += avail(k, s) >= R[k, o], f"dep_{k}_{o}_{s}"
            for s in graph.nodes[o].new_storages:
                if (k, s) in S:
                    prob += S[k, s] + R[k, o] <= 1, f"once_{k}_{s}"
    for (k, s), v in S.items():
        if k + 1 < K and (k + 1, s) in S and S[k + 1, s] is not v:
            prob += S[k + 1, s] <= avail(k, s), f"carry_{k}_{s}"

    base = sum(graph.storage_bytes[s] for s in graph.constant_storages)
    rows = forward_memory_rows(graph, {s: S[0, s] for (k, s) in S if k == 0}, base)
    pinned = sum(graph.storage_bytes[s] for s in graph.pinned_storages)
    tangents = sum(graph.storage_bytes[s] for s in graph.tangent_storages - graph.pinned_storages)
    bwd_live = backward_live_bytes(graph)
    bpos = {n: t for t, n in enumerate(graph.executed)}
    terms: list[list[tuple[pulp.LpVariable, int]]] = [[] for _ in range(K)]
    for (k, s), v in S.items():
        terms[k].append((v, graph.storage_bytes[s]))
    for (k, o), v in R.items():
        terms[k].append((v, graph.new_bytes(o)))
    for k in range(K):
        fixed = base + pinned + tangents + max(bwd_live[bpos[e]] for e in graph.stages[k])
        rows.append(pulp.LpAffineExpression(terms[k], constant=fixed))

    milp = StageMILP(problem=prob, keep=S, recompute=R, memory_rows=rows)
    recompute_time = pulp.lpSum(times[o] * v for (k, o), v in R.items())
    if minimize_peak:
        milp.peak = pulp.LpVariable("peak_mib", lowBound=0)
        for i, row in enumerate(rows):
            prob += row * MIB_SCALE <= milp.peak, f"mem_{i}"
        # The peak (MiB) dominates; recompute time, as a fraction of the step, breaks ties
        # for at most 1e-4 MiB.
        prob += milp.peak + 1e-4 / max(sum(times), 1e-12) * recompute_time
    else:
        assert budget is not None
        for i, row in enumerate(rows):
            prob += row * MIB_SCALE <= budget * MIB_SCALE, f"mem_{i}"
        prob += recompute_time
    return milp
