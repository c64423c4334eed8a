"""Backward ops written into a dead input: ``a + b`` becomes ``a.add_(b)``, and a softmax
backward overwrites its incoming gradient.

In the backward pass, the gradients reaching a tensor along several paths (the two
branches of a residual block, a value read twice) are summed by ``aten.add.Tensor``,
which allocates its result while both summands are still alive. Where one summand is a
backward tensor that owns its storage and that nothing else reads, the sum can be
written into it: the step holds one gradient-sized tensor less. Backward nodes run once,
in graph order, so whether a summand is dead is a fact of the graph, not a planning
decision; the rewrite is applied at capture wherever it holds. IEEE addition is
commutative, so ``b.add_(a)`` is bit-identical to ``a + b``.

The same holds for ``aten._log_softmax_backward_data`` and ``aten._softmax_backward_data``
over the last dimension: their incoming gradient is usually a backward tensor with no other
reader (``nll_loss_backward``'s output in a cross-entropy), and rows are independent, so
``variant_ops.softmax_backward_into`` computes the result a chunk of rows at a time into it.

A cross-entropy's backward goes further: ``nll_loss_backward`` followed by the
log-softmax backward reads the forward's log-softmax and nothing later does, so
``variant_ops.cross_entropy_backward_into`` computes both, a chunk of rows at a time, into
the log-softmax's own storage: the logits' gradient then takes the place of a forward
tensor (``writes_into`` names it), which the planner counts as a backward tensor from there.

The forward pass's residual additions are not rewritten here: whether their inputs are
dead depends on what the plan keeps and recomputes, so the planner writes them in place
where its plan lets it (``planner.in_place``).
"""
from __future__ import annotations

import logging
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from . import variant_ops as ops
from .variants import call_before

log = logging.getLogger(__name__)
aten = torch.ops.aten

INPLACE_META = "monet_inplace"  # the input node whose storage a node writes into
# The fake value of the node an in-place node replaced: users traced before the rewrite
# (views of the result) reference its storage, which is the written input's storage now.
INPLACE_REPLACED = "monet_inplace_replaced"


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
    return next((arg for arg in node.args if _dead_input(node, arg, forward)), None)


def _dead_input(node: fx.Node, arg: object, forward: set[fx.Node]) -> bool:
    """``arg`` is a backward tensor that owns its storage, is read only by ``node``, and
    has ``node``'s shape, dtype and strides: ``node`` may write its result into it."""
    out = node.meta.get("val")
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return isinstance(val, torch.Tensor) and isinstance(out, torch.Tensor) \
        and arg not in forward and len(arg.users) == 1 and INPLACE_META not in arg.meta \
        and _owns_storage(arg, val) and val.shape == out.shape and val.dtype == out.dtype \
        and val.stride() == out.stride()


_SOFTMAX_BACKWARD = {aten._log_softmax_backward_data.default: True,
                     aten._softmax_backward_data.default: False}
SOFTMAX_CHUNK_BYTES = 64 * 2**20  # the most one chunk of the result holds


def _softmax_into_args(node: fx.Node, forward: set[fx.Node]) -> tuple[tuple, int] | None:
    """The ``softmax_backward_into`` arguments for a softmax backward over the last
    dimension of contiguous tensors whose incoming gradient is dead, and the bytes of the
    chunk it computes at a time; else None."""
    if node.op != "call_function" or node.target not in _SOFTMAX_BACKWARD or node in forward:
        return None
    grad, out, dim, input_dtype = node.args
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0 or \
            dim not in (-1, val.dim() - 1) or not val.is_contiguous() or \
            not isinstance(out, fx.Node) or not out.meta["val"].is_contiguous() or \
            not _dead_input(node, grad, forward):
        return None
    rows, chunk_bytes = _row_chunks(val)
    return (grad, out, -1, input_dtype, _SOFTMAX_BACKWARD[node.target], rows), chunk_bytes


