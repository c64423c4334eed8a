"""Shared fixtures: small real models, their profiles and eager reference steps."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# GPU tests compare measured peaks with predictions to 2 %: with expandable segments the
# CUDA caching allocator splits every large block it hands out, so allocated bytes are the
# requests rounded to 512 (bench/memory_model.md). Set before CUDA initialises.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `make test` runs one pytest-xdist worker per core: each gets its share of the cores
    # rather than all of them (every test compares eager and planned steps in one process,
    # so the thread count changes no comparison).
    torch.set_num_threads(max(1, (os.cpu_count() or 1)
                              // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from profiler import load_model, profile_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_seconds(seconds: float) -> float:
    """A time limit that buys the work ``seconds`` bought on the machine the planner's time
    shares were measured on: longer on a slower machine (``planner.time_shares``)."""
    from planner.time_shares import machine_speed

    return seconds / min(1.0, machine_speed())


def monet(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``monet`` as a user runs it: a new interpreter, from the repository root (``env``:
    further environment variables)."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), timeout=600)


def imported_modules(stderr: str) -> set[str]:
    """The modules a process run with PYTHONPROFILEIMPORTTIME=1 imported."""
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """``monet`` in this process (same entry point as the command, without the 3-4 s
    start-up of a new interpreter importing torch): for the bad-argument cases."""
    from runtime.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err)
    return run

# name -> (model spec, load_model keyword arguments). Inputs are chosen so that
# activations matter; see test_models_exact.py for which budgets each one can reach.
MODELS = {
    "resnet18": ("torchvision:resnet18", {"batch": 32, "image_size": 160}),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {"batch": 16, "image_size": 96}),
    "vgg11": ("torchvision:vgg11", {"batch": 4, "image_size": 32}),
    "gpt": ("examples.gpt:gpt_small", {}),
    "gpt_fused": ("examples.gpt:gpt_small_fused", {}),
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


# Plans whose variants rebuild a norm's input from its output match eager within float32
# rounding, not bit for bit: each gradient within NORM_RTOL of its largest entry, or, where
# eager's own float32 rounding is larger than that (deep CNNs at random initialisation),
# no further from eager than twice eager's own distance to a float64 run.
NORM_RTOL = 1e-4


def plan_is_exact(plan) -> bool:
    """Whether a plan's variants all do the original arithmetic (bit-identical gradients)."""
    from profiler.variants import RULE_BY_NAME
    return all(RULE_BY_NAME[v].exact for v in plan.variants.values())


def assert_same_step(planned: StepResult, eager: StepResult, exact: bool = True,
                     case: "ModelCase | None" = None) -> None:
    """Loss, output, buffers and RNG state equal eager's bit for bit; gradients too, or
    (``exact=False``) within float32 rounding as NORM_RTOL says (``case`` gives the float64
    reference)."""
    assert torch.equal(planned.output, eager.output)
    assert torch.equal(planned.loss, eager.loss)
    assert planned.grads.keys() == eager.grads.keys()
    for name, grad in eager.grads.items():
        if exact:
            assert torch.equal(planned.grads[name], grad), f"gradient of {name} differs"
        else:
            diff = (planned.grads[name] - grad).abs().max()
            if diff <= NORM_RTOL * grad.abs().max():
                continue
            assert case is not None, f"gradient of {name}: difference {diff:.2e}"
            own = (grad.double() - case.float64_grads()[name]).abs().max()
            assert diff <= 2 * own, f"gradient of {name}: {diff:.2e} from eager, whose own " \
                                    f"float32 error is {own:.2e}"
    for name, buf in eager.buffers.items():
        assert torch.equal(planned.buffers[name], buf), f"buffer {name} differs"
    assert torch.equal(planned.rng_after, eager.rng_after), "RNG state after the step differs"


@dataclass
class ModelCase:
    name: str
    model: torch.nn.Module  # pristine copy; deep-copy before use
    inputs: tuple
    profile: object
    eager: StepResult
    _float64: dict | None = None

    def float64_grads(self) -> dict[str, torch.Tensor]:
        """Eager gradients of the same step in float64: the reference for rounding."""
        if self._float64 is None:
            model = copy.deepcopy(self.model).double()
            inputs = [x.double() if x.is_floating_point() else x for x in self.inputs]
            self._float64 = train_step(model, inputs).grads
        return self._float64


_CACHE: dict[str, ModelCase] = {}


def model_case(name: str) -> ModelCase:
    if name not in _CACHE:
        spec, kwargs = MODELS[name]
        model, inputs = load_model(spec, **kwargs)
        profile = profile_model(model, inputs, name=spec, estimate=True)
        eager = train_step(copy.deepcopy(model), inputs)
        _CACHE[name] = ModelCase(name, model, inputs, profile, eager)
    return _CACHE[name]


def slowest_checkpoint_start(name: str):
    """``name``'s slowest structural checkpoint plan and the stage MILP (no writes in place)
    at the budget it just fits: (profile, graph, milp, budget, start)."""
    from planner.formulation import build_stage_milp
    from planner.heuristic import structural_candidates
    from planner.solve import planner_graph
    profile = model_case(name).profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    probe = build_stage_milp(graph, times, 10**15, in_place="none")
    start = max((d for d in structural_candidates(graph, times) if probe.represents(d)),
                key=probe.objective_of)
    budget = probe.evaluate_peak(start)  # the start just fits
    return profile, graph, build_stage_milp(graph, times, budget, in_place="none"), budget, start


@pytest.fixture
def gpt_case() -> ModelCase:
    return model_case("gpt")
