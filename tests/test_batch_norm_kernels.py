"""The CUDA batch-norm routing (profiler.batch_norm_kernels) on the CPU: graphs captured on
the CPU keep ATen's native nodes (their hashes and committed profiles are unchanged), and
the routed functions equal the native ops exactly wherever cuDNN does not apply. The cuDNN
path itself is checked in tests/test_gpu.py."""
import pytest
import torch

from profiler import capture
from profiler.batch_norm_kernels import (
    batch_norm_backward,
    batch_norm_training,
    route_batch_norm_to_cudnn,
)

aten = torch.ops.aten


def test_cpu_graphs_are_not_retargeted():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    captured = capture(model, (torch.randn(2, 3, 8, 8),))
    targets = {n.target for n in captured.nodes}
    assert aten._native_batch_norm_legit_functional.default in targets
    assert batch_norm_training not in targets and batch_norm_backward not in targets
    assert route_batch_norm_to_cudnn(captured.graph_module) == 0


def test_routed_functions_equal_native_ops_off_cudnn():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 3, 5, 5), torch.randn(3), torch.randn(3)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    native = aten._native_batch_norm_legit_functional.default(x, w, b, mean, var, True, 0.1,
                                                               1e-5)
    routed = batch_norm_training(x, w, b, mean, var, True, 0.1, 1e-5)
    assert all(torch.equal(a, c) for a, c in zip(native, routed))
    grad = torch.randn_like(x)
    args = (grad, x, w, mean, var, native[1], native[2], True, 1e-5, [True, True, True])
    expected = aten.native_batch_norm_backward.default(*args)
    assert all(torch.equal(a, c) for a, c in zip(expected, batch_norm_backward(*args)))


def test_routed_batch_norms_never_write_in_place(monkeypatch):
    """A graph routed as on CUDA (forced here on the CPU) offers no batch-norm writes in
    place: on an H200 such plans gave gradients 6.7-9 % off eager's (ATen's kernel forward,
    cuDNN's backward). ReLUs and additions still write in place, and the executor refuses
    to run a routed batch norm over its input."""
    import torchvision

    import profiler.batch_norm_kernels as kernels
    from planner.in_place import allowed_writes
    from planner.solve import planner_graph
    from profiler import profile_model
    from runtime.executor import _in_place_target

    monkeypatch.setattr(kernels, "_on_cuda", lambda node: True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    profile = profile_model(model, (torch.randn(2, 3, 32, 32),), estimate=True)
    graph = planner_graph(profile)
    kinds = {graph.nodes[o].target.split(".")[1] for o in allowed_writes(graph, "all")}
    assert kinds == {"relu", "add"}
    assert any(n.target == "profiler.batch_norm_kernels.batch_norm_training"
               for n in profile.nodes)
    captured = capture(model, (torch.randn(2, 3, 32, 32),))
    routed = next(n for n in captured.graph_module.graph.nodes
                  if n.target is batch_norm_training)
    with pytest.raises(ValueError, match="cannot run in place"):
        _in_place_target(routed)