def _row_chunks(val: torch.Tensor) -> tuple[int, int]:
    """Rows of ``val``'s last dimension per chunk of at most ``SOFTMAX_CHUNK_BYTES`` (one
    row at least), and the bytes of the largest chunk."""
    row_bytes = val.shape[-1] * val.element_size()
    rows = max(1, SOFTMAX_CHUNK_BYTES // row_bytes)
    return rows, min(rows, val.numel() // val.shape[-1]) * row_bytes


def _same_storage(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and \
        StorageWeakRef(va.untyped_storage()) == StorageWeakRef(vb.untyped_storage())


def _storage_root(node: fx.Node) -> fx.Node:
    """The node whose value ``node``'s value is an alias chain (detach, view) of."""
    while node.op == "call_function" and node.all_input_nodes and \
            _same_storage(node, node.all_input_nodes[0]):
        node = node.all_input_nodes[0]
    return node


def _read_only_by(root: fx.Node, readers: set[fx.Node], forward: set[fx.Node]) -> bool:
    """No backward node outside ``readers`` reads ``root``'s storage (directly or through
    an alias), and no graph output holds it."""
    stack, seen = [root], {root}
    while stack:
        for user in stack.pop().users:
            if user in seen or user in readers:
                continue
            if user.op != "output" and _same_storage(user, root):
                seen.add(user)
                stack.append(user)
            elif user not in forward or user.op == "output":
                return False
    return True


def _cross_entropy_into_args(node: fx.Node, forward: set[fx.Node]
                             ) -> tuple[tuple, fx.Node, int] | None:
    """For a log-softmax backward whose incoming gradient is a dead ``nll_loss_backward``
    over the same 2-D log-softmax, which nothing later reads: the
    ``cross_entropy_backward_into`` arguments, the log-softmax node and the bytes of one
    chunk; else None."""
    if node.op != "call_function" or node.target is not aten._log_softmax_backward_data.default \
            or node in forward or node.kwargs:
        return None
    nll, out, dim, input_dtype = node.args
    if not isinstance(nll, fx.Node) or nll.target is not aten.nll_loss_backward.default or \
            nll.kwargs or len(nll.args) != 7 or len(nll.users) != 1 or \
            not isinstance(out, fx.Node) or not isinstance(nll.args[1], fx.Node):
        return None
    root = _storage_root(out)
    val, log_probs = node.meta.get("val"), root.meta.get("val")
    if root not in forward or _storage_root(nll.args[1]) is not root or \
            not isinstance(val, torch.Tensor) or val.dim() != 2 or dim not in (-1, 1) or \
            not isinstance(log_probs, torch.Tensor) or not _owns_storage(root, log_probs) or \
            (val.shape, val.dtype, val.stride()) != \
            (log_probs.shape, log_probs.dtype, log_probs.stride()) or \
            not val.is_contiguous() or not _read_only_by(root, {node, nll}, forward):
        return None
    grad_loss, _self, target, weight, reduction, ignore_index, total_weight = nll.args
    rows, chunk_bytes = _row_chunks(val)
    args = (grad_loss, root, target, weight, reduction, ignore_index, total_weight,
            input_dtype, rows)
    return args, root, chunk_bytes


def cross_entropy_backward_in_place(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Rewrite every cross-entropy backward (``nll_loss_backward`` then the log-softmax
    backward) whose log-softmax is dead after it into
    ``variant_ops.cross_entropy_backward_into``. Returns the count."""
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        found = _cross_entropy_into_args(node, forward)
        if found is None:
            continue
        args, root, chunk_bytes = found
        nll = node.args[0]
        new = _write_in_place(graph, node, ops.cross_entropy_backward_into, args, root)
        graph.erase_node(nll)
        new.meta["monet_workspace"] = 2 * chunk_bytes  # the two kernels' chunks
        count += 1
    if count:
        gm.recompile()
    log.info("%d cross-entropy backward nodes write into their dead log-softmax", count)
    return count


def _write_in_place(graph: fx.Graph, node: fx.Node, fn: Callable[..., Any], args: tuple,
                    dead: fx.Node) -> fx.Node:
    """Replace ``node`` by ``fn(*args)``, which writes its result into ``dead``'s storage."""
    new = call_before(graph, node, fn, args)
    new.meta[INPLACE_META] = dead
    new.meta[INPLACE_REPLACED] = node.meta["val"]
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


def softmax_backward_in_place(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Rewrite every softmax or log-softmax backward whose incoming gradient is dead into
    ``variant_ops.softmax_backward_into``. Returns the count."""
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        found = _softmax_into_args(node, forward)
        if found is None:
            continue
        args, chunk_bytes = found
        new = _write_in_place(graph, node, ops.softmax_backward_into, args, args[0])
        new.meta["monet_workspace"] = chunk_bytes
        count += 1
    if count:
        gm.recompile()
    log.info("%d softmax backward nodes write into their dead incoming gradient", count)
    return count


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
        _write_in_place(graph, node, ops.add_into, (dead, other), dead)
        count += 1
    if count:
        gm.recompile()
    log.info("%d backward additions write into a dead summand", count)
    return count
