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
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from . import attention_ops
from . import variant_ops as ops
from .variant_names import EXACT_VARIANTS

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
    pack_workspace_bytes: int = 0


@dataclass(frozen=True)
class VariantRule:
    """One registered variant: the backward op it replaces and how to rewrite a site."""

    name: str
    backward_op: Any
    keeps: str
    rewrite: Callable[[fx.Node, set[fx.Node]], Rewrite | None]

    @property
    def exact(self) -> bool:
        """Same arithmetic as the original: bit-identical gradients (the torch-free list
        the planner reads, ``profiler.variant_names``)."""
        return self.name in EXACT_VARIANTS


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


# The fused attention backward ops: for each, the positions of its (grad_out, query, key,
# value, out, logsumexp) arguments, of its dropout probability and causal flag, and of its
# attention bias (None: the attn_mask keyword).
_FUSED_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        ((0, 1, 2, 3, 4, 5), 6, 7, None),
    aten._scaled_dot_product_flash_attention_backward.default:
        ((0, 1, 2, 3, 4, 5), 10, 11, None),
    aten._scaled_dot_product_efficient_attention_backward.default:
        ((0, 1, 2, 3, 5, 6), 9, 11, 4),
}


def _attention_math(site: fx.Node, forward: set[fx.Node]) -> Rewrite | None:
    """The math backend's backward for a fused attention backward without dropout."""
    (i_grad, i_q, i_k, i_v, _i_out, i_lse), i_drop, i_causal, i_bias = \
        _FUSED_ATTENTION[site.target]
    args = site.args
    grad, q, k, v, lse = (args[i] for i in (i_grad, i_q, i_k, i_v, i_lse))
    is_causal = args[i_causal] if len(args) > i_causal else site.kwargs.get("is_causal", False)
    mask = args[i_bias] if i_bias is not None else site.kwargs.get("attn_mask")
    if i_bias is not None and list(args[10])[3]:
        return None  # the attention bias's gradient is asked for
    if args[i_drop] != 0 or not all(isinstance(a, fx.Node) for a in (q, k, v, lse)):
        return None
    if not all(_base(a) in forward for a in (q, k, v, lse)):
        return None
    query, key, value = _val(q), _val(k), _val(v)
    if query.dim() != 4 or key.shape[:-2] != query.shape[:-2] or \
            value.shape[:-2] != query.shape[:-2] or not query.is_floating_point():
        return None  # grouped-query attention or an unusual layout: the fused kernel only
    scale = site.kwargs.get("scale")
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale  # None marks the pack
    grads = site.meta["val"]
    strides = tuple(tuple(g.stride()) for g in grads[:3])
    probs_bytes = query.shape[:-1].numel() * key.size(-2) * query.element_size()
    lse_val = _val(lse)
    # The pack's temporaries: the causal mask (1 byte per query-key pair), and the
    # log-sum-exp's masked copy and its -inf test.
    pack_ws = query.size(-2) * key.size(-2) + lse_val.numel() * (lse_val.element_size() + 1)
    if isinstance(mask, fx.Node) and _val(mask).dtype == torch.bool:
        pack_ws += _numel(mask)
    return Rewrite(pack=(attention_ops.attention_probabilities,
                         (q, k, lse, bool(is_causal), mask, scale)),
                   impl=(attention_ops.attention_backward_from_probabilities,
                         (grad, None, q, k, v, scale, strides, len(grads))),
                   # dP and dS at once, with the operands' and results' layout copies
                   workspace_bytes=2 * probs_bytes + sum(_nbytes(a) for a in (q, k, v)),
                   pack_workspace_bytes=pack_ws)


RULES: list[VariantRule] = [
    VariantRule("relu_mask", aten.threshold_backward.default,
                "a 1-bit mask of the ReLU output instead of the output", _relu_mask),
    VariantRule("hardtanh_mask", aten.hardtanh_backward.default,
                "a 1-bit mask of the active range instead of the input", _hardtanh_mask),
    VariantRule("dropout_bits", aten.native_dropout_backward.default,
                "a 1-bit dropout mask instead of a 1-byte one", _dropout_bits),
    VariantRule("batch_norm_from_output", aten.native_batch_norm_backward.default,
                "the batch-norm output instead of its input", _batch_norm_from_output),
    VariantRule("layer_norm_from_output", aten.native_layer_norm_backward.default,
                "the layer-norm output instead of its input", _layer_norm_from_output),
    VariantRule("max_pool_compact", aten.max_pool2d_with_indices_backward.default,
                "1-byte window offsets instead of the input and 8-byte indices",
                _max_pool_compact),
    *(VariantRule("attention_math", op,
                  "the attention probabilities instead of the output and log-sum-exp (the "
                  "math backend: one matmul moved from the backward to the forward)",
                  _attention_math) for op in _FUSED_ATTENTION),
]
RULE_BY_NAME = {r.name: r for r in RULES}    # attention_math's rules agree


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
            if rewrite.pack_workspace_bytes:
                pack.meta["monet_workspace"] = rewrite.pack_workspace_bytes
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
