"""What the capture cannot trace is refused with an error naming the module, the op and the
line, never run with a wrong gradient; a traceable custom autograd.Function is captured with
its own backward and trains like eager."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import loss_of
from planner import solve
from planner.backends import SolveOptions
from profiler import CaptureError, capture, profile_model
from runtime import load_plan


class Net(torch.nn.Module):
    """``block`` between two linear layers, so the failing module is a nested one."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.inp = torch.nn.Linear(8, 8)
        self.block = block
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.block(self.inp(x)))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x.relu()
        return x.tanh()


class NonzeroIndex(torch.nn.Module):
    def forward(self, x):
        return x[torch.nonzero(x > 0, as_tuple=True)].sum().expand(x.shape) * x


class NumpyDouble(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(x.detach().numpy() * 2)

    @staticmethod
    def backward(ctx, g):
        return 2 * g


class ScaleByMax(torch.autograd.Function):
    """A backward that reads a Python number from a tensor: untraceable."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * float(x.abs().max())


class CubeWithOwnGrad(torch.autograd.Function):
    """A traceable custom Function whose backward is not the derivative of its forward
    (so a capture that ignored it would give another gradient)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x * x + 0.5


class Cube(torch.nn.Module):
    def forward(self, x):
        return x * x * x


class Applies(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn.apply(x)


CASES = {
    "data-dependent control flow": (DataDependent(), "_local_scalar_dense",
                                    "if x.sum() > 0", "data-dependent control flow"),
    "data-dependent shape": (NonzeroIndex(), "aten.nonzero", "torch.nonzero",
                             "output shape depends on the data"),
    "custom Function leaving torch": (Applies(NumpyDouble), "", "NumpyDouble.forward",
                                      "numpy"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_untraceable_forward_names_module_op_and_line(case):
    block, op, line, reason = CASES[case]
    with pytest.raises(CaptureError) as err:
        capture(Net(block), (torch.randn(3, 8),))
    message = str(err.value)
    assert f"in module 'block' ({type(block).__name__})" in message
    assert op in message and line in message and reason in message
    assert "test_unsupported.py" in message


def test_untraceable_custom_backward_names_the_function():
    with pytest.raises(CaptureError) as err:
        capture(Net(Applies(ScaleByMax)), (torch.randn(3, 8),))
    message = str(err.value)
    assert "ScaleByMax.backward" in message and "float(x.abs().max())" in message
    assert "custom autograd.Function" in message and "_local_scalar_dense" in message


def test_refused_model_is_refused_by_the_runtime_too():
    """load_plan re-captures: a model that became untraceable is refused, never run."""
    model = Net(torch.nn.ReLU())
    x = torch.randn(3, 8)
    plan = solve(profile_model(model, (x,), estimate=True), 1.0)
    broken = copy.deepcopy(model)
    broken.block = DataDependent()
    with pytest.raises(ValueError, match="data-dependent control flow"):
        load_plan(broken, plan)


def test_traceable_custom_function_trains_like_eager():
    torch.manual_seed(0)
    model = Net(Applies(CubeWithOwnGrad))
    x = torch.randn(16, 8)
    profile = profile_model(model, (x,), estimate=True)
    plan = solve(profile, 1.0, options=SolveOptions(time_limit_s=5))

    def step(m):
        out = m(x)
        loss_of(out).backward()
        inner = m.module if hasattr(m, "runner") else m
        return {n: p.grad for n, p in inner.named_parameters()}

    eager = step(copy.deepcopy(model))
    planned = step(load_plan(copy.deepcopy(model), plan))
    assert eager.keys() == planned.keys()
    for name in eager:
        assert torch.equal(eager[name], planned[name]), name
    # The custom backward is the one used: autograd's derivative of x**3 differs.
    plain = copy.deepcopy(model)
    plain.block = Cube()
    assert not torch.equal(step(plain)["inp.weight"], eager["inp.weight"])
