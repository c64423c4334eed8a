"""The executor's generated per-node calls give the same values as calling the ops with
their arguments mapped from the environment, for every argument shape the captured graphs
use: tensors, nested lists of tensors and scalars, empty tuples, keyword arguments,
``getitem`` on multi-output ops, a dict argument, and a lifted tensor constant."""
import operator

import torch
import torch.fx as fx

from runtime.executor import _compile_call

aten = torch.ops.aten


def _graph():
    g = fx.Graph()
    root = torch.nn.Module()
    root.register_buffer("mask", torch.tensor([1.0, 0.0, 2.0]))
    a = g.placeholder("a")
    b = g.placeholder("b")
    nodes = {
        "cat": g.call_function(aten.cat.default, ([a, b], 0)),
        "sum_dims": g.call_function(aten.sum.dim_IntList, (a, [0], False)),
        "empty_tuple": g.call_function(torch.Tensor.new_zeros, (a, ())),
        "kwargs": g.call_function(aten.add.Tensor, (a, b), {"alpha": 2}),
        "multi": g.call_function(aten.var_mean.correction, (a,), {"correction": 0}),
        "dict_arg": g.call_function(lambda x, d: x * d["k"], (a, {"k": b})),
        "attr": g.get_attr("mask"),
    }
    nodes["getitem"] = g.call_function(operator.getitem, (nodes["multi"], 1))
    for i, n in enumerate(g.nodes):
        n.meta["monet_index"] = i
    fx.GraphModule(root, g)  # owning module of the get_attr node
    return nodes, root


def test_generated_calls_match_direct_calls():
    nodes, root = _graph()
    a, b = torch.randn(3), torch.randn(3)
    env = {0: a, 1: b}
    for name, node in nodes.items():
        env[node.meta["monet_index"]] = _compile_call(node)(env)
    torch.testing.assert_close(env[nodes["cat"].meta["monet_index"]], torch.cat([a, b]))
    assert env[nodes["sum_dims"].meta["monet_index"]].item() == a.sum(0).item()
    assert env[nodes["empty_tuple"].meta["monet_index"]].shape == ()
    assert torch.equal(env[nodes["kwargs"].meta["monet_index"]], a + 2 * b)
    var, mean = torch.var_mean(a, correction=0)
    assert torch.equal(env[nodes["getitem"].meta["monet_index"]], mean)
    assert torch.equal(env[nodes["dict_arg"].meta["monet_index"]], a * b)
    assert torch.equal(env[nodes["attr"].meta["monet_index"]], root.mask)
