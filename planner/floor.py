"""A lower bound on the peak of every plan: the op that needs the most memory by itself.

Whatever a plan keeps or recomputes, every forward op runs in the forward pass and every
executed backward node runs once in the backward, and while a node runs the simulator
(``planner.simulator``) holds at least

* the parameters, buffers and inputs (never freed);
* the node's inputs (they must be present) and its outputs (just made);
* its workspace;
* in the backward: the user outputs (held through it), every gradient an earlier
  backward node returned (a gradient is kept to the end and never made twice), and every
  output gradient or backward value made earlier that a later node reads under every
  variant choice (backward nodes run once, in graph order; the runtime frees an output
  gradient after its last reader, ``runtime.module``).

A site with operator variants counts the option that needs least; a forward op that may
write its value over an input (``planner.in_place``) does not count that input. The
largest of these sums over all nodes is a peak no plan goes below: a budget under it is
infeasible, proven, and the node that sets it says why (often a cuDNN workspace).
"""
from __future__ import annotations

from dataclasses import dataclass

from profiler.ir import FORWARD, Profile

from .budget import format_bytes
from .graph import PlannerGraph
from .in_place import allowed_writes


@dataclass(frozen=True)
class PeakFloor:
    """The peak no plan goes below, and the node that sets it."""

    peak_bytes: int
    node: str  # the node's name ("" for a graph without nodes)
    resident_bytes: int  # parameters, buffers, inputs; in the backward, what it must hold
    operand_bytes: int  # the node's inputs and outputs, beyond the resident bytes
    workspace_bytes: int

    def describe(self) -> str:
        """One line for an error message: what the floor is made of."""
        if not self.node:
            return f"no plan can peak below {format_bytes(self.peak_bytes)}"
        work = f" and a {format_bytes(self.workspace_bytes)} workspace" \
            if self.workspace_bytes else ""
        return (f"no plan can peak below {format_bytes(self.peak_bytes)}: {self.node} needs "
                f"{format_bytes(self.operand_bytes)} of inputs and outputs{work} beside "
                f"{format_bytes(self.resident_bytes)} of parameters, inputs and values it must "
                f"hold")


def peak_floor(profile: Profile, graph: PlannerGraph, variants: str = "all",
               in_place: str = "all") -> PeakFloor:
    """The largest memory any single node needs while it runs, over every node of the
    step: a lower bound on the peak of every plan that uses only ``variants`` and writes
    in place only under ``in_place`` (``planner.graph.VARIANT_MODES``)."""
    constant = sum(graph.storage_bytes[s] for s in graph.constant_storages)
    floors = node_floors(profile, graph, variants, in_place)
    return max(floors.values(), key=lambda f: f.peak_bytes,
               default=PeakFloor(constant, "", constant, 0, 0))


def node_floors(profile: Profile, graph: PlannerGraph, variants: str = "all",
                in_place: str = "all") -> dict[int, PeakFloor]:
    """For every forward op and executed backward node, the memory held while it runs
    (in any of its runs) in every plan under ``variants`` and ``in_place``."""
    nodes, size = graph.nodes, graph.storage_bytes
    constant = set(graph.constant_storages)
    writes = allowed_writes(graph, in_place)
    floors: dict[int, PeakFloor] = {}

    def floor_of(name: str, resident: set[int], operands: set[int], workspace: int,
                 released: int = -1) -> PeakFloor:
        operands = operands - resident
        operands.discard(released)
        held = sum(size[s] for s in resident)
        used = sum(size[s] for s in operands)
        return PeakFloor(held + used + workspace, name, held, used, workspace)

    for o in graph.forward:
        node = nodes[o]
        if node.role != FORWARD or node.is_alias:
            continue
        operands = set(node.storages).union(*(nodes[i].storages for i in node.inputs))
        write = writes.get(o)
        floors[o] = floor_of(node.name, constant, operands, node.workspace_bytes,
                             write.storage if write is not None else -1)
    sites = graph.variant_sites(variants)
    options = {e: [e] + [v.impl for v in sites.get(e, [])] for e in graph.executed}
    reads = {op: set().union(*(nodes[i].storages for i in nodes[op].inputs))
             for ops in options.values() for op in ops}
    last_read = _last_certain_reads(graph, options, reads)
    resident = constant | graph.pinned_storages
    made: set[int] = set(graph.tangent_storages)  # backward storages that exist so far
    for t, e in enumerate(graph.executed):
        site = nodes[e]
        # Made earlier and read later whatever the variants: present while e runs.
        held = resident | {s for s in made if last_read.get(s, -1) > t}
        floors[e] = min((floor_of(site.name, held, set(site.storages) | reads[op],
                                  nodes[op].workspace_bytes) for op in options[e]),
                        key=lambda f: f.peak_bytes)
        # (Forward values are not counted: a plan may free one and recompute it later.)
        made.update(s for s in site.storages if s not in constant
                    and s not in graph.creator)
        if e in graph.grad_nodes:
            resident = resident | set(site.storages)
    return floors


def _last_certain_reads(graph: PlannerGraph, options: dict[int, list[int]],
                        reads: dict[int, set[int]]) -> dict[int, int]:
    """For each storage, the last position in ``graph.executed`` of a node that reads it
    under every variant choice."""
    last: dict[int, int] = {}
    for t, e in enumerate(graph.executed):
        for s in set.intersection(*(reads[op] for op in options[e])):
            last[s] = t
    return last
