"""Where a storage's life begins and ends in a run of nodes (the forward pass, or the
backward's executed nodes): what the memory rows and the writes in place count from."""
from __future__ import annotations

from .graph import PlannerGraph


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
