"""Backward rewrites applied at capture: convolution backward split into weight and input
gradients (profiler.split_backward), gradient sums written into a dead summand
(profiler.inplace_backward)."""
import copy

import pytest
import torch
import torch.nn as nn

from planner import solve
from planner.backends import SolveOptions
from planner.heuristic import checkpoint_decisions
from planner.inspect import describe_plan
from planner.schedule import baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import plan_for, planner_graph
from profiler import variant_ops as vo
from profiler.profile import profile_model
from runtime import load_plan

aten = torch.ops.aten

# (dims, in channels, out channels, kernel, stride, padding, dilation, groups, transposed)
CONVS = [
    (2, 3, 8, 3, 1, 1, 1, 1, False),
    (2, 16, 16, 3, 2, 1, 1, 16, False),  # depthwise, strided
    (2, 8, 12, 1, 1, 0, 1, 2, False),
    (2, 6, 6, 3, 1, 2, 2, 1, False),  # dilated
    (1, 4, 8, 5, 2, 2, 1, 1, False),
    (3, 2, 4, 3, 1, 1, 1, 1, False),
    (2, 8, 4, 3, 2, 1, 1, 1, True),  # transposed
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv", CONVS)
def test_input_gradient_equals_fused(conv, dtype):
    dims, cin, cout, k, s, p, d, g, transposed = conv
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, cin) + (11,) * dims, generator=gen, dtype=dtype)
    wshape = (cin, cout // g) if transposed else (cout, cin // g)
    w = torch.randn(wshape + (k,) * dims, generator=gen, dtype=dtype)
    args = ([s] * dims, [p] * dims, [d] * dims, transposed, [s - 1 if transposed else 0] * dims, g)
    y = aten.convolution(x, w, None, *args)
    grad = torch.randn(y.shape, generator=gen, dtype=dtype)
    fused = aten.convolution_backward(grad, x, w, [cout], *args, [True, True, True])
    weight_only = aten.convolution_backward(grad, x, w, [cout], *args, [False, True, True])
    split_input = vo.convolution_backward_input(grad, w, list(x.shape), dtype, *args)
    assert torch.equal(split_input, fused[0])
    assert split_input.stride() == fused[0].stride()
    assert torch.equal(weight_only[1], fused[1]) and torch.equal(weight_only[2], fused[2])


def _conv_stack() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1),
                          nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return model, torch.randn(4, 3, 24, 24)


def test_split_frees_the_input_before_the_input_gradient():
    model, x = _conv_stack()
    fused = profile_model(model, (x,), estimate=True, rewrite_backward=False)
    split = profile_model(model, (x,), estimate=True)
    targets = [n.target for n in split.nodes]
    # The first conv's input needs no gradient: only the other two are split.
    assert targets.count("profiler.variant_ops.convolution_backward_input") == 2
    assert targets.count("aten.convolution_backward.default") == 3
    options = SolveOptions(time_limit_s=5)
    peak_fused = solve(fused, 1.0, options=options).baseline_peak_bytes
    peak_split = solve(split, 1.0, options=options).baseline_peak_bytes
    # At the second conv's backward its input (the first conv's output, 4x16x24x24 floats)
    # dies before the input gradient is allocated.
    assert peak_split <= peak_fused - 4 * 16 * 24 * 24 * 4


def _memory_at_sums(profile, target: str) -> list[int]:
    """Bytes live while each backward ``target`` node runs, in the unoptimised schedule."""
    graph = planner_graph(profile)
    schedule = build_schedule(graph, baseline_decisions(graph))
    result = simulate(profile, schedule)
    runs = [s for s in schedule.forward + schedule.backward if s.kind == "run"]
    return [m for s, m in zip(runs, result.memory) if profile.nodes[s.runs].target == target
            and profile.nodes[s.runs].role == "backward"]


