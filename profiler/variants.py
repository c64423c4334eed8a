"""Operator implementation variants: graph rewrites that give a backward node a second
implementation which keeps less of the forward pass.

Every variant is registered once (``RULES``) with the backward op it applies to, what it
keeps instead, and a rewrite that inserts into the joint graph

* optionally a *pack* node, run in the forward pass right after the value it reads, that
  computes the compact tensor the variant keeps (a 1-bit mask, 1-byte argmax offsets), and
* an *implementation* node: the backward computation that runs instead of the original
  node and produces the same value (see ``profiler.variant_ops``).

The inserted nodes carry ``node.meta["monet_variant"]`` and are unused in the graph: they
run only where a plan chooses the variant. Every variant is lossless: its gradients equal
the original's where the arithmetic is the same (masks, pooling) and within float rounding
where the input is reconstructed from the output (batch and layer norm).
"""
from __future__ import annotations

import contextlib
import logging
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from . import variant_ops as ops

log = logging.getLogger(__name__)
aten = torch.ops.aten

VARIANT_META = "monet_variant"


@dataclass(frozen=True)
class Rewrite:
    """What a rule inserts for one site: the pack call (function, args) or None, and the
    implementation call with the temporary bytes it allocates beyond its outputs."""

    pack: tuple[Callable[..., Any], tuple[Any, ...]] | None
    impl: tuple[Callable[..., Any], tuple[Any, ...]]
    workspace_bytes: int


@dataclass(frozen=True)
class VariantRule:
    """One registered variant: the backward op it replaces and how to rewrite a site."""

    name: str
    backward_op: Any
    keeps: str
    rewrite: Callable[[fx.Node, set[fx.Node]], Rewrite | None]
    exact: bool = True  # same arithmetic as the original: bit-identical gradients


def _val(node: Any) -> torch.Tensor:
    return node.meta["val"]


def _numel(node: Any) -> int:
    return _val(node).numel()


def _nbytes(node: Any) -> int:
    v = _val(node)
    return v.numel() * v.element_size()


def _unpack_workspace(numel: int) -> int:
    """Temporary bytes of unpacking a 1-bit mask of ``numel`` elements: the expanded bytes
    and the boolean mask (see ``variant_ops.unpack_bits``)."""
    return 2 * numel


def _base(node: Any) -> Any:
    """The node a chain of detaches starts from."""
    while isinstance(node, fx.Node) and node.target is aten.detach.default:
        node = node.args[0]
    return node


def _getitem_of(node: Any, index: int) -> fx.Node | None:
    """The ``getitem(node, index)`` user of a multi-output node, if the graph has one."""
    for user in node.users:
        if user.target is operator.getitem and user.args[1] == index:
            return user
    return None


