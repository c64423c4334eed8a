"""Models returning dicts, OrderedDicts, namedtuples or outputs that need no gradient: the
planned module returns the same structure and trains like eager."""
from __future__ import annotations

import collections
import copy

import pytest
import torch

from bench.coverage_check import loss_of
from planner import solve
from planner.backends import SolveOptions
from profiler import capture, profile_model
from runtime import load_plan

Pair = collections.namedtuple("Pair", ["main", "aux"])


class Body(torch.nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                     torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1))
        self.b = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):
        h = self.a(x)
        y = self.b(h)
        if self.kind == "dict":
            return {"out": y, "aux": h.mean((2, 3))}
        if self.kind == "ordereddict":
            return collections.OrderedDict([("p2", h), ("p3", y)])
        if self.kind == "namedtuple":
            return Pair(y, h)
        return y, y.argmax(1)  # the indices need no gradient


@pytest.mark.parametrize("kind", ["dict", "ordereddict", "namedtuple", "non-differentiable"])
def test_structured_output_trains_like_eager(kind):
    torch.manual_seed(0)
    model = Body(kind).train()
    x = torch.randn(8, 3, 32, 32)
    profile = profile_model(model, (x,), estimate=True)
    plan = solve(profile, 0.9, options=SolveOptions(time_limit_s=3, variants="exact"))
    assert sum(map(len, plan.recompute)) > 0

    def step(m):
        torch.manual_seed(1)
        out = m(x)
        loss_of(out).backward()
        inner = m.module if hasattr(m, "runner") else m
        return out, {n: p.grad for n, p in inner.named_parameters()}

    planned_out, planned = step(load_plan(copy.deepcopy(model), plan))
    eager_out, eager = step(copy.deepcopy(model))
    assert type(planned_out) is type(eager_out)
    flat_p, spec_p = torch.utils._pytree.tree_flatten(planned_out)
    flat_e, spec_e = torch.utils._pytree.tree_flatten(eager_out)
    assert spec_p == spec_e
    assert all(torch.equal(a, b) for a, b in zip(flat_p, flat_e))
    assert [t.requires_grad for t in flat_p] == [t.requires_grad for t in flat_e]
    for name, g in eager.items():
        assert torch.equal(planned[name], g), name


def test_output_structure_is_part_of_the_graph_hash():
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    as_dict = capture(Body("dict"), (x,)).graph_hash
    torch.manual_seed(0)
    as_tuple = Body("namedtuple")
    assert capture(as_tuple, (x,)).graph_hash != as_dict
