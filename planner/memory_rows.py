"""Memory rows of the stage MILP: the bytes live at every step, linear in its variables.

Each row follows the execution rules of ``planner.schedule`` exactly (see ``planner.graph``
for the rules), so the largest row at a plan's variable values is the simulator's peak.

* Forward rows: the bytes after each forward step, in the after-forward keep variables.
* Backward-phase rows of stage k: at its first node, a storage the node may read counts
  when held or recomputed (``S[k][s] + R[k][creator]``), any other only when it is kept
  for the next stage (``S[k+1][s]``); after the first node every storage counts as kept
  for the next stage or not at all.
* Every row adds the workspace (temporaries) of the node running at that step: a constant
  for a node that always runs, times its recompute variable for a recomputed one, and the
  difference to the original's for a variant chosen instead.
* Recompute-phase rows of stage k, one per recompute candidate o (graph order): held
  storages (``H[k]``, the stage's held bytes, one auxiliary variable per stage) plus the
  recomputed storages still live when o has run. A recomputed storage the stage's first
  node cannot read lives until its last recomputed reader has run, or to the stage's end
  when kept for the next stage: auxiliary variables ``Z`` (one per storage and reader)
  with ``Z >= R[reader] + R[creator] - 1`` chained from the last reader to the first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pulp

from .graph import END, PlannerGraph
from .in_place import InPlaceWrite
from .lifetimes import storage_lifetimes
from .lp_terms import linear, plus

# Memory rows are given to the solver in MiB: byte-sized coefficients (up to 1e10) next to
# 0/1 variables strain the solvers' tolerances. Plans are re-checked in bytes afterwards.
# The held-bytes auxiliaries are in MiB too.
MIB_SCALE = 1.0 / 2**20


@dataclass
class AuxVariable:
    """A continuous variable bounded below by expressions of other variables: its value at a
    plan is the largest of them (and 0). Earlier auxiliaries may appear in later ones."""

    var: pulp.LpVariable
    lower: list[pulp.LpAffineExpression] = field(default_factory=list)


def forward_memory_rows(graph: PlannerGraph, keep0: dict[int, pulp.LpVariable],
                        base: int, writes: dict[int, InPlaceWrite] | None = None
                        ) -> list[pulp.LpAffineExpression]:
    """Memory after each forward step, linear in the after-forward keep variables. An op
    of ``writes`` whose input's last forward reader it is writes over the input unless it
    is kept: at the op's step the input counts as kept or not at all.

    A pack node's output exists only when its variant is chosen, which is exactly when it
    is kept (``keep0``): it and the pack's workspace are counted through that variable.
    Rows dominated by a later row (same or larger constant, superset of variables) are
    dropped: the set of storages past their last use only grows along the forward pass.
    """
    optional = {s for p in graph.packs for s in graph.nodes[p].new_storages}
    created_at, last_use = storage_lifetimes(graph, graph.forward, graph.forward_last_use)
    by_step: list[list[int]] = [[] for _ in graph.forward]
    for s, t in created_at.items():
        by_step[t].append(s)
    writes = writes or {}

    def overwritten(t: int) -> int | None:
        """The input the op at step t writes over (its last forward reader), if any."""
        w = writes.get(graph.forward[t])
        return w.storage if w is not None and last_use[w.storage] == t else None

    def counted(s: int, t: int, over: int | None) -> bool:
        """Whether storage s, created by step t, counts at step t whatever is kept."""
        return s not in optional and ((last_use[s] >= t and s != over)
                                      or s in graph.pinned_storages)

    # The constant part of every row first (integers only): rows dominated by a later one
    # are never built.
    fixed_at: list[int] = []
    created: list[int] = []  # storages in creation order
    created_by: list[int] = []  # how many of them exist after each step
    for t, n in enumerate(graph.forward):
        created.extend(by_step[t])
        created_by.append(len(created))
        over = overwritten(t)
        fixed = base + (graph.nodes[n].workspace_bytes if n not in graph.packs else 0)
        fixed_at.append(fixed + sum(graph.storage_bytes[s] for s in created
                                    if counted(s, t, over)))
    wanted: list[int] = []  # steps whose rows are kept, last step first
    best_later = -1
    for t in range(len(graph.forward) - 1, -1, -1):
        # A pack's workspace term appears in its own row only: never dominated.
        if fixed_at[t] > best_later or graph.forward[t] in graph.packs:
            wanted.append(t)
            best_later = max(best_later, fixed_at[t])
    rows: list[pulp.LpAffineExpression] = []
    for t in wanted:
        n = graph.forward[t]
        over = overwritten(t)
        terms: list[tuple[pulp.LpVariable, float]] = []
        if n in graph.packs and graph.nodes[n].workspace_bytes:
            terms += [(keep0[s], graph.nodes[n].workspace_bytes)
                      for s in graph.nodes[n].new_storages if s in keep0]
        terms += [(keep0[s], graph.storage_bytes[s])
                  for s in created[:created_by[t]]
                  if s in keep0 and not counted(s, t, over)]
        rows.append(linear(terms, constant=fixed_at[t]))
    return rows


def backward_live_bytes(graph: PlannerGraph) -> tuple[list[int], list[int]]:
    """Bytes of backward-allocated storages live while each executed node runs, and just
    before it runs (without what it allocates)."""
    created_at, last_use = storage_lifetimes(graph, graph.executed, graph.backward_last_use)
    # A backward node that writes its value into a forward tensor dead after it (a
    # cross-entropy's backward into the log-softmax) takes that storage over: the forward
    # tensor's copy counts at the node's own step, the backward value's from the next.
    taken = {}
    for t, e in enumerate(graph.executed):
        if graph.nodes[e].writes_into >= 0:
            for s in graph.planned_storages(e):
                taken[s] = t
    n = len(graph.executed)
    live = [0] * n
    before = [0] * n
    for s, t in (*created_at.items(), *taken.items()):
        stop = min(last_use[s], n - 1) if last_use[s] < END else n - 1
        b = graph.storage_bytes[s]
        for j in range(t + (s in taken), stop + 1):
            live[j] += b
        for j in range(t + 1, stop + 1):
            before[j] += b
    # Output gradients: there from the start, until their last reader (views of them
    # included) runs.
    for s, stop in _tangent_last_use(graph, last_use).items():
        stop = min(stop, n - 1)
        for j in range(stop + 1):
            live[j] += graph.storage_bytes[s]
            before[j] += graph.storage_bytes[s]
    return live, before


def _tangent_last_use(graph: PlannerGraph, last_use: dict[int, int]) -> dict[int, int]:
    """For each output-gradient storage (not an output's or a parameter's), the last
    position in ``graph.executed`` where a node holding it is live (-1: none reads it);
    ``last_use``: ``storage_lifetimes``' over the executed nodes."""
    out: dict[int, int] = {}
    for m in graph.tangent_nodes:
        for s in graph.nodes[m].storages:
            if s in graph.pinned_storages or s in graph.constant_storages:
                continue
            out[s] = max(out.get(s, -1), graph.backward_last_use[m], last_use.get(s, -1))
    return out