class Residual(nn.Module):
    """``h + f(h)`` twice: the gradient of each ``h`` is a sum of two paths."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.g = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.f(h)
        return (h + self.g(h)).sum(dim=-1)


def test_gradient_sums_written_into_a_dead_summand():
    torch.manual_seed(0)
    model, x = Residual(), torch.randn(256, 64)
    plain = profile_model(model, (x,), estimate=True, rewrite_backward=False)
    profile = profile_model(model, (x,), estimate=True)
    in_place = [n for n in profile.nodes if n.writes_into >= 0]
    assert [n.target for n in in_place] == ["profiler.variant_ops.add_into"] * 2
    for n in in_place:
        assert not n.new_storages and n.storages == profile.nodes[n.writes_into].storages
        assert not n.is_alias and n.time_s > 0
    # While each sum runs, one 256x64 float tensor less is live than in eager's graph.
    eager_sums = _memory_at_sums(plain, "aten.add.Tensor")
    assert len(eager_sums) == 2
    assert _memory_at_sums(profile, "profiler.variant_ops.add_into") == \
        [m - 256 * 64 * 4 for m in eager_sums]
    options = SolveOptions(time_limit_s=5)
    # Planned and run: the executor's count equals the simulator's; gradients are eager's.
    plan = solve(profile, 0.9, options=options)
    assert sum(map(len, plan.recompute)) > 0
    planned = load_plan(copy.deepcopy(model), plan)
    planned(x).sum().backward()
    model(x).sum().backward()
    assert planned.last_peak_bytes == plan.predicted_peak_bytes
    for (name, p), q in zip(model.named_parameters(), planned.module.parameters()):
        assert torch.equal(p.grad, q.grad), name


class ClassifierLoss(nn.Module):
    """A linear classifier and its cross-entropy inside the graph, as bench/compare.py
    captures a step: ``nll_loss_backward``'s gradient feeds the log-softmax backward. With
    ``soft`` targets (class probabilities), a product's gradient feeds it."""

    def __init__(self, width: int = 32, classes: int = 3000, soft: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.head = nn.Linear(width, classes)
        self.soft = soft

    def forward(self, x, target):
        logits = self.head(self.body(x))
        if self.soft:
            return -(logits.log_softmax(-1) * target).sum(-1).mean()
        return nn.functional.cross_entropy(logits, target) * 1.0


def _step_equals_eager(model, inputs, plan):
    model.zero_grad(set_to_none=True)
    planned = load_plan(copy.deepcopy(model), plan)
    loss = planned(*inputs)
    loss.backward()
    expected = model(*inputs)
    expected.backward()
    assert torch.equal(loss, expected)
    assert planned.last_peak_bytes == plan.predicted_peak_bytes
    for (name, p), q in zip(model.named_parameters(), planned.module.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("chunk_bytes", [None, 40_000])
def test_log_softmax_backward_written_into_its_dead_gradient(monkeypatch, chunk_bytes):
    from profiler import inplace_backward
    if chunk_bytes:  # several chunks of 3 rows (12 KB each)
        monkeypatch.setattr(inplace_backward, "SOFTMAX_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = ClassifierLoss(soft=True)
    inputs = (torch.randn(64, 32), torch.rand(64, 3000).softmax(-1))
    plain = profile_model(model, inputs, estimate=True, rewrite_backward=False)
    profile = profile_model(model, inputs, estimate=True)
    assert not any(n.target.endswith("cross_entropy_backward_into") for n in profile.nodes)
    in_place = [n for n in profile.nodes if n.target.endswith("softmax_backward_into")]
    assert len(in_place) == 1 and in_place[0].writes_into >= 0
    assert not in_place[0].new_storages
    logits = 64 * 3000 * 4
    assert _memory_at_sums(profile, in_place[0].target) == [
        m - logits + in_place[0].workspace_bytes
        for m in _memory_at_sums(plain, "aten._log_softmax_backward_data.default")]
    _step_equals_eager(model, inputs, solve(profile, 1.0, options=SolveOptions(time_limit_s=5)))


@pytest.mark.parametrize("chunk_bytes", [None, 40_000])
def test_cross_entropy_backward_written_into_the_dead_log_softmax(monkeypatch, chunk_bytes):
    """nll_loss_backward and the log-softmax backward become one node writing the logits'
    gradient over the log-softmax: two logits-sized tensors fewer while it runs; plans that
    keep or recompute the log-softmax give eager's step."""
    from profiler import inplace_backward
    if chunk_bytes:
        monkeypatch.setattr(inplace_backward, "SOFTMAX_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    model = ClassifierLoss()
    inputs = (torch.randn(64, 32), torch.randint(0, 3000, (64,)))
    inputs[1][::7] = -100  # ignored rows
    plain = profile_model(model, inputs, estimate=True, rewrite_backward=False)
    profile = profile_model(model, inputs, estimate=True)
    fused = [n for n in profile.nodes if n.target.endswith("cross_entropy_backward_into")]
    assert len(fused) == 1 and not fused[0].new_storages
    assert not any(n.target.startswith("aten.nll_loss_backward") for n in profile.nodes)
    log_probs = profile.nodes[fused[0].writes_into]
    assert log_probs.target == "aten._log_softmax.default" and log_probs.role == "forward"
    assert fused[0].storages == log_probs.storages
    logits = 64 * 3000 * 4
    # Up to the loss's scalar gradients, which now live until the fused node.
    [fused_at] = _memory_at_sums(profile, fused[0].target)
    [eager_at] = _memory_at_sums(plain, "aten._log_softmax_backward_data.default")
    assert 0 <= fused_at - (eager_at - 2 * logits + fused[0].workspace_bytes) <= 16
    plan = solve(profile, 1.0, options=SolveOptions(time_limit_s=5, variants="exact"))
    assert "1  cross-entropy backward written into its dead log-softmax" in describe_plan(plan)
    _step_equals_eager(model, inputs, plan)
    graph = planner_graph(profile)
    for kept in (set(graph.ops()), set()):  # keeps, then recomputes, the log-softmax
        for in_place in ("none", "all"):  # the forward writes it over the logits or not
            plan = plan_for(profile, checkpoint_decisions(graph, kept, {}, in_place=in_place))
            assert plan.solver_peak_bytes == plan.predicted_peak_bytes
            _step_equals_eager(model, inputs, plan)


def test_cross_entropy_backward_into_equals_aten_kernels():
    torch.manual_seed(0)
    log_probs = torch.randn(11, 37, dtype=torch.float64).log_softmax(-1)
    target = torch.randint(0, 37, (11,))
    target[3] = -100
    weight = torch.rand(37, dtype=torch.float64)
    for w, reduction in ((None, 1), (weight, 1), (None, 2)):
        loss, total = aten.nll_loss_forward(log_probs, target, w, reduction, -100)
        grad_loss = torch.tensor(1.3, dtype=torch.float64)
        expected = aten._log_softmax_backward_data(
            aten.nll_loss_backward(grad_loss, log_probs, target, w, reduction, -100, total),
            log_probs, -1, torch.float64)
        into = log_probs.clone()
        result = vo.cross_entropy_backward_into(grad_loss, into, target, w, reduction, -100,
                                                total, torch.float64, 4)
        assert result is into and torch.equal(result, expected)


def test_softmax_backward_into_equals_aten_kernel():
    torch.manual_seed(0)
    out = torch.randn(7, 5, 33).softmax(-1)
    grad = torch.randn(7, 5, 33)
    for log, kernel in ((False, aten._softmax_backward_data.default),
                        (True, aten._log_softmax_backward_data.default)):
        expected = kernel(grad, out, -1, torch.float32)
        result = vo.softmax_backward_into(grad.clone(), out, -1, torch.float32, log, 4)
        assert torch.equal(result, expected)


def test_gpt_with_its_loss_in_the_graph_plans_the_logits():
    """examples.gpt.GPTWithLoss: the loss is the graph's output, its backward writes into
    the log-softmax, which writes over the logits in a plan with writes in place, and a
    recomputing plan's step equals eager's."""
    from examples.gpt import GPTWithLoss
    torch.manual_seed(0)
    model = GPTWithLoss(vocab=300, d=16, heads=2, layers=2, seq=8)
    inputs = (torch.randint(0, 300, (4, 8)), torch.randint(0, 300, (4, 8)))
    profile = profile_model(model, inputs, estimate=True)
    assert sum(n.target.endswith("cross_entropy_backward_into") for n in profile.nodes) == 1
    # Exact variants only: the norm-from-output ones change the arithmetic.
    plan = solve(profile, 0.8, options=SolveOptions(time_limit_s=5, variants="exact"))
    assert sum(map(len, plan.recompute)) > 0
    assert any(e["op"] == "aten._log_softmax" and e["forward_runs"] + e["recompute_runs"]
               for e in plan.in_place_summary)
    _step_equals_eager(model, inputs, plan)
