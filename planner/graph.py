"""The planner's view of a joint graph: forward ops, backward stages and what each needs.

Definitions (shared by the formulation, the schedule builder and the runtime):

* *constant* storages belong to parameters, buffers and inputs; *pinned* storages are the
  model's outputs (the user holds them through the backward). The output gradients
  (tangents) are there when the backward starts and are freed after their last reader.
  None of them is ever planned.
* a *forward storage* is allocated by a forward node; keeping it across stages or
  recomputing its creator are the decisions to plan.
* an *alias* node (view, getitem, detach) allocates nothing and is re-derived for free from
  its inputs whenever it is needed and not held.
* a backward alias node whose inputs are forward or constant nodes is *derivable*: it runs
  on demand inside the stage that needs it. All other backward nodes are *executed* in
  graph order.
* a new *stage* starts at every executed backward node that needs a forward node, so only
  a stage's first node reads forward tensors. A stage runs in two phases. The *recompute
  phase* runs the stage's recomputed ops in graph order; a recomputed tensor that the
  stage's first node cannot read (under any variant choice) and that is not kept for the
  next stage is freed right after the last recomputed op that reads it. The *backward
  phase* runs the stage's executed nodes; before its first node, held tensors it cannot
  read and that are not kept for the next stage are freed, and after it every forward
  tensor not kept for the next stage.
* a *site* is an executed backward node with operator variants (``profiler.variants``).
  A chosen variant runs its implementation node instead of the site, producing the site's
  value, and its pack node (if any) runs in the forward pass right after the value it
  reads; the pack's output is kept until the site's stage. What a stage needs therefore
  depends on the variants chosen: ``stage_needs`` holds the needs with the original
  implementations, ``needs_of_choice`` those of every option.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from profiler.ir import (
    BACKWARD,
    CONSTANT_ROLES,
    FORWARD,
    TANGENT,
    VARIANT_BACKWARD,
    VARIANT_FORWARD,
    NodeRecord,
    OutputRecord,
)
from profiler.variant_names import EXACT_VARIANTS

END = 1 << 60  # a position after every other
GETITEM = "<built-in function getitem>"
FORWARD_ROLES = (FORWARD, VARIANT_FORWARD)
VARIANT_MODES = ("all", "exact", "none")


@dataclass(frozen=True)
class Variant:
    """One operator variant of a site: its implementation node and its pack node."""

    name: str
    site: int
    impl: int
    pack: int | None


@dataclass
class PlannerGraph:
    """Forward ops, backward stages and liveness facts derived from a profile's records."""

    nodes: list[NodeRecord]
    storage_bytes: dict[int, int]
    outputs: list[OutputRecord]
    forward: list[int] = field(default_factory=list)
    executed: list[int] = field(default_factory=list)
    derivable: set[int] = field(default_factory=set)
    constant_nodes: list[int] = field(default_factory=list)
    tangent_nodes: list[int] = field(default_factory=list)
    constant_storages: set[int] = field(default_factory=set)
    pinned_storages: set[int] = field(default_factory=set)  # user outputs
    tangent_storages: set[int] = field(default_factory=set)
    grad_nodes: set[int] = field(default_factory=set)
    mutation_nodes: set[int] = field(default_factory=set)
    user_output_nodes: list[int] = field(default_factory=list)
    creator: dict[int, int] = field(default_factory=dict)  # forward storage -> forward node
    stages: list[list[int]] = field(default_factory=list)  # executed nodes of each stage
    stage_needs: list[set[int]] = field(default_factory=list)  # forward nodes needed
    getitems: dict[int, list[int]] = field(default_factory=dict)  # tuple op -> its getitems
    forward_last_use: dict[int, int] = field(default_factory=dict)  # node -> forward position
    backward_last_use: dict[int, int] = field(default_factory=dict)  # node -> executed position
    variants: dict[int, list[Variant]] = field(default_factory=dict)  # site -> its variants
    packs: dict[int, list[Variant]] = field(default_factory=dict)  # pack node -> variants
    site_stage: dict[int, int] = field(default_factory=dict)
    # (executed node, variant name or "" for the original) -> forward nodes it reads
    needs_of_choice: dict[tuple[int, str], set[int]] = field(default_factory=dict)
    stage_needs_any: list[set[int]] = field(default_factory=list)  # under any choice
    # Forward target -> whether it has an element-wise out= overload (Profile.pointwise_out);
    # a target not in it is asked of torch (planner.in_place).
    pointwise_out: dict[str, bool] = field(default_factory=dict)
    _need_any_cache: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _op_inputs_cache: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)
    _freeable: frozenset[int] | None = field(default=None, repr=False)
    _planned_table: list[frozenset[int]] | None = field(default=None, repr=False)
    _unfixed_table: list[frozenset[int]] | None = field(default=None, repr=False)
    _planned_nodes: frozenset[int] | None = field(default=None, repr=False)
    _frees_after: dict[int, tuple[tuple[int, bool], ...]] | None = \
        field(default=None, repr=False)

    @classmethod
    def build(cls, nodes: list[NodeRecord], storage_bytes: dict[int, int],
              outputs: list[OutputRecord], pointwise_out: dict[str, bool] | None = None
              ) -> "PlannerGraph":
        g = cls(nodes=nodes, storage_bytes=storage_bytes, outputs=outputs,
                pointwise_out=dict(pointwise_out or {}))
        g._classify()
        g._stage()
        g._liveness()
        return g

    # ----------------------------------------------------------------------- building
    def _classify(self) -> None:
        for n in self.nodes:
            if n.role in CONSTANT_ROLES:
                self.constant_nodes.append(n.index)
                self.constant_storages.update(n.storages)
            elif n.role == TANGENT:
                self.tangent_nodes.append(n.index)
                self.tangent_storages.update(n.storages)
            elif n.role in FORWARD_ROLES:
                if n.role == FORWARD:
                    self.forward.append(n.index)
                if n.target == GETITEM:
                    self.getitems.setdefault(n.inputs[0], []).append(n.index)
                for s in n.new_storages:
                    self.creator[s] = n.index
        # Getitems run right after their op, wherever the graph placed them.
        self.forward.sort(key=lambda i: (self.nodes[i].inputs[0], i)
                          if self.nodes[i].target == GETITEM else (i, -1))
        self._place_variants()
        for o in self.outputs:
            if o.kind == "user":
                self.user_output_nodes.append(o.node)
                self.pinned_storages.update(self.nodes[o.node].storages)
            elif o.kind == "mutation":
                self.mutation_nodes.add(o.node)
            else:
                self.grad_nodes.add(o.node)
        self.pinned_storages -= self.constant_storages
        for n in self.nodes:
            if n.role != BACKWARD:
                continue
            if n.is_alias and n.index not in self.grad_nodes and all(
                    self.nodes[i].role in (FORWARD, *CONSTANT_ROLES) or i in self.derivable
                    for i in n.inputs):
                self.derivable.add(n.index)
            else:
                self.executed.append(n.index)

    def _place_variants(self) -> None:
        """Register variants and put each pack node right after the last value it reads."""
        packs = {n.site: n.index for n in self.nodes if n.role == VARIANT_FORWARD}
        for n in self.nodes:
            if n.role == VARIANT_BACKWARD:
                v = Variant(n.variant, n.site, n.index, packs.get(n.site))
                self.variants.setdefault(n.site, []).append(v)
                if v.pack is not None:
                    self.packs.setdefault(v.pack, []).append(v)
        for p in sorted(self.packs):
            pos = {m: t for t, m in enumerate(self.forward)}
            after = max(pos[i] for i in self.nodes[p].inputs if i in pos)
            self.forward.insert(after + 1, p)

    def forward_needs_of(self, index: int) -> set[int]:
        """Forward nodes a backward node reads, directly or through derivable aliases."""
        needs: set[int] = set()
        stack = list(self.nodes[index].inputs)
        while stack:
            i = stack.pop()
            if i in self.derivable:
                stack.extend(self.nodes[i].inputs)
            elif self.nodes[i].role in FORWARD_ROLES and self.planned_storages(i):
                needs.add(i)
        return needs

    def _stage(self) -> None:
        for e in self.executed:
            needs = self.forward_needs_of(e)
            options = [needs]
            for v in self.variants.get(e, []):
                self.needs_of_choice[e, v.name] = self.forward_needs_of(v.impl)
                options.append(self.needs_of_choice[e, v.name])
            if any(options) or not self.stages:
                self.stages.append([])
                self.stage_needs.append(set())
                self.stage_needs_any.append(set())
            self.stages[-1].append(e)
            self.stage_needs[-1] |= needs
            for o in options:
                self.stage_needs_any[-1] |= o
            self.needs_of_choice[e, ""] = needs
            if e in self.variants:
                self.site_stage[e] = len(self.stages) - 1

    def _liveness(self) -> None:
        pos = {n: t for t, n in enumerate(self.forward)}
        for n in self.forward:
            self.forward_last_use[n] = pos[n]
        for n in self.forward:
            for i in self.nodes[n].inputs:
                if i in pos:
                    self.forward_last_use[i] = max(self.forward_last_use[i], pos[n])
        for o in self.outputs:
            if o.kind in ("user", "mutation"):
                self.forward_last_use[o.node] = END
        bpos = {n: t for t, n in enumerate(self.executed)}
        for n in self.executed:
            self.backward_last_use[n] = bpos[n]
            for i in self.nodes[n].inputs:
                if i in bpos:
                    self.backward_last_use[i] = max(self.backward_last_use[i], bpos[n])
        for n in self.grad_nodes:
            if n in bpos:
                self.backward_last_use[n] = END
        # Output gradients (tangents) exist from the backward's start until their last
        # reader (-1: none reads them), where the runtime frees them (runtime.module).
        tangents = set(self.tangent_nodes)
        for n in tangents:
            self.backward_last_use[n] = -1
        for n in self.executed:
            for i in self.nodes[n].inputs:
                if i in tangents:
                    self.backward_last_use[i] = max(self.backward_last_use[i], bpos[n])
        for n in tangents & self.grad_nodes:  # returned as a gradient itself
            self.backward_last_use[n] = END

    # ----------------------------------------------------------------------- queries
    def planned_storages(self, index: int) -> frozenset[int]:
        """Storages of a node that the planner decides about (not constant, not pinned).
        Read from ``planned_table``: asked millions of times while schedules are built, and
        fixed once ``_classify`` has run."""
        return self.planned_table()[index]

    def ops(self) -> list[int]:
        """Forward nodes that allocate planned storages: the ones that can be recomputed
        (pack nodes are not: they run in the forward pass or not at all; nor is an op with
        a user output among its outputs, e.g. a max pool whose values are returned and
        whose indices are not: re-running it would allocate the held output again)."""
        return [n for n in self.forward if not self.nodes[n].is_alias
                and self.nodes[n].role == FORWARD and self.nodes[n].new_storages
                and all(s not in self.pinned_storages for s in self.nodes[n].new_storages)]

    def new_bytes(self, index: int) -> int:
        return sum(self.storage_bytes[s] for s in self.nodes[index].new_storages)

    def forward_dag(self) -> nx.DiGraph:
        dag = nx.DiGraph()
        dag.add_nodes_from(self.forward)
        fwd = set(self.forward)
        for n in self.forward:
            dag.add_edges_from((i, n) for i in self.nodes[n].inputs if i in fwd)
        return dag

    def freeable_nodes(self) -> frozenset[int]:
        """Forward (and derivable) nodes with planned storages: the ones a schedule frees
        when what it plans no longer needs them (cached)."""
        if self._freeable is None:
            self._freeable = frozenset(
                n.index for n in self.nodes
                if (n.role in FORWARD_ROLES or n.index in self.derivable)
                and self.planned_storages(n.index))
        return self._freeable

    def planned_table(self) -> list[frozenset[int]]:
        """``planned_storages`` of every node, by index (cached): a list indexed in the
        schedule builder's per-stage loops, where a method call per node and stage took a
        fifth of a search's time."""
        if self._planned_table is None:
            self._planned_table = [
                frozenset(s for s in n.storages if s in self.creator
                          and s not in self.pinned_storages) for n in self.nodes]
        return self._planned_table

    def planned_nodes(self) -> frozenset[int]:
        """Forward and derivable nodes (cached): the ones a schedule frees at the end of a
        stage unless the next stage keeps them."""
        if self._planned_nodes is None:
            self._planned_nodes = frozenset(
                n.index for n in self.nodes if n.role in FORWARD_ROLES) | self.derivable
        return self._planned_nodes

    def unfixed_table(self) -> list[frozenset[int]]:
        """``unfixed_storages`` of every node, by index (cached), as ``planned_table``."""
        if self._unfixed_table is None:
            self._unfixed_table = [
                frozenset(s for s in n.storages if s not in self.constant_storages
                          and s not in self.pinned_storages) for n in self.nodes]
        return self._unfixed_table

    def frees_after(self) -> dict[int, tuple[tuple[int, bool], ...]]:
        """Per executed node e (cached), in the order of e's inputs and then e: the backward
        nodes whose last backward use e is, and the output gradients (tangents) whose last
        reader it is, each with whether it is a tangent; a schedule frees them (those it
        still holds) once e has run."""
        if self._frees_after is None:
            bpos = {n: t for t, n in enumerate(self.executed)}
            tangents = set(self.tangent_nodes)
            last = self.backward_last_use
            self._frees_after = {}
            for e in self.executed:
                mine = (*self.nodes[e].inputs, e)
                self._frees_after[e] = tuple(
                    (m, m not in bpos) for m in mine if (m in bpos or m in tangents)
                    and last[m] <= bpos[e])
        return self._frees_after

    def unfixed_storages(self, index: int) -> frozenset[int]:
        """Storages of a node that are neither constant nor pinned (``unfixed_table``): the
        node is held exactly when these are."""
        return self.unfixed_table()[index]

    def op_inputs(self, index: int) -> frozenset[int]:
        """Planned storages a forward op reads (cached)."""
        cached = self._op_inputs_cache.get(index)
        if cached is None:
            cached = frozenset().union(*(self.planned_storages(i)
                                         for i in self.nodes[index].inputs))
            self._op_inputs_cache[index] = cached
        return cached

    def planned_needs(self, e: int, variant: str = "") -> set[int]:
        """Planned storages executed node ``e`` reads when it runs ``variant`` ("" for the
        original implementation)."""
        out: set[int] = set()
        for n in self.needs_of_choice[e, variant]:
            out |= self.planned_storages(n)
        return out

    def stage_need_storages_any(self, k: int) -> set[int]:
        """Planned storages stage k may read under any variant choice (what the schedule
        keeps live until the stage's first node has run)."""
        cached = self._need_any_cache.get(k)
        if cached is None:
            cached = set()
            for n in self.stage_needs_any[k]:
                cached |= self.planned_storages(n)
            self._need_any_cache[k] = cached
        return cached

    def stage_need_storages(self, k: int, variants: dict[int, str] | None = None) -> set[int]:
        """Planned storages stage k reads, with the ``variants`` chosen (site -> name)."""
        if not variants:
            needs = self.stage_needs[k]
        else:
            needs = set()
            for e in self.stages[k]:
                needs |= self.needs_of_choice[e, variants.get(e, "")]
        out: set[int] = set()
        for n in needs:
            out |= self.planned_storages(n)
        return out

    def stage_hard_needs(self, k: int, sites: dict[int, list[Variant]]) -> set[int]:
        """Planned storages stage k reads whichever of ``sites``' options (site -> its
        variants) run: a need every plan of the stage MILP meets."""
        always: set[int] = set()
        for e in self.stages[k]:
            if e in sites:
                options = [self.needs_of_choice[e, ""]] + \
                    [self.needs_of_choice[e, v.name] for v in sites[e]]
                always |= set.intersection(*map(set, options))
            else:
                always |= self.needs_of_choice[e, ""]
        out: set[int] = set()
        for n in always:
            out |= self.planned_storages(n)
        return out

    def variant_sites(self, mode: str = "all") -> dict[int, list[Variant]]:
        """The variants a plan may use: ``all``, only the ``exact`` ones (bit-identical
        gradients), or ``none``."""
        if mode not in VARIANT_MODES:
            raise ValueError(f"variants must be one of {', '.join(VARIANT_MODES)}, not {mode!r}")
        if mode == "none":
            return {}
        out = {}
        for site, vs in self.variants.items():
            allowed = [v for v in vs if mode == "all" or v.name in EXACT_VARIANTS]
            if allowed:
                out[site] = allowed
        return out

    def variant(self, site: int, name: str) -> Variant:
        for v in self.variants.get(site, []):
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r} for node {self.nodes[site].name}")
