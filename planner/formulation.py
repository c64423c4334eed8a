"""The stage MILP (MONeT/Checkmate style) for keep/recompute decisions.

Variables, for stage k (0 = right after the forward pass):

* ``S[k][s]`` = 1 if forward storage s is held at the start of stage k;
* ``R[k][o]`` = 1 if forward op o is recomputed at the start of stage k;
* ``U[e][v]`` = 1 if site e runs operator variant v (at most one per site; none: the
  original). A variant swaps the site's needs for its own (its pack's output, kept from
  the forward pass), changes the step time by its pack's and implementation's time minus
  the site's, and adds its workspace at the site's position.

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
import numpy as np
import pulp

from .graph import PlannerGraph
from .in_place import allowed_writes
from .lp_terms import add_constraint, gc_paused, linear, terms_of
from .memory_rows import MIB_SCALE, AuxVariable, forward_memory_rows, stage_memory_rows
from .milp_vectors import MilpVectors
from .recompute_cuts import recomputation_cuts
from .schedule import Decisions

LE, GE = pulp.LpConstraintLE, pulp.LpConstraintGE


@dataclass
class StageMILP:
    """A built problem and the handles needed to read its solution back."""

    problem: pulp.LpProblem
    keep: dict[tuple[int, int], pulp.LpVariable]
    recompute: dict[tuple[int, int], pulp.LpVariable]
    memory_rows: list[pulp.LpAffineExpression] = field(default_factory=list)
    peak: pulp.LpVariable | None = None
    variant: dict[tuple[int, str], pulp.LpVariable] = field(default_factory=dict)
    aux: list[AuxVariable] = field(default_factory=list)
    budget: int | None = None  # bytes; None for the lowest-peak problem
    in_place: str = "none"  # the writes in place its memory rows count (planner.in_place)
    _vectors: MilpVectors | None = field(default=None, repr=False)

    def decisions(self, stages: int) -> Decisions:
        keep = [set() for _ in range(stages)]
        recompute = [set() for _ in range(stages)]
        for (k, s), v in self.keep.items():
            if (v.value() or 0) > 0.5:
                keep[k].add(s)
        for (k, o), v in self.recompute.items():
            if (v.value() or 0) > 0.5:
                recompute[k].add(o)
        variants = {e: name for (e, name), v in self.variant.items() if (v.value() or 0) > 0.5}
        return Decisions(keep=keep, recompute=recompute, variants=variants,
                         in_place=self.in_place)

    @property
    def vectors(self) -> MilpVectors:
        """The problem's variables as one vector, with compiled objective and rows (built on
        first use; the problem's structure does not change after the build)."""
        if self._vectors is None:
            self._vectors = MilpVectors(self)
        return self._vectors

    def represents(self, decisions: Decisions) -> bool:
        """Whether ``decisions`` is a point of this problem (recomputes within the window,
        keeps constant between a storage's events)."""
        if any((k, o) not in self.recompute for k, r in enumerate(decisions.recompute)
               for o in r):
            return False
        if any((k, s) not in self.keep for k, kept in enumerate(decisions.keep) for s in kept):
            return False
        if any(choice not in self.variant for choice in decisions.variants.items()):
            return False
        value: dict[str, bool] = {}
        for (k, s), v in self.keep.items():
            if value.setdefault(v.name, s in decisions.keep[k]) != (s in decisions.keep[k]):
                return False
        return True

    def set_start(self, decisions: Decisions) -> None:
        """Give every variable the value it has in ``decisions`` (a solver warm start)."""
        for v, x in zip(self.vectors.variables, self.vectors.values(decisions).tolist()):
            v.varValue = x

    def objective_of(self, decisions: Decisions) -> float:
        """The objective's value at ``decisions``."""
        return self.vectors.objective_of(self.vectors.values(decisions))

    def improves(self, x: np.ndarray, incumbent: float | None) -> bool:
        """Whether the point ``x`` (``vectors.values``) has an objective below ``incumbent``
        (None: any) and its memory rows, re-checked in bytes (the solver's are in MiB,
        within its tolerances), within the budget."""
        if incumbent is not None:
            objective = self.vectors.objective_of(x)
            if objective >= incumbent - 1e-9 * max(1.0, abs(incumbent)):
                return False
        return self.budget is None or self.vectors.largest_row(x) <= self.budget

    def evaluate_peak(self, decisions: Decisions) -> int:
        """The memory the formulation claims for ``decisions``: its largest memory row."""
        if decisions.in_place != self.in_place:
            raise ValueError(f"a plan writing in place under {decisions.in_place!r} cannot be "
                             f"measured by rows that count {self.in_place!r}")
        return self.vectors.largest_row(self.vectors.values(decisions))


