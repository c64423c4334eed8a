"""Shared fixtures: small real models, their profiles and eager reference steps."""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from profiler import load_model, profile_model  # noqa: E402

# name -> (model spec, load_model keyword arguments). Inputs are chosen so that
# activations matter; see test_models_exact.py for which budgets each one can reach.
MODELS = {
    "resnet18": ("torchvision:resnet18", {"batch": 32, "image_size": 160}),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"batch": 16, "image_size": 96}),
    "vgg11": ("torchvision:vgg11", {"batch": 4, "image_size": 32}),
    "gpt": ("examples.gpt:gpt_small", {}),
}


def loss_of(output: torch.Tensor) -> torch.Tensor:
    """A loss that gives every output element a different gradient."""
    weights = torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)
    return (output * weights).sum()


@dataclass
class StepResult:
    output: torch.Tensor
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    rng_after: torch.Tensor


def train_step(model: torch.nn.Module, inputs, seed: int = 1234) -> StepResult:
    """One forward/backward from a fixed RNG state; returns everything eager would change."""
    torch.manual_seed(seed)
    output = model(*inputs)
    loss = loss_of(output)
    loss.backward()
    named = model.module if hasattr(model, "runner") else model
    return StepResult(output.detach(), loss.detach(),
                      {n: p.grad.clone() for n, p in named.named_parameters()
                       if p.grad is not None},
                      {n: b.clone() for n, b in named.named_buffers()}, torch.get_rng_state())


@dataclass
class ModelCase:
    name: str
    model: torch.nn.Module  # pristine copy; deep-copy before use
    inputs: tuple
    profile: object
    eager: StepResult


_CACHE: dict[str, ModelCase] = {}


def model_case(name: str) -> ModelCase:
    if name not in _CACHE:
        spec, kwargs = MODELS[name]
        model, inputs = load_model(spec, **kwargs)
        profile = profile_model(model, inputs, name=spec, estimate=True)
        eager = train_step(copy.deepcopy(model), inputs)
        _CACHE[name] = ModelCase(name, model, inputs, profile, eager)
    return _CACHE[name]


@pytest.fixture
def gpt_case() -> ModelCase:
    return model_case("gpt")
