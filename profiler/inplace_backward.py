"""Backward additions written into a dead input: ``a + b`` becomes ``a.add_(b)``.

In the backward pass, the gradients reaching a tensor along several paths (the two
branches of a residual block, a value read twice) are summed by ``aten.add.Tensor``,
which allocates its result while both summands are still alive. Where one summand is a
backward tensor that owns its storage and that nothing else reads, the sum can be
written into it: the step holds one gradient-sized tensor less. Backward nodes run once,
in graph order, so whether a summand is dead is a fact of the graph, not a planning
decision; the rewrite is applied at capture wherever it holds. IEEE addition is
commutative, so ``b.add_(a)`` is bit-identical to ``a + b``.

The forward pass's residual additions are not rewritten: whether their inputs are dead
depends on what the plan keeps and recomputes.
"""
from __future__ import annotations

import logging
import operator

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from . import variant_ops as ops
from .variants import call_before

log = logging.getLogger(__name__)
aten = torch.ops.aten

INPLACE_META = "monet_inplace"  # the input node whose storage a node writes into


def _owns_storage(node: fx.Node, val: torch.Tensor) -> bool:
    """``node`` allocated ``val``'s storage, all of it: not a view of an input's value."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    ref = StorageWeakRef(val.untyped_storage())
    for inp in node.all_input_nodes:
        ivals = inp.meta.get("val")
        ivals = ivals if isinstance(ivals, (tuple, list)) else [ivals]
        if any(isinstance(v, torch.Tensor) and StorageWeakRef(v.untyped_storage()) == ref
               for v in ivals):
            return False
    return val.untyped_storage().nbytes() == val.numel() * val.element_size()


def _dead_summand(node: fx.Node, forward: set[fx.Node]) -> fx.Node | None:
    if node.op != "call_function" or node.target is not aten.add.Tensor or node in forward \
            or node.kwargs or len(node.args) != 2:
        return None
    out = node.meta.get("val")
    for arg in node.args:
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        if isinstance(val, torch.Tensor) and arg not in forward and len(arg.users) == 1 \
                and INPLACE_META not in arg.meta and _owns_storage(arg, val) \
                and val.shape == out.shape and val.dtype == out.dtype \
                and val.stride() == out.stride():
            return arg
    return None


def add_backward_in_place(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Rewrite every backward ``aten.add.Tensor`` with a dead, storage-owning summand of
    the result's shape, dtype and strides into ``variant_ops.add_into``. Returns the count."""
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        dead = _dead_summand(node, forward)
        if dead is None:
            continue
        other = node.args[1] if node.args[0] is dead else node.args[0]
        new = call_before(graph, node, ops.add_into, (dead, other))
        new.meta[INPLACE_META] = dead
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    if count:
        gm.recompile()
    log.info("%d backward additions write into a dead summand", count)
    return count