def recompute_candidates(graph: PlannerGraph, dag: nx.DiGraph, needs: set[int], ops: set[int],
                         max_depth: int | None) -> set[int]:
    """Forward ops a stage needing ``needs`` may recompute: their ancestors at most
    ``max_depth`` recomputed ops away (aliases are free and do not count; pack nodes are
    never recomputed, so they are no sources)."""
    sources = needs - graph.packs.keys()
    if not sources:
        return set()
    # On the reversed forward graph, stepping from a consumer to its input costs 1 when the
    # consumer is an op that would be recomputed, so an op's distance counts the ops above it.
    dist = nx.multi_source_dijkstra_path_length(
        dag.reverse(copy=False), sources, cutoff=max_depth,
        weight=lambda consumer, _input, _data: 1 if consumer in ops else 0)
    return {n for n, d in dist.items() if n in ops and (max_depth is None or d < max_depth)}


def _storages(graph: PlannerGraph, nodes: set[int]) -> set[int]:
    out: set[int] = set()
    for n in nodes:
        out |= graph.planned_storages(n)
    return out


@gc_paused()
def build_stage_milp(graph: PlannerGraph, times: list[float], budget: int | None,
                     minimize_peak: bool = False, max_recompute_depth: int | None = 12,
                     variants: str = "all", include: Decisions | None = None,
                     in_place: str | None = None, recompute_cuts: bool = False,
                     rows_only: bool = False) -> StageMILP:
    """The MILP for ``graph``: minimise the step's extra time under ``budget`` bytes, or
    (with ``minimize_peak``) minimise the peak itself. Recomputation chains are limited to
    ``max_recompute_depth`` ops per stage (None: unlimited), which keeps the problem small
    at no cost for the budgets where longer chains would not pay; the recomputations of
    ``include`` (a warm start) are candidates too, so that it is a point of the problem.
    ``variants`` says which operator variants the plan may use, and which writes in place
    (``planner.in_place``) unless ``in_place`` says otherwise: all, exact or none.
    ``recompute_cuts`` adds rows that tighten the LP relaxation without cutting off a plan
    (``planner.recompute_cuts``): a stronger bound, at the price of larger LPs.
    ``rows_only`` builds the variables, memory rows and objective without any constraint:
    all a memory claim (``StageMILP.evaluate_peak``) reads, and not a problem to solve (a
    low-memory plan of the GPT recomputing 26K ops: 3.5-3.7 s with its claim, 6.5 s with
    every row)."""
    K = len(graph.stages)
    prob = pulp.LpProblem("monet_stage_rows" if rows_only else "monet_stages", pulp.LpMinimize)
    ops = set(graph.ops())
    sites = graph.variant_sites(variants)
    stage_needs = graph.stage_needs_any if sites else graph.stage_needs

    dag = graph.forward_dag()
    anc_nodes = [recompute_candidates(graph, dag, stage_needs[k], ops, max_recompute_depth)
                 for k in range(K)]
    if include is not None:
        for k in range(K):
            anc_nodes[k] |= include.recompute[k] & ops
    # Events of a storage: the stages that may read or recompute it. Between two events a
    # storage is either held throughout or not at all (dropping it earlier is never worse),
    # so one keep variable per event suffices: it covers the stages since the last event.
    events: dict[int, list[int]] = {}
    for k in range(K):
        useful = _storages(graph, stage_needs[k])
        for o in anc_nodes[k]:
            useful |= graph.planned_storages(o) | graph.op_inputs(o)
        for s in useful:
            events.setdefault(s, []).append(k)

    S: dict[tuple[int, int], pulp.LpVariable] = {}
    R: dict[tuple[int, int], pulp.LpVariable] = {}
    U: dict[tuple[int, str], pulp.LpVariable] = {}
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
    for e, vs in sorted(sites.items()):
        for v in vs:
            U[e, v.name] = pulp.LpVariable(f"U_{e}_{v.name}", cat="Binary")
        if len(vs) > 1 and not rows_only:
            add_constraint(prob, f"one_variant_{e}", [(U[e, v.name], 1) for v in vs], LE, -1)

    if not rows_only:
        _plan_constraints(prob, graph, S, R, U, sites, anc_nodes, ops, recompute_cuts)

    base = sum(graph.storage_bytes[s] for s in graph.constant_storages)
    in_place = variants if in_place is None else in_place
    writes = allowed_writes(graph, in_place)
    rows = forward_memory_rows(graph, {s: S[0, s] for (k, s) in S if k == 0}, base, writes)
    pinned = sum(graph.storage_bytes[s] for s in graph.pinned_storages)
    stage_rows, aux = stage_memory_rows(graph, S, R, U, base + pinned, writes)
    rows += stage_rows
    if not rows_only:
        for a in aux:
            for i, expr in enumerate(a.lower):
                add_constraint(prob, f"aux_{a.var.name}_{i}",
                               [(a.var, 1), *terms_of(expr, -1)], GE, 0 - expr.constant)

    milp = StageMILP(problem=prob, keep=S, recompute=R, memory_rows=rows, variant=U,
                     aux=aux, budget=None if minimize_peak else budget, in_place=in_place)
    extra_time = linear((v, times[o]) for (k, o), v in R.items())
    for (e, name), v in U.items():
        var = graph.variant(e, name)
        delta = times[var.impl] - times[e] + (times[var.pack] if var.pack is not None else 0.0)
        extra_time.addterm(v, delta)
    if rows_only:
        prob += extra_time
    elif minimize_peak:
        milp.peak = pulp.LpVariable("peak_mib", lowBound=0)
        for i, row in enumerate(rows):
            add_constraint(prob, f"mem_{i}", [*terms_of(row, MIB_SCALE), (milp.peak, -1)], LE,
                           row.constant * MIB_SCALE)
        # The peak (MiB) dominates; the extra time, as a fraction of the step, breaks ties
        # for at most 1e-4 MiB.
        prob += milp.peak + 1e-4 / max(sum(times), 1e-12) * extra_time
    else:
        assert budget is not None
        for i, row in enumerate(rows):
            add_constraint(prob, f"mem_{i}", terms_of(row, MIB_SCALE), LE,
                           row.constant * MIB_SCALE - budget * MIB_SCALE)
        prob += extra_time
    return milp


