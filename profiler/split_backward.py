"""Split convolution backward nodes into a weight-gradient node and an input-gradient node.

``aten.convolution_backward`` computes the input, weight and bias gradients in one call, so
the forward input it reads stays alive until the input gradient has been allocated. Split
into two nodes, the weight (and bias) gradient runs first and is the last reader of the
input; the input gradient (``variant_ops.convolution_backward_input``) needs only the
output gradient, the weight and the input's shape. Where the input dies at this node, the
input gradient is then allocated after the input has been freed: the step's peak is lower
by the input's size, at the same arithmetic (bit-identical gradients) and the same work
(cuDNN and the CPU kernels run the two halves as separate kernels either way). The
planner needs no choice for this: the split is never worse, so it is applied at capture.
Linear layers need no pass: their ATen backward is already two ``mm`` nodes.
"""
from __future__ import annotations

import logging
import operator

import torch
import torch.fx as fx

from . import variant_ops as ops
from .variants import call_before

log = logging.getLogger(__name__)
aten = torch.ops.aten

def _splittable(node: fx.Node, forward: set[fx.Node]) -> bool:
    if node.op != "call_function" or node.target is not aten.convolution_backward.default \
            or node in forward:
        return False
    mask = node.args[10]
    x = node.args[1].meta.get("val") if isinstance(node.args[1], fx.Node) else None
    return bool(mask[0] and (mask[1] or mask[2])) and isinstance(x, torch.Tensor) \
        and x.is_contiguous() and all(u.target is operator.getitem for u in node.users)


def split_convolution_backward(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Replace every convolution backward that computes both the input gradient and the
    weight (or bias) gradient of a contiguous input by the two halves, weight gradient
    first. Returns the number of nodes split."""
    graph = gm.graph
    count = 0
    for node in [n for n in graph.nodes if _splittable(n, forward)]:
        (grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
         groups, mask) = node.args
        weight_args = (grad, x, weight, bias_sizes, stride, padding, dilation, transposed,
                       output_padding, groups, [False, mask[1], mask[2]])
        x_val = x.meta["val"]
        input_args = (grad, weight, list(x_val.shape), x_val.dtype, stride, padding, dilation,
                      transposed, output_padding, groups)
        weight_grad = call_before(graph, node, aten.convolution_backward.default, weight_args)
        input_grad = call_before(graph, node, ops.convolution_backward_input, input_args)
        for user in list(node.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(input_grad)
                graph.erase_node(user)
            else:
                user.args = (weight_grad, user.args[1])
                user.meta["val"] = weight_grad.meta["val"][user.args[1]]
        graph.erase_node(node)
        count += 1
    if count:
        gm.recompile()
    log.info("split %d convolution backward nodes", count)
    return count
