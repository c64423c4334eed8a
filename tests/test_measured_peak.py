"""The memory a planned step really holds equals the prediction.

The executor's own count (``last_peak_bytes``) only sees the values in its environment. This
measures every live storage of the process during the step with
``torch.distributed._tools.mem_tracker.MemTracker`` (a dispatch mode, CPU included), so that
a reference the runtime keeps by mistake (autograd holding saved tensors until the whole
backward returns, say) shows up as a measured peak above the predicted one. The loss is in
the graph, so that the plan covers the whole step.
"""
import copy

import pytest
import torch
import torch.nn as nn

from examples.gpt import gpt_small
from planner import solve
from planner.backends import SolveOptions
from profiler import profile_model
from runtime import load_plan

SCRATCH_SLACK_BYTES = 64 * 1024


class LossStep(nn.Module):
    """``model`` followed by a mean-square loss: the step's output is the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float().square().mean() * 1.0


def _measured_peak(module: nn.Module, inputs) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker
    tracker = MemTracker()
    tracker.track_external(module, *inputs)
    with tracker:
        torch.manual_seed(0)
        module(*inputs).backward()
    return int(sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values()))


def _resnet18():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10), torch.randn(32, 3, 96, 96)


def _gpt():
    torch.manual_seed(0)
    return gpt_small(batch=8, seq=64)


@pytest.mark.parametrize("make,fraction", [(_gpt, 0.5), (_resnet18, 0.8)],
                         ids=["gpt_with_dropout", "resnet18"])
def test_measured_peak_equals_predicted_peak(make, fraction):
    model, x = make()
    step = LossStep(model).train()
    # Measured, so that each node's temporaries (a composite op's intermediate tensors) are
    # in the profile as its workspace, as on CUDA.
    profile = profile_model(step, (x,), estimate=False, repeats=1)
    plan = solve(profile, fraction, options=SolveOptions(time_limit_s=6))
    assert any(plan.recompute), "the plan recomputes nothing: the check would be weak"
    planned = load_plan(copy.deepcopy(step), plan)
    measured = _measured_peak(planned, (x,))
    assert planned.last_peak_bytes == plan.predicted_peak_bytes
    # Equal up to the few KiB of scratch some CPU kernels (the convolution input gradient's)
    # allocate differently from one call to the next; a value the runtime holds too long
    # is a whole tensor (1 MiB and 16 MiB in the bugs this test found).
    assert 0 <= measured - plan.predicted_peak_bytes <= SCRATCH_SLACK_BYTES, \
        (measured, plan.predicted_peak_bytes)
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert measured <= plan.budget_bytes + SCRATCH_SLACK_BYTES  # the same scratch, at a budget
    eager = _measured_peak(copy.deepcopy(step), (x,))
    assert measured < eager


def test_backward_twice_is_refused():
    model, x = _gpt()
    step = LossStep(model).train()
    plan = solve(profile_model(step, (x,), estimate=True), 1.0,
                 options=SolveOptions(time_limit_s=5))
    loss = load_plan(copy.deepcopy(step), plan)(x)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


@pytest.mark.parametrize("take", [True, False], ids=["taken", "left_to_the_engine"])
def test_output_gradient_is_freed_after_its_last_reader(take, monkeypatch):
    """A GPT that returns its logits, the loss computed by the caller: the autograd engine
    holds the gradients it passes to a backward call until the call returns, so without
    the runtime's pre-hook the logits' gradient would stay through the planned backward.
    With it, the measured peak is the predicted one (which frees that gradient after the
    head's backward) plus the caller's weights; left to the engine, it is above by most of
    the gradient."""
    import runtime.module
    torch.manual_seed(0)
    model, x = gpt_small(batch=8, seq=64)
    model.train()
    profile = profile_model(model, (x,), estimate=False, repeats=1)
    plan = solve(profile, 0.6, options=SolveOptions(time_limit_s=6))
    if not take:
        monkeypatch.setattr(runtime.module._TakeOutputGradients, "__call__",
                            lambda self, grads: grads)
    planned = load_plan(copy.deepcopy(model), plan)
    weights = torch.randn(8, 64, 512)  # the caller's loss: a weighted sum of the logits

    from torch.distributed._tools.mem_tracker import MemTracker
    tracker = MemTracker()
    tracker.track_external(planned, weights)
    with tracker:
        torch.manual_seed(0)
        (planned(x) * weights).sum().backward()
    measured = int(sum(d["Total"] for d in tracker.get_tracker_snapshot("peak").values()))
    logits_bytes = weights.numel() * 4
    excess = measured - plan.predicted_peak_bytes - logits_bytes
    if take:
        assert 0 <= excess <= SCRATCH_SLACK_BYTES, (measured, plan.predicted_peak_bytes)
    else:
        # (the 1 MiB gradient held past its reader: 0.8 MiB more at the peak when measured)
        assert excess > 4 * SCRATCH_SLACK_BYTES, (measured, plan.predicted_peak_bytes)