@dataclass
class StageNeeds:
    """What a stage's first node reads under each allowed option: ``always`` under every
    one; ``options`` pairs each option's indicator (1 when chosen) with what it reads."""

    always: set[int]
    options: list[tuple[pulp.LpAffineExpression, set[int]]]

    def readers(self, s: int) -> list[pulp.LpAffineExpression]:
        """Indicators of the options that read storage ``s``."""
        return [ind for ind, needs in self.options if s in needs]


def stage_needs(graph: PlannerGraph, k: int, variant: dict[tuple[int, str], pulp.LpVariable]
                ) -> StageNeeds:
    """The planned storages stage k's first node reads, per option allowed in ``variant``."""
    first = graph.stages[k][0]
    original = graph.planned_needs(first, "")
    chosen = [(v.name, variant[first, v.name]) for v in graph.variants.get(first, [])
              if (first, v.name) in variant]
    if not chosen:
        return StageNeeds(original, [(pulp.LpAffineExpression(constant=1), original)])
    options = [(1 - pulp.lpSum(u for _, u in chosen), original)]
    options += [(pulp.LpAffineExpression(u), graph.planned_needs(first, name))
                for name, u in chosen]
    return StageNeeds(set.intersection(*(needs for _, needs in options)), options)


def stage_memory_rows(graph: PlannerGraph, keep: dict[tuple[int, int], pulp.LpVariable],
                      recompute: dict[tuple[int, int], pulp.LpVariable],
                      variant: dict[tuple[int, str], pulp.LpVariable], const: int,
                      writes: dict[int, InPlaceWrite] | None = None
                      ) -> tuple[list[pulp.LpAffineExpression], list[AuxVariable]]:
    """The memory rows of every backward stage (bytes; ``const`` is held throughout) and
    the auxiliary variables they use; ``writes``: the ops allowed to write in place.

    A storage the first node reads under some allowed options only is live at it when
    held (or recomputed) and read by the chosen option, or kept for the next stage:
    auxiliaries ``Y >= S[k][s] + chosen - 1``, ``Y >= S[k][s] + S[k+1][s] - 1`` for the
    held copy, and the same in ``R[k][creator]`` for a recomputed one.
    """
    K = len(graph.stages)
    live, before = backward_live_bytes(graph)
    bpos = {n: t for t, n in enumerate(graph.executed)}
    size = graph.storage_bytes
    present: list[list[int]] = [[] for _ in range(K)]
    for (k, s) in keep:
        present[k].append(s)
    cands: list[list[int]] = [[] for _ in range(K)]
    for (k, o) in recompute:
        cands[k].append(o)
    rows: list[pulp.LpAffineExpression] = []
    aux: list[AuxVariable] = []

    def workspace(e: int) -> list[tuple[pulp.LpVariable, int]]:
        """A variant's workspace where it differs from the original's (``own(e)``)."""
        return [(variant[e, v.name], graph.nodes[v.impl].workspace_bytes - own(e))
                for v in graph.variants.get(e, [])
                if (e, v.name) in variant and graph.nodes[v.impl].workspace_bytes != own(e)]

    def own(e: int) -> int:
        return graph.nodes[e].workspace_bytes

    for k in range(K):
        stage = graph.stages[k]
        needs = stage_needs(graph, k, variant)
        # The recomputed copy's liveness at the end of the recompute phase (through the
        # first node), for storages the first node does not always read.
        end_live = {}
        for o in cands[k]:
            for s in graph.planned_storages(o):
                if graph.creator[s] == o and s not in needs.always:
                    end_live[s] = _live_to_end(k, s, recompute[k, o], keep, needs, "Zend", aux)
        at_first: list[tuple[pulp.LpVariable, int]] = []
        after: list[tuple[pulp.LpVariable, int]] = []
        for s in present[k]:
            carried = [(keep[k + 1, s], size[s])] if (k + 1, s) in keep else []
            after += carried
            made = (k, graph.creator[s]) in recompute
            if s in needs.always:
                at_first.append((keep[k, s], size[s]))
                if made:
                    at_first.append((recompute[k, graph.creator[s]], size[s]))
                continue
            if not needs.readers(s):  # live at the first node only if kept, either copy
                at_first += carried
                continue
            held = _live_to_end(k, s, keep[k, s], keep, needs, "Y", aux)
            at_first.append((held, size[s]))
            if made and end_live[s] is not None:
                at_first.append((end_live[s], size[s]))
        first = stage[0]
        rows.append(linear(at_first + workspace(first),
                           constant=const + live[bpos[first]] + own(first)))
        plain = [live[bpos[e]] + own(e) for e in stage[1:] if not workspace(e)]
        if plain:
            rows.append(linear(after, constant=const + max(plain)))
        for e in stage[1:]:
            if workspace(e):
                rows.append(linear(after + workspace(e),
                                   constant=const + live[bpos[e]] + own(e)))
        if cands[k]:
            rows += _recompute_phase_rows(graph, k, sorted(cands[k]), present[k], keep,
                                          recompute, needs.always, end_live,
                                          const + before[bpos[first]], aux, writes or {})
    return rows, aux