def _relu_mask(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, out, threshold = site.args
    out = _base(out)
    if threshold != 0 or out not in forward:
        return None
    return Rewrite(pack=(ops.relu_mask, (out,)),
                   impl=(ops.relu_backward_from_mask, (grad, None)),
                   workspace_bytes=_unpack_workspace(_numel(out)))


def _hardtanh_mask(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, x, lo, hi = site.args
    x = _base(x)
    if x not in forward:
        return None
    return Rewrite(pack=(ops.hardtanh_mask, (x, lo, hi)),
                   impl=(ops.hardtanh_backward_from_mask, (grad, None)),
                   workspace_bytes=_unpack_workspace(_numel(x)))


def _dropout_bits(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, mask, scale = site.args
    mask = _base(mask)
    if mask not in forward:
        return None
    return Rewrite(pack=(ops.dropout_mask, (mask,)),
                   impl=(ops.dropout_backward_from_bits, (grad, None, scale)),
                   workspace_bytes=_unpack_workspace(_numel(mask)))


def _forward_norm(stat: Any, forward: set[fx.Node]) -> tuple[fx.Node, fx.Node] | None:
    """The forward norm node whose saved statistic is ``stat``, and its output getitem."""
    stat = _base(stat)
    if not isinstance(stat, fx.Node) or stat not in forward or len(stat.args) < 2:
        return None
    norm = stat.args[0]
    if not isinstance(norm, fx.Node):
        return None
    out = _getitem_of(norm, 0)
    if out is None or out not in forward:
        return None
    return norm, out


def _batch_norm_from_output(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, x, weight, rmean, rvar, smean, sinvstd, train, eps, mask = site.args
    found = _forward_norm(smean, forward)
    if not train or found is None:
        return None
    norm, out = found
    if norm.target not in (aten._native_batch_norm_legit_functional.default,
                           aten._native_batch_norm_legit.default,
                           aten.native_batch_norm.default):
        return None
    bias = norm.args[2]
    return Rewrite(pack=None,
                   impl=(ops.batch_norm_backward_from_output,
                         (grad, out, weight, bias, rmean, rvar, smean, sinvstd, train, eps,
                          mask)),
                   workspace_bytes=_nbytes(out))


def _layer_norm_from_output(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, x, shape, mean, rstd, weight, bias, mask = site.args
    found = _forward_norm(mean, forward)
    if found is None or found[0].target is not aten.native_layer_norm.default:
        return None
    return Rewrite(pack=None,
                   impl=(ops.layer_norm_backward_from_output,
                         (grad, found[1], shape, mean, rstd, weight, bias, mask)),
                   workspace_bytes=_nbytes(found[1]))


def _max_pool_compact(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    grad, x, kernel, stride, padding, dilation, _ceil, indices = site.args
    indices = _base(indices)
    if indices not in forward:
        return None
    kh, kw = (kernel * 2)[:2] if len(kernel) == 1 else kernel[:2]
    if kh * kw > 256:
        return None
    if _val(grad).dtype not in (torch.float32, torch.float64):
        # Under autocast (bfloat16, float16) aten sums overlapping windows in another
        # order than the scatter-add: the gradients would not be bit-identical.
        return None
    shape = list(_val(x).shape)
    return Rewrite(pack=(ops.max_pool2d_compact_indices,
                         (indices, shape[-2:], kernel, stride, padding, dilation)),
                   impl=(ops.max_pool2d_backward_from_compact,
                         (grad, None, shape, kernel, stride, padding, dilation)),
                   workspace_bytes=8 * _numel(indices))


RULES: list[VariantRule] = [
    VariantRule("relu_mask", aten.threshold_backward.default,
                "a 1-bit mask of the ReLU output instead of the output", _relu_mask),
    VariantRule("hardtanh_mask", aten.hardtanh_backward.default,
                "a 1-bit mask of the active range instead of the input", _hardtanh_mask),
    VariantRule("dropout_bits", aten.native_dropout_backward.default,
                "a 1-bit dropout mask instead of a 1-byte one", _dropout_bits),
    VariantRule("batch_norm_from_output", aten.native_batch_norm_backward.default,
                "the batch-norm output instead of its input", _batch_norm_from_output,
                exact=False),
    VariantRule("layer_norm_from_output", aten.native_layer_norm_backward.default,
                "the layer-norm output instead of its input", _layer_norm_from_output,
                exact=False),
    VariantRule("max_pool_compact", aten.max_pool2d_with_indices_backward.default,
                "1-byte window offsets instead of the input and 8-byte indices",
                _max_pool_compact),
]
RULE_BY_NAME = {r.name: r for r in RULES}


def _fake_value(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The node's value on the graph's fake tensors (shapes and dtypes, no compute)."""
    vals = fx.node.map_arg(args, lambda a: a.meta["val"])
    modes = [v.fake_mode for v in pytree.tree_leaves(vals) if hasattr(v, "fake_mode")]
    with modes[0] if modes else contextlib.nullcontext():
        return fn(*vals)


def call_before(graph: fx.Graph, node: fx.Node, fn: Callable[..., Any],
                args: tuple[Any, ...]) -> fx.Node:
    """A new call ``fn(*args)`` placed before ``node``, carrying ``node``'s metadata (module
    stack, source trace) and its own fake value: how a rewrite replaces ``node``."""
    with graph.inserting_before(node):
        new = graph.call_function(fn, args)
    new.meta.update({k: v for k, v in node.meta.items() if k != "val"})
    new.meta["val"] = _fake_value(fn, args)
    return new


def _insert(graph: fx.Graph, after: fx.Node, fn: Callable[..., Any], args: tuple[Any, ...],
            meta: tuple[str, str, fx.Node]) -> fx.Node:
    with graph.inserting_after(after):
        node = graph.call_function(fn, args)
    node.meta["val"] = _fake_value(fn, args)
    node.meta[VARIANT_META] = meta
    return node


def insert_variants(gm: fx.GraphModule, forward: set[fx.Node],
                    rules: list[VariantRule] | None = None) -> int:
    """Insert the pack and implementation nodes of every applicable variant into ``gm``;
    ``forward`` is the set of forward nodes. Returns the number of variants inserted."""
    by_op = {r.backward_op: r for r in (RULES if rules is None else rules)}
    sites = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in by_op
             and n not in forward]
    count = 0
    for site in sites:
        rule = by_op[site.target]
        rewrite = rule.rewrite(site, forward)
        if rewrite is None:
            continue
        impl_fn, impl_args = rewrite.impl
        if rewrite.pack is not None:
            pack_fn, pack_args = rewrite.pack
            after = max((a for a in pack_args if isinstance(a, fx.Node)),
                        key=lambda a: _position(gm, a))
            pack = _insert(gm.graph, after, pack_fn, pack_args, (rule.name, "forward", site))
            impl_args = tuple(pack if a is None else a for a in impl_args)
        impl = _insert(gm.graph, site, impl_fn, impl_args, (rule.name, "backward", site))
        impl.meta["monet_workspace"] = rewrite.workspace_bytes
        count += 1
    gm.recompile()
    log.info("inserted %d operator variants", count)
    return count


def _position(gm: fx.GraphModule, node: fx.Node) -> int:
    for i, n in enumerate(gm.graph.nodes):
        if n is node:
            return i
    raise KeyError(node)
