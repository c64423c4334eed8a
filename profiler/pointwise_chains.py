"""Element-wise activations built from several primitives, fused with their derivative.

An activation written as a chain of ATen element-wise ops (the tanh GELU of GPT-2,
``0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3)))``; SiLU as ``x * sigmoid(x)``; Mish as
``x * tanh(softplus(x))``) is traced op by op, and autograd keeps several of its
intermediates for the backward (four tensors of the input's size for the tanh GELU).
"Nested forward automatic differentiation" (Guo et al. 2022) computes the derivative
``dy/dx`` in the forward pass with forward-mode AD instead, and keeps that one tensor: the
backward of the whole chain is then ``grad * dy/dx``.

This pass finds such chains in the joint graph (connected forward ops tagged
``torch.Tag.pointwise`` with one tensor input ``x`` and one output ``y`` used outside,
whose intermediates nothing but the chain's own backward reads) and the backward
region that maps ``grad_y`` to ``grad_x``. It replaces both by
``variant_ops.pointwise_value_and_derivative(x, program)`` and one ``mul``. The planner
then chooses, as for any forward value, whether ``dy/dx`` is kept from the forward pass or
recomputed from ``x``; keeping the intermediates instead is never better (more bytes, the
same work), so that implementation is not offered.

Every rewrite is checked on sample values before it is made: ``y`` must be bit-identical
to the chain's, and ``grad_x`` equal to the original backward's within float64 rounding.
The gradients then differ from eager's only by rounding (the derivative is multiplied out
in another order).
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from . import variant_ops as ops
from .variants import call_before

log = logging.getLogger(__name__)
aten = torch.ops.aten

POINTWISE_CHUNK_BYTES = 8 * 2**20  # the most one chunk of the input holds
_SAMPLE = 4099  # sample values a rewrite is checked on


@dataclass
class Chain:
    """One fusible chain: its forward nodes in graph order, input, output, the backward
    region (graph order) with its incoming gradient and its result."""

    forward: list[fx.Node]
    x: fx.Node
    y: fx.Node
    backward: list[fx.Node]
    grad_y: fx.Node
    grad_x: fx.Node


def _val(node: object) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _elementwise(node: fx.Node, like: torch.Tensor, tagged: bool = True) -> bool:
    """A call of a deterministic ATen op whose value and tensor arguments have ``like``'s
    shape, dtype and strides, and whose other arguments are plain scalars; with ``tagged``,
    of an op tagged ``torch.Tag.pointwise`` (backward ops such as ``softplus_backward``
    are not tagged: the sample check stands for the tag there)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or \
            (tagged and torch.Tag.pointwise not in target.tags) or \
            torch.Tag.nondeterministic_seeded in target.tags:
        return False
    if not all(_same_layout(v, like) for v in (_val(node), *map(_val, node.all_input_nodes))):
        return False
    return all(isinstance(a, (fx.Node, int, float, bool, str, type(None)))
               for a in (*node.args, *node.kwargs.values()))


def _same_layout(v: torch.Tensor | None, like: torch.Tensor) -> bool:
    return v is not None and v.shape == like.shape and v.dtype == like.dtype and \
        v.stride() == like.stride()


def _detaches(nodes: set[fx.Node]) -> set[fx.Node]:
    """Chains of ``aten.detach`` from ``nodes`` (how the backward reads saved values)."""
    found: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        for user in stack.pop().users:
            if user.target is aten.detach.default and user not in found:
                found.add(user)
                stack.append(user)
    return found


def _forward_component(seed: fx.Node, forward: set[fx.Node], like: torch.Tensor,
                       taken: set[fx.Node]) -> set[fx.Node]:
    component, stack = {seed}, [seed]
    while stack:
        n = stack.pop()
        for m in (*n.all_input_nodes, *n.users):
            if m not in component and m not in taken and m in forward and \
                    _elementwise(m, like):
                component.add(m)
                stack.append(m)
    return component


