"""GPU checks (skipped without CUDA): gradients equal eager within float tolerance, and the
measured peak of a planned step stays under the budget."""
import copy

import pytest
import torch

from examples.gpt import gpt_small

pytestmark = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@requires_cuda
def test_gpt_plan_on_cuda():
    from planner import solve
    from planner.backends import SolveOptions
    from profiler import profile_model
    from runtime import load_plan
    model, tokens = gpt_small(batch=8, seq=64)
    model, tokens = model.cuda().train(), tokens.cuda()
    profile = profile_model(model, (tokens,), estimate=False)
    plan = solve(profile, 0.7, options=SolveOptions(time_limit_s=20))
    eager = copy.deepcopy(model)
    planned = load_plan(copy.deepcopy(model), plan)
    torch.manual_seed(0)
    eager(tokens).square().mean().backward()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    planned(tokens).square().mean().backward()
    assert torch.cuda.max_memory_allocated() <= plan.budget_bytes * 1.02
    for a, b in zip(eager.parameters(), planned.module.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