def _plan_constraints(prob: pulp.LpProblem, graph: PlannerGraph, S: dict, R: dict, U: dict,
                      sites: dict, anc_nodes: list[set[int]], ops: set[int],
                      recompute_cuts: bool) -> None:
    """The stage MILP's rows other than memory: needs held or recomputed, recomputations'
    inputs available, keeps carried, no storage both held and recomputed, packs only with
    their variants, and (``recompute_cuts``) the recomputation cuts."""
    K = len(graph.stages)

    def avail(k: int, s: int, sign: int = 1) -> list[tuple[pulp.LpVariable, int]]:
        """The terms that make storage s available in stage k: held or recomputed."""
        terms = [(S[k, s], sign)] if (k, s) in S else []
        c = graph.creator[s]
        if (k, c) in R:
            terms.append((R[k, c], sign))
        return terms

    for k in range(K):
        # Needs every choice of the stage shares are hard; the others follow the choice.
        hard = graph.stage_hard_needs(k, sites)
        for s in hard:
            add_constraint(prob, f"need_{k}_{s}", avail(k, s), GE, -1)
        for e in graph.stages[k]:
            if e not in sites:
                continue
            # avail >= 1 - sum of the site's variants
            chosen = [(U[e, v.name], 1) for v in sites[e]]
            for s in _storages(graph, graph.needs_of_choice[e, ""]) - hard:
                add_constraint(prob, f"need_{k}_{s}_orig_{e}", avail(k, s) + chosen, GE, -1)
            for v in sites[e]:
                for s in _storages(graph, graph.needs_of_choice[e, v.name]) - hard:
                    add_constraint(prob, f"need_{k}_{s}_{v.name}_{e}",
                                   avail(k, s) + [(U[e, v.name], -1)], GE)
        for o in anc_nodes[k] & ops:
            for s in graph.op_inputs(o):
                add_constraint(prob, f"dep_{k}_{o}_{s}", avail(k, s) + [(R[k, o], -1)], GE)
            for s in graph.nodes[o].new_storages:
                if (k, s) in S:
                    add_constraint(prob, f"once_{k}_{s}", [(S[k, s], 1), (R[k, o], 1)], LE, -1)
    for (k, s), v in S.items():
        if k + 1 < K and (k + 1, s) in S and S[k + 1, s] is not v:
            add_constraint(prob, f"carry_{k}_{s}", [(S[k + 1, s], 1), *avail(k, s, -1)], LE)
    if recompute_cuts:
        for cut in recomputation_cuts(graph, S, R, sites):
            prob += cut
    # A pack's output exists only if one of its variants is chosen.
    for p, vs in graph.packs.items():
        for s in graph.nodes[p].new_storages:
            if (0, s) in S:
                add_constraint(prob, f"pack_{s}", [(S[0, s], 1)] + [
                    (U[v.site, v.name], -1) for v in vs if (v.site, v.name) in U], LE)