def _backward_region(fwd: set[fx.Node], x: fx.Node, y: fx.Node, forward: set[fx.Node]
                     ) -> tuple[set[fx.Node], fx.Node, fx.Node] | None:
    """The backward nodes computing ``grad_x`` from ``grad_y`` through the chain's saved
    values, the one outside gradient they read, and their result; None unless the chain's
    intermediates are read by nothing else and the region has one input and one result."""
    inner = fwd - {y}
    saved = inner | _detaches(inner)
    like = _val(x)
    region = {u for n in saved for u in n.users if u not in saved and u not in fwd}
    if not region or not all(u not in forward and _elementwise(u, like, tagged=False)
                             for u in region):
        return None
    values = saved | _detaches({y}) | {x, y}
    while True:  # take in backward nodes that read the chain's values (``grad * x``)
        outside = {a for n in region for a in n.all_input_nodes} - values - region
        reading = {o for o in outside if o not in forward
                   and _elementwise(o, like, tagged=False)
                   and any(a in values for a in o.all_input_nodes)}
        if not reading:
            break
        region |= reading
    if len(outside) != 1:
        return None
    grad_y = next(iter(outside))
    known = values | {grad_y}
    # Backward values computed from the chain's values alone (``pow(x, 2)`` of a ``pow``
    # backward): known too, and part of the region where it reads them.
    computed: set[fx.Node] = set()
    stack = [u for n in known - {grad_y} for u in n.users]
    while stack:
        m = stack.pop()
        if m not in known and m not in computed and m not in forward and \
                _elementwise(m, like, tagged=False) and \
                all(a in known or a in computed for a in m.all_input_nodes):
            computed.add(m)
            stack.extend(m.users)
    known |= computed
    grew = True
    while grew:  # close over nodes whose inputs are all known and that touch the region
        grew = False
        near = {m for n in region for m in (*n.users, *n.all_input_nodes)} - region - \
            (known - computed)
        for m in near:
            if m not in forward and _elementwise(m, like, tagged=False) and \
                    all(a in region or a in known for a in m.all_input_nodes):
                region.add(m)
                grew = True
    sinks = [n for n in region if any(u not in region for u in n.users)]
    if len(sinks) != 1 or any(u not in fwd and u not in saved and u not in region
                               for n in saved for u in n.users):
        return None
    return region, grad_y, sinks[0]


def _y_of(fwd: set[fx.Node], forward: set[fx.Node]) -> fx.Node | None:
    """The chain's one node read by forward nodes outside it."""
    outs = [n for n in fwd if any(u not in fwd and u in forward for u in n.users)]
    return outs[0] if len(outs) == 1 else None


