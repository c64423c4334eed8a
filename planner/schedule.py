"""Turn keep/recompute decisions into a schedule: a list of plain run/free records.

The runtime executes these records and the simulator replays them; neither decides
anything of its own, so what runs is exactly what was planned and simulated.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from profiler.ir import BACKWARD, FORWARD, VARIANT_FORWARD

from .graph import PlannerGraph
from .in_place import allowed_writes, forward_storage_last_use


class ScheduleError(ValueError):
    """Decisions that cannot be executed (a needed tensor is neither kept nor recomputed)."""


class Step(NamedTuple):
    """One record of a schedule: ``run`` a node, or ``free`` the value of a node. A run
    with ``impl`` set runs that variant implementation node and stores its value as
    ``node``. A named tuple, not a frozen dataclass: a search builds millions of them, and
    a frozen dataclass took 2.5x as long to make one (its ``__init__`` sets each field
    through ``object.__setattr__``)."""

    kind: str  # "run" | "free"
    node: int
    stage: int  # -1 for the forward pass
    impl: int = -1
    into: int = -1  # a run in place: the node whose value (dead after it) it overwrites

    @property
    def runs(self) -> int:
        """The node whose operation this step executes."""
        return self.impl if self.impl >= 0 else self.node


@dataclass
class Schedule:
    forward: list[Step] = field(default_factory=list)
    backward: list[Step] = field(default_factory=list)
    variants: dict[int, str] = field(default_factory=dict)  # site -> chosen variant
    saved: list[int] = field(default_factory=list)  # forward nodes held after the forward
    rng_nodes: list[int] = field(default_factory=list)  # random nodes that are recomputed


@dataclass
class Decisions:
    """``keep[k]``: forward storages held at the start of stage k (``keep[0]``: after the
    forward pass). ``recompute[k]``: forward ops run again at the start of stage k.
    ``variants``: the operator variant each site runs (site -> name; absent: original).
    ``in_place``: ``all``, ``exact`` or ``none``: which forward ops write their value over
    an input that is dead after them (``planner.in_place``), wherever the plan lets them."""

    keep: list[set[int]]
    recompute: list[set[int]]
    variants: dict[int, str] = field(default_factory=dict)
    in_place: str = "none"  # which writes in place the plan uses (planner.in_place)


def baseline_decisions(graph: PlannerGraph, variants: dict[int, str] | None = None
                       ) -> Decisions:
    """Keep every needed forward tensor until its last use; recompute nothing."""
    variants = dict(variants or {})
    last: dict[int, int] = {}
    for k in range(len(graph.stages)):
        for s in graph.stage_need_storages(k, variants):
            last[s] = k
    keep = [{s for s, final in last.items() if final >= k} for k in range(len(graph.stages))]
    return Decisions(keep=keep, recompute=[set() for _ in graph.stages], variants=variants)


def all_variants(graph: PlannerGraph, mode: str = "all") -> dict[int, str]:
    """Every site with its first variant allowed by ``mode`` (see PlannerGraph.variant_sites)."""
    return {site: vs[0].name for site, vs in graph.variant_sites(mode).items()}


def build_schedule(graph: PlannerGraph, decisions: Decisions) -> Schedule:
    """The run/free records that carry out ``decisions`` on ``graph``."""
    for schedule, _stage in schedule_by_stage(graph, decisions):
        pass
    return schedule


def schedule_by_stage(graph: PlannerGraph, decisions: Decisions
                      ) -> Iterator[tuple[Schedule, int]]:
    """``build_schedule`` a part at a time: the schedule being built and -1 once its
    forward pass (and ``saved``) is complete, then the same schedule and ``k`` once the
    backward's steps up to the end of stage ``k`` are (a search that rejects a plan at its
    first stage above a peak stops building there)."""
    if len(decisions.keep) != len(graph.stages) or len(decisions.recompute) != len(graph.stages):
        raise ScheduleError(f"decisions for {len(decisions.keep)} stages, graph has "
                            f"{len(graph.stages)}")
    sched = Schedule(variants=dict(decisions.variants))
    nodes = graph.nodes
    impl = {site: graph.variant(site, name) for site, name in decisions.variants.items()}
    packs_run = {v.pack for v in impl.values() if v.pack is not None}

    unfixed, planned = graph.unfixed_table(), graph.planned_table()

    def held(n: int, kept: set[int]) -> bool:
        return unfixed[n] <= kept

    # Forward pass: run in order, free each node after its last forward use unless kept.
    kept0 = decisions.keep[0] if decisions.keep else set()
    writes = allowed_writes(graph, decisions.in_place)
    storage_last = forward_storage_last_use(graph) if writes else {}
    env: set[int] = set()
    for t, n in enumerate(graph.forward):
        if n in graph.packs and n not in packs_run:
            for m in nodes[n].inputs:  # the pack does not run: free what it would have
                if m in env and graph.forward_last_use[m] <= t and not held(m, kept0):
                    env.discard(m)
                    sched.forward.append(Step("free", m, -1))
            continue
        w = writes.get(n)
        over = w is not None and storage_last[w.storage] == t and w.storage not in kept0 \
            and w.input in env
        sched.forward.append(Step("run", n, -1, into=w.input if over else -1))
        env.add(n)
        for m in (*nodes[n].inputs, n):
            if m in env and graph.forward_last_use[m] <= t and not held(m, kept0):
                env.discard(m)
                sched.forward.append(Step("free", m, -1))
    for m in [m for m in graph.forward if m in env]:
        # Tuples are never saved (their getitems are).
        if not held(m, kept0) or m in graph.getitems:
            env.discard(m)
            sched.forward.append(Step("free", m, -1))
    sched.saved = [m for m in graph.forward if m in env]
    yield sched, -1

    # Backward stages.
    frees_after = graph.frees_after()
    rng: set[int] = set()
    steps = sched.backward
    planned_nodes = graph.planned_nodes()
    make = tuple.__new__
    # The per-stage free scans look at these only (all of env was 40 % of a GPT schedule).
    freeable = graph.freeable_nodes()
    # Output gradients are there from the start; each is freed after its last reader.
    tangents = {m for m in graph.tangent_nodes if graph.backward_last_use[m] >= 0}
    for m in graph.tangent_nodes:
        if m not in tangents:
            steps.append(Step("free", m, 0))
    for k, stage in enumerate(graph.stages):
        def ensure(m: int) -> None:
            if m in env or nodes[m].role not in (FORWARD, BACKWARD, VARIANT_FORWARD):
                return
            if nodes[m].is_alias and (nodes[m].role == FORWARD or m in graph.derivable):
                for i in nodes[m].inputs:
                    ensure(i)
                steps.append(Step("run", m, k))
                env.add(m)
                return
            raise ScheduleError(f"stage {k} needs {nodes[m].name}, which is neither kept "
                                "nor recomputed")

        nxt = decisions.keep[k + 1] if k + 1 < len(graph.stages) else set()
        needed = graph.stage_need_storages(k, decisions.variants)
        order = sorted(decisions.recompute[k])
        # recomputed ops allocate new storages
        held_storages = env_storages(graph, env) if order else frozenset()
        reads = [graph.op_inputs(o) for o in order]
        last_reader: dict[int, int] = {}  # storage -> rank of its last recomputed reader
        for rank, inputs in enumerate(reads):
            for s in inputs:
                last_reader[s] = rank
        live = needed | nxt
        made: set[int] = set()  # storages recomputed in this stage
        local: list[int] = []  # nodes added in the recompute phase and still held
        dead: set[int] = set()
        # The loop below runs once per recomputed op (a million times in one peak search):
        # the free scan is inline, which took a quarter of a recompute-heavy U-Net
        # schedule's build through _free_unless, and steps are made as tuples (make), in
        # half the time the named tuple's own constructor takes.
        for rank, o in enumerate(order):
            node = nodes[o]
            if not held_storages.isdisjoint(node.new_storages):
                raise ScheduleError(f"stage {k} recomputes {node.name} while holding it")
            before = len(steps)
            for i in node.inputs:
                if i not in env:
                    ensure(i)
            w = writes.get(o)
            over = w is not None and w.storage in made and last_reader[w.storage] == rank \
                and w.storage not in needed and w.storage not in nxt and w.input in env
            steps.append(make(Step, ("run", o, k, -1, w.input if over else -1)))
            env.add(o)
            if node.random:
                rng.add(o)
            for g in graph.getitems.get(o, ()):
                steps.append(make(Step, ("run", g, k, -1, -1)))
                env.add(g)
            if o in graph.getitems:  # its getitems hold what is used of a tuple
                env.discard(o)
                steps.append(Step("free", o, k))
            local.extend([st.node for st in steps[before:] if st.kind == "run"])
            outputs = planned[o]
            made.update(outputs)
            # Recomputed tensors nobody reads any more in this stage are freed now.
            newly = [s for s in (*reads[rank], *outputs)
                     if s in made and s not in live and last_reader.get(s, -1) <= rank]
            if newly:
                dead.update(newly)
                still: list[int] = []
                for m in local:
                    if m not in env:
                        continue
                    if m in freeable and planned[m] <= dead:
                        env.discard(m)
                        steps.append(make(Step, ("free", m, k, -1, -1)))
                    else:
                        still.append(m)
                local = still
        # Before the backward phase: free what its first node cannot read and is not kept.
        _free_unless(planned, env, sorted(env & freeable), steps, k, live)
        for j, e in enumerate(stage):
            runs = impl[e].impl if e in impl else e
            for i in nodes[runs].inputs:
                ensure(i)
            steps.append(Step("run", e, k, impl=runs if e in impl else -1))
            env.add(e)
            for m, tangent in frees_after[e]:
                holding = tangents if tangent else env
                if m in holding:
                    holding.discard(m)
                    steps.append(Step("free", m, k))
            if j == 0:  # only a stage's first node reads forward tensors
                _free_unless(planned, env, sorted(env & freeable), steps, k, nxt)
        for m in sorted(env & planned_nodes):
            if m in graph.derivable or not held(m, nxt):
                env.discard(m)
                steps.append(Step("free", m, k))
        if k == len(graph.stages) - 1:
            sched.rng_nodes = sorted(rng)
        yield sched, k


def env_storages(graph: PlannerGraph, env: set[int]) -> set[int]:
    """The storages the nodes in ``env`` hold."""
    nodes = graph.nodes
    return set().union(*[nodes[m].storages for m in env])


def _free_unless(planned: list[frozenset[int]], env: set[int], candidates: list[int],
                 steps: list[Step], stage: int, live: set[int]) -> None:
    """Free the ``candidates`` (freeable nodes held in ``env``) none of whose planned
    storages (``planned``, by node: ``PlannerGraph.planned_table``) is in ``live``."""
    for m in candidates:
        if planned[m].isdisjoint(live):
            env.discard(m)
            steps.append(Step("free", m, stage))
