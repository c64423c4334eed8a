"""Which element-wise ATen ops have an ``out=`` overload.

The planner lets such an op write its value over a dead input (``planner.in_place``). The
answer needs torch's op registry, so the profiler records it in the profile
(``Profile.pointwise_out``) and the planner's processes decide without importing torch.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable

from .ir import FORWARD, NodeRecord


@functools.lru_cache(maxsize=None)
def pointwise_out_overload(target: str) -> Any:
    """The ``out=`` overload of an element-wise ATen op named ``target`` (same arguments
    plus one ``out``), or None when it is not one (or is a seeded random op)."""
    import torch

    parts = target.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    packet = getattr(torch.ops.aten, parts[1], None)
    op = getattr(packet, parts[2], None) if packet is not None else None
    if op is None or torch.Tag.pointwise not in op.tags or torch.Tag.nondeterministic_seeded \
            in op.tags:
        return None
    want = [(a.name, str(a.type)) for a in op._schema.arguments]
    for name in packet.overloads():
        candidate = getattr(packet, name)
        args = candidate._schema.arguments
        outs = [a for a in args if a.is_out]
        if len(outs) == 1 and [(a.name, str(a.type)) for a in args if not a.is_out] == want:
            return candidate
    return None


def pointwise_out_table(nodes: Iterable[NodeRecord]) -> dict[str, bool]:
    """For each forward target among ``nodes`` (sorted, once): whether it has an
    element-wise ``out=`` overload. What ``Profile.pointwise_out`` holds."""
    targets = {n.target for n in nodes if n.role == FORWARD}
    return {t: pointwise_out_overload(t) is not None for t in sorted(targets)}
