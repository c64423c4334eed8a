"""Element-wise activations written as chains of primitives, fused with their derivative
by forward-mode AD (profiler.pointwise_chains): what is fused, what is kept, and gradients
against eager autograd, on their own and inside recomputing plans."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from planner import solve
from planner.backends import SolveOptions
from planner.schedule import baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from profiler import variant_ops as vo
from profiler.profile import profile_model
from runtime import load_plan

FUSED = "profiler.variant_ops.pointwise_value_and_derivative"


def tanh_gelu(x):  # GPT-2's "gelu_new", as Hugging Face writes it
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def silu(x):
    return x * torch.sigmoid(x)


def mish(x):
    return x * torch.tanh(F.softplus(x))


class MLP(nn.Module):
    def __init__(self, act, width: int = 48):
        super().__init__()
        self.act = act
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return self.down(self.act(self.up(x))) + x


def _kept_bytes(profile) -> int:
    """Bytes the unoptimised plan holds at the start of the backward pass."""
    graph = planner_graph(profile)
    result = simulate(profile, build_schedule(graph, baseline_decisions(graph)))
    return result.memory[result.forward_steps - 1]


@pytest.mark.parametrize("act,kept_before", [(tanh_gelu, 4), (silu, 2), (mish, 2)])
def test_chain_fused_and_keeps_one_tensor(act, kept_before):
    torch.manual_seed(0)
    model, x = MLP(act), torch.randn(64, 48)
    plain = profile_model(model, (x,), estimate=True, rewrite_backward=False)
    profile = profile_model(model, (x,), estimate=True)
    fused = [n for n in profile.nodes if n.target == FUSED]
    assert len(fused) == 1
    # Eager keeps `kept_before` tensors of the hidden layer's size (64 x 192 floats) for
    # the activation's backward (the input among them); fused, one: dy/dx.
    hidden = 64 * 192 * 4
    assert _kept_bytes(plain) - _kept_bytes(profile) == (kept_before - 1) * hidden


@pytest.mark.parametrize("act", [tanh_gelu, silu, mish])
@pytest.mark.parametrize("shape", [(5, 48), (3, 7, 48)])
def test_fused_gradients_equal_autograd_float64(act, shape):
    torch.manual_seed(1)
    model = MLP(act).double()
    x = torch.randn(*shape, dtype=torch.float64)
    profile = profile_model(model, (x,), estimate=True)
    assert sum(n.target == FUSED for n in profile.nodes) == 1
    plan = solve(profile, 1.0, options=SolveOptions(time_limit_s=5))
    planned = load_plan(copy.deepcopy(model), plan)
    out = planned(x)
    out.sum().backward()
    expected = model(x)
    expected.sum().backward()
    assert torch.equal(out, expected)  # y is bit-identical
    for (name, p), q in zip(model.named_parameters(), planned.module.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_value_and_derivative_chunks_are_bit_identical():
    """Chunked forward-mode AD gives the whole call's values bit for bit."""
    x = 3 * torch.randn(3 * 32768 + 17)
    program = (("aten.sigmoid.default", ("%x",), ()), ("aten.mul.Tensor", ("%x", "%0"), ()))
    whole_y, whole_d = vo.pointwise_value_and_derivative(x, program, 2**30)
    y, d = vo.pointwise_value_and_derivative(x, program, 32768 * 4)
    assert torch.equal(y, whole_y) and torch.equal(d, whole_d)
    assert torch.equal(y, x * torch.sigmoid(x))
    s = torch.sigmoid(x)
    torch.testing.assert_close(d, s + x * s * (1 - s))


def test_chain_read_elsewhere_is_not_fused():
    """An intermediate also read outside the chain must stay: nothing is fused."""
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(16, 16)

        def forward(self, x):
            h = self.up(x)
            s = torch.sigmoid(h)
            return (h * s).sum() + s.mean()  # s is read by the chain and by the loss
    profile = profile_model(Leaky(), (torch.randn(4, 16),), estimate=True)
    assert not any(n.target == FUSED for n in profile.nodes)


def test_gpt2_style_mlp_in_a_recomputing_plan():
    """A stack of tanh-GELU MLPs planned under a budget that recomputes: output and loss
    bit-identical to eager, gradients within float32 rounding; the executor's peak is the
    simulator's."""
    torch.manual_seed(2)
    model = nn.Sequential(*[MLP(tanh_gelu, 32) for _ in range(4)])
    x = torch.randn(128, 32)
    profile = profile_model(model, (x,), estimate=True)
    assert sum(n.target == FUSED for n in profile.nodes) == 4
    plan = solve(profile, 0.85, options=SolveOptions(time_limit_s=6))
    recomputed = {profile.nodes[o].target for r in plan.recompute for o in r}
    assert FUSED in recomputed
    planned = load_plan(copy.deepcopy(model), plan)
    out = planned(x)
    out.square().sum().backward()
    expected = model(x)
    expected.square().sum().backward()
    assert torch.equal(out, expected)
    assert planned.last_peak_bytes == plan.predicted_peak_bytes
    # Within float32 rounding: each gradient within 1e-5 of its largest entry (measured:
    # at most 2.5e-7, below eager's own distance to float64, 3.9e-7).
    for (name, p), q in zip(model.named_parameters(), planned.module.parameters()):
        assert (q.grad - p.grad).abs().max() <= 1e-5 * p.grad.abs().max(), name