def find_chains(gm: fx.GraphModule, forward: set[fx.Node]) -> list[Chain]:
    """The fusible chains of ``gm`` (``forward``: its forward nodes)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    taken: set[fx.Node] = set()
    chains = []
    for seed in gm.graph.nodes:
        like = _val(seed)
        if seed in taken or seed not in forward or like is None or \
                not like.dtype.is_floating_point or not _elementwise(seed, like):
            continue
        fwd = _forward_component(seed, forward, like, taken)
        taken |= fwd
        inputs = {a for n in fwd for a in n.all_input_nodes} - fwd
        if len(fwd) < 2 or len(inputs) != 1:
            continue
        x = next(iter(inputs))
        y = _y_of(fwd, forward)
        # x is an input of the chain's ops: it has their shape, dtype and strides.
        if y is None or not _val(x).is_contiguous():
            continue
        found = _backward_region(fwd, x, y, forward)
        if found is None:
            continue
        region, grad_y, grad_x = found
        chains.append(Chain(sorted(fwd, key=order.get), x, y, sorted(region, key=order.get),
                            grad_y, grad_x))
    return chains


def _program(nodes: list[fx.Node], x: fx.Node, result: fx.Node) -> ops.PointwiseProgram:
    """The steps of ``nodes`` (graph order, ending at ``result``) as a pointwise program."""
    nodes = [n for n in nodes if n is not result] + [result]
    ref = {x: "%x"} | {n: f"%{i}" for i, n in enumerate(nodes)}

    def arg(a: object) -> object:
        return ref[a] if isinstance(a, fx.Node) else a
    return tuple((str(n.target), tuple(map(arg, n.args)),
                  tuple((k, arg(v)) for k, v in n.kwargs.items())) for n in nodes)


def _run_nodes(nodes: list[fx.Node], env: dict[fx.Node, torch.Tensor]) -> None:
    for n in nodes:
        if n.target is aten.detach.default:
            env[n] = env[n.args[0]]
            continue
        args = fx.node.map_arg(n.args, env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
        env[n] = n.target(*args, **kwargs)


def _checked(chain: Chain, program: ops.PointwiseProgram) -> bool:
    """Whether the fused program reproduces the chain on sample values: ``y`` bit for bit
    in the graph's dtype, ``grad_x`` within float64 rounding."""
    like = _val(chain.x)
    gen = torch.Generator().manual_seed(0)
    order = {n: i for i, n in enumerate(chain.x.graph.nodes)}
    backward = sorted(_detaches(set(chain.forward)) | set(chain.backward), key=order.get)
    try:
        for dtype in (like.dtype, torch.float64):
            x = 3 * torch.randn(_SAMPLE, generator=gen).to(dtype)
            g = torch.randn(_SAMPLE, generator=gen).to(dtype)
            env: dict[fx.Node, torch.Tensor] = {chain.x: x, chain.grad_y: g}
            _run_nodes(chain.forward, env)
            _run_nodes(backward, env)
            y, d = ops.pointwise_value_and_derivative(x, program, POINTWISE_CHUNK_BYTES)
            if not _same(y, env[chain.y]):
                return False
            if dtype == torch.float64 and not torch.allclose(
                    g * d, env[chain.grad_x], rtol=1e-9, atol=1e-12, equal_nan=True):
                return False
    except Exception as e:  # an op without a forward-AD formula, or any surprise
        log.debug("pointwise chain at %s not fused: %s", chain.y, e)
        return False
    return True


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical values, NaN where NaN."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def fuse_pointwise_chains(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Replace every fusible element-wise chain and its backward by the fused value and
    derivative and one multiplication; ``forward`` is updated. Returns the count."""
    graph = gm.graph
    count = 0
    for chain in find_chains(gm, forward):
        program = _program(chain.forward, chain.x, chain.y)
        if not _checked(chain, program):
            continue
        fused = call_before(graph, chain.y, ops.pointwise_value_and_derivative,
                            (chain.x, program, POINTWISE_CHUNK_BYTES))
        x_bytes = _val(chain.x).numel() * _val(chain.x).element_size()
        # Per chunk: the unit tangent, and a primal and a tangent per live value.
        fused.meta["monet_workspace"] = min(POINTWISE_CHUNK_BYTES, x_bytes) * \
            (1 + 2 * ops.program_live_values(program))
        with graph.inserting_after(fused):
            y = graph.call_function(operator.getitem, (fused, 0))
            d = graph.call_function(operator.getitem, (fused, 1))
        for node, index in ((y, 0), (d, 1)):
            node.meta.update({k: v for k, v in chain.y.meta.items() if k != "val"})
            node.meta["val"] = fused.meta["val"][index]
        grad_x = call_before(graph, chain.grad_x, aten.mul.Tensor, (chain.grad_y, d))
        chain.y.replace_all_uses_with(y)
        chain.grad_x.replace_all_uses_with(grad_x)
        dead = {*chain.backward, *_detaches(set(chain.forward)), *chain.forward}
        for node in reversed(list(graph.nodes)):
            if node in dead and not node.users:
                graph.erase_node(node)
        forward.difference_update(chain.forward)
        forward.update((fused, y, d))
        count += 1
    if count:
        gm.recompile()
    log.info("%d element-wise chains fused with their derivative", count)
    return count