def _live_to_end(k: int, s: int, copy: pulp.LpVariable,
                 keep: dict[tuple[int, int], pulp.LpVariable], needs: StageNeeds, name: str,
                 aux: list[AuxVariable]) -> pulp.LpVariable | None:
    """An auxiliary that is 1 when ``copy`` (held or recomputed) of storage s lives until
    stage k's first node has run: read by the chosen option or kept for the next stage.
    None when neither can happen."""
    lower = [plus(ind, [(copy, 1)], -1) for ind in needs.readers(s)]
    if (k + 1, s) in keep and keep[k + 1, s] is not copy:
        lower.append(linear([(keep[k + 1, s], 1), (copy, 1)], -1))
    elif (k + 1, s) in keep:
        lower.append(linear([(copy, 1)]))
    if not lower:
        return None
    var = pulp.LpVariable(f"{name}_{k}_{s}", lowBound=0, upBound=1)
    aux.append(AuxVariable(var, lower))
    return var


def _recompute_phase_rows(graph: PlannerGraph, k: int, order: list[int],
                          held_storages: list[int], keep: dict[tuple[int, int], pulp.LpVariable],
                          recompute: dict[tuple[int, int], pulp.LpVariable], always: set[int],
                          end_live: dict[int, pulp.LpVariable | None], const: int,
                          aux: list[AuxVariable], writes: dict[int, InPlaceWrite]
                          ) -> list[pulp.LpAffineExpression]:
    """Rows after each recompute candidate of stage k has (or would have) run. A candidate
    of ``writes`` writes over its input when the input was recomputed here and nothing
    reads or keeps it afterwards: at its row the input counts as it does after it."""
    size = graph.storage_bytes
    held = pulp.LpVariable(f"H_{k}", lowBound=0)
    aux.append(AuxVariable(held, [linear(
        [(keep[k, s], size[s] * MIB_SCALE) for s in held_storages])]))
    rank = {o: r for r, o in enumerate(order)}
    readers: dict[int, list[int]] = {}  # storage -> ranks of candidates reading it
    for r, o in enumerate(order):
        for s in graph.op_inputs(o):
            readers.setdefault(s, []).append(r)
    # live[s]: (rank from which it applies, variable) pieces, ascending ranks; a piece
    # applies from its rank to the next piece's.
    pieces: dict[int, list[tuple[int, pulp.LpVariable | None]]] = {}
    for o in order:
        r_o = rank[o]
        for s in graph.planned_storages(o):
            if graph.creator[s] != o:
                continue
            if s in always:
                pieces[s] = [(r_o, recompute[k, o])]
                continue
            later = [r for r in readers.get(s, []) if r > r_o]
            nxt = end_live[s]
            chain: list[tuple[int, pulp.LpVariable | None]] = [(later[-1] + 1 if later else
                                                                r_o + 1, nxt)]
            for i in range(len(later) - 1, -1, -1):
                z = pulp.LpVariable(f"Z_{k}_{s}_{i}", lowBound=0, upBound=1)
                lower = [linear([(recompute[k, order[later[i]]], 1), (recompute[k, o], 1)], -1)]
                if nxt is not None:
                    lower.append(linear([(nxt, 1)]))
                aux.append(AuxVariable(z, lower))
                start = later[i - 1] + 1 if i > 0 else r_o + 1
                chain.append((start, z))
                nxt = z
            # The creator's own row counts it as just allocated.
            pieces[s] = [(r_o, recompute[k, o])] + list(reversed(chain))
    rows = []
    for r, o in enumerate(order):
        terms: list[tuple[pulp.LpVariable, float]] = [(held, 1 / MIB_SCALE)]
        if graph.nodes[o].workspace_bytes:  # its temporaries, when it is recomputed
            terms.append((recompute[k, o], graph.nodes[o].workspace_bytes))
        w = writes.get(o)
        over = w.storage if w is not None and w.storage not in always else None
        for s, ps in pieces.items():
            if ps[0][0] > r:
                continue
            var = _piece_at(ps, r + 1 if s == over else r)
            if var is not None:
                terms.append((var, size[s]))
        rows.append(linear(terms, constant=const))
    return rows


def _piece_at(pieces: list[tuple[int, pulp.LpVariable | None]], r: int
              ) -> pulp.LpVariable | None:
    """The variable of the piece that applies at rank ``r``."""
    var = None
    for start, v in pieces:
        if start > r:
            break
        var = v
    return var
