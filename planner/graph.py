"""The planner's view of a joint graph: forward ops, backward stages and what each needs.

Definitions (shared by the formulation, the schedule builder and the runtime):

* *constant* storages belong to parameters, buffers and inputs; *pinned* storages are the
  model's outputs (the user holds them through the backward) and the output gradients
  (tangents) during the backward. Neither is ever planned.
* a *forward storage* is allocated by a forward node; keeping it across stages or
  recomputing its creator are the decisions to plan.
* an *alias* node (view, getitem, detach) allocates nothing and is re-derived for free from
  its inputs whenever it is needed and not held.
* a backward alias node whose inputs are forward or constant nodes is *derivable*: it runs
  on demand inside the stage that needs it. All other backward nodes are *executed* in
  graph order.
* a new *stage* starts at every executed backward node that needs a forward node. In a
  stage the planner's forward tensors (held and recomputed) stay live from its start to
  its end, when those not kept for the next stage are freed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from profiler.ir import BACKWARD, CONSTANT_ROLES, FORWARD, TANGENT, NodeRecord, OutputRecord

END = 1 << 60  # a position after every other
GETITEM = "<built-in function getitem>"


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

    @classmethod
    def build(cls, nodes: list[NodeRecord], storage_bytes: dict[int, int],
              outputs: list[OutputRecord]) -> "PlannerGraph":
        g = cls(nodes=nodes, storage_bytes=storage_bytes, outputs=outputs)
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
            elif n.role == FORWARD:
                self.forward.append(n.index)
                if n.target == GETITEM:
                    self.getitems.setdefault(n.inputs[0], []).append(n.index)
                for s in n.new_storages:
                    self.creator[s] = n.index
        # Getitems run right after their op, wherever the graph placed them.
        self.forward.sort(key=lambda i: (self.nodes[i].inputs[0], i)
                          if self.nodes[i].target == GETITEM else (i, -1))
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

    def forward_needs_of(self, index: int) -> set[int]:
        """Forward nodes a backward node reads, directly or through derivable aliases."""
        needs: set[int] = set()
        stack = list(self.nodes[index].inputs)
        while stack:
            i = stack.pop()
            if i in self.derivable:
                stack.extend(self.nodes[i].inputs)
            elif self.nodes[i].role == FORWARD and self.planned_storages(i):
                needs.add(i)
        return needs

    def _stage(self) -> None:
        for e in self.executed:
            needs = self.forward_needs_of(e)
            if needs or not self.stages:
                self.stages.append([])
                self.stage_needs.append(set())
            self.stages[-1].append(e)
            self.stage_needs[-1] |= needs

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

    # ----------------------------------------------------------------------- queries
    def planned_storages(self, index: int) -> set[int]:
        """Storages of a node that the planner decides about (not constant, not pinned)."""
        return {s for s in self.nodes[index].storages if s in self.creator
                and s not in self.pinned_storages}

    def ops(self) -> list[int]:
        """Forward nodes that allocate planned storages: the ones that can be recomputed."""
        return [n for n in self.forward if not self.nodes[n].is_alias
                and any(s not in self.pinned_storages for s in self.nodes[n].new_storages)]

    def new_bytes(self, index: int) -> int:
        return sum(self.storage_bytes[s] for s in self.nodes[index].new_storages)

    def forward_dag(self) -> nx.DiGraph:
        dag = nx.DiGraph()
        dag.add_nodes_from(self.forward)
        fwd = set(self.forward)
        for n in self.forward:
            dag.add_edges_from((i, n) for i in self.nodes[n].inputs if i in fwd)
        return dag

    def op_inputs(self, index: int) -> set[int]:
        """Planned storages a forward op reads."""
        out: set[int] = set()
        for i in self.nodes[index].inputs:
            out |= self.planned_storages(i)
        return out

    def stage_need_storages(self, k: int) -> set[int]:
        out: set[int] = set()
        for n in self.stage_needs[k]:
            out |= self.planned_storages(n)
        return out
