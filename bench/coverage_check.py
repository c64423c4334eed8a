"""One coverage check: capture, profile (estimated), plan at half the unoptimised peak,
run one planned and one eager training step from the same RNG state, compare.

Plans use only exact operator variants (``variants="exact"``), so loss and gradients are
expected to equal eager's bit for bit on the CPU; where they do not, the largest absolute
and relative differences are recorded.
"""
from __future__ import annotations

import copy
import logging
import time
import traceback
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

log = logging.getLogger(__name__)


@dataclass
class CoverageResult:
    """What one model's coverage check found."""

    name: str
    family: str
    input: str
    status: str = ""  # "exact", "within tolerance ...", "FAILED: ..."
    nodes: int = 0
    params: int = 0
    baseline_peak: int = 0
    budget: int = 0
    budget_note: str = ""  # "0.5" or "smallest feasible + 5 %"
    predicted_peak: int = 0
    executor_peak: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.status.startswith("FAILED")


def forced_recompute_plan(profile, plan):
    """A plan that checkpoints every second forward op and recomputes the others, with
    ``plan``'s variants: where the budget needs no recomputation (parameters and their
    gradients set the peak of most models at coverage sizes), this still checks that
    recomputed values, replayed random ops and buffer updates give eager's step."""
    from planner.heuristic import checkpoint_decisions
    from planner.solve import plan_for, planner_graph
    graph = planner_graph(profile)
    decisions = checkpoint_decisions(graph, set(graph.ops()[::2]), plan.decisions().variants)
    return plan_for(profile, decisions)


def loss_of(output) -> torch.Tensor:
    """A loss over every floating tensor the model returns (dicts, tuples, ModelOutput),
    giving each element a different gradient."""
    leaves = [t for t in pytree.tree_leaves(output)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    if not leaves:
        raise ValueError("the model returns no floating tensor that requires grad")
    total = None
    for t in leaves:
        w = torch.linspace(-1, 1, t.numel(), dtype=torch.float32).view_as(t)
        term = (t.float() * w).sum()
        total = term if total is None else total + term
    return total


def train_step(model: torch.nn.Module, inputs, seed: int = 1234,
               autocast: torch.dtype | None = None):
    """Loss and parameter gradients of one step from a fixed RNG state."""
    torch.manual_seed(seed)
    device = next(iter(model.parameters())).device.type
    with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
        out = model(*inputs)
        loss = loss_of(out)
    loss.backward()
    named = model.module if hasattr(model, "runner") else model
    return loss.detach(), {n: p.grad.clone() for n, p in named.named_parameters()
                           if p.grad is not None}


def compare(result: CoverageResult, planned, eager, float64=None) -> None:
    """Set ``result.status`` from a planned and an eager step. Where they differ,
    ``float64()`` gives eager's gradients in float64: a gradient no further from eager than
    twice eager's own float32 error (or within 1e-4 of its largest entry) is float32
    rounding, as tests/conftest.py judges norm variants."""
    (l1, g1), (l0, g0) = planned, eager
    if g1.keys() != g0.keys():
        result.status = f"FAILED: gradients of {sorted(g0.keys() ^ g1.keys())[:3]} missing"
        return
    if torch.equal(l1, l0) and all(torch.equal(g1[k], g0[k]) for k in g0):
        result.status = "exact"
        return
    abs_d, rel_d = float((l1 - l0).abs()), float((l1 - l0).abs() / l0.abs().clamp_min(1e-30))
    worse: list[str] = []
    reference = None
    for k in g0:
        if torch.equal(g1[k], g0[k]) or not g0[k].numel():
            continue
        d = float((g1[k] - g0[k]).abs().max())
        scale = float(g0[k].abs().max())
        abs_d, rel_d = max(abs_d, d), max(rel_d, d / scale if scale else float("inf"))
        if d <= 1e-4 * scale:
            continue
        if reference is None:
            reference = float64() if float64 is not None else {}
        own = float((g0[k].double() - reference[k]).abs().max()) if k in reference else 0.0
        if d > 2 * own:
            worse.append(f"{k}: {d:.1e} from eager, eager's own float32 error {own:.1e}")
    result.max_abs_diff, result.max_rel_diff = abs_d, rel_d
    if worse:
        result.status = f"FAILED: gradients differ beyond float32 rounding ({worse[0]})"
    else:
        result.status = (f"within tolerance {rel_d:.1e} (rel; float32 rounding: no gradient "
                         "further from eager than eager is from float64)")


def _float64_grads(model: torch.nn.Module, inputs, autocast):
    """Eager gradients of the same step in float64 (the rounding reference)."""
    double = [x.double() if x.is_floating_point() else x for x in inputs]
    return train_step(copy.deepcopy(model).double(), double, autocast=autocast)[1]


def check_case(case, fraction: float = 0.5, time_limit_s: float = 10.0,
               variants: str = "exact", autocast: torch.dtype | None = None,
               on_stage=None) -> CoverageResult:
    """Run the whole check for one ``bench.coverage_models.Case``; never raises.
    ``on_stage(name)`` is told each stage as it starts."""
    from planner import InfeasibleBudgetError, solve
    from planner.backends import SolveOptions
    from profiler import profile_model
    from runtime import load_plan

    result = CoverageResult(case.name, case.family, case.describe())
    t0 = time.perf_counter()
    stage = "building the model"
    if on_stage:
        on_stage(stage)
    try:
        model, inputs = case.make()
        result.params = sum(p.numel() for p in model.parameters())
        stage = "capture"
        if on_stage:
            on_stage(stage)
        profile = profile_model(model, inputs, name=case.name, estimate=True,
                                autocast=autocast)
        result.nodes = len(profile.nodes)
        stage = "solve"
        if on_stage:
            on_stage(stage)
        options = SolveOptions(time_limit_s=time_limit_s, variants=variants)
        try:
            plan = solve(profile, fraction, options=options)
            result.budget_note = f"{fraction:g}"
        except InfeasibleBudgetError as e:
            if e.smallest_feasible is None:
                raise
            plan = solve(profile, int(e.smallest_feasible * 1.05), options=options)
            result.budget_note = f"smallest feasible + 5 % ({fraction:g} infeasible)"
        if not any(plan.recompute):
            plan = forced_recompute_plan(profile, plan)
            result.budget_note += "; recomputes nothing there, so every 2nd op is checkpointed"
        result.baseline_peak, result.budget = plan.baseline_peak_bytes, plan.budget_bytes
        result.predicted_peak = plan.predicted_peak_bytes
        stage = "planned step"
        if on_stage:
            on_stage(stage)
        planned_model = load_plan(copy.deepcopy(model), plan)
        planned = train_step(planned_model, inputs, autocast=autocast)
        result.executor_peak = planned_model.last_peak_bytes
        del planned_model
        stage = "eager step"
        if on_stage:
            on_stage(stage)
        eager = train_step(copy.deepcopy(model), inputs, autocast=autocast)
        compare(result, planned, eager,
                lambda: _float64_grads(model, inputs, autocast))
        if result.ok and result.executor_peak > result.predicted_peak:
            result.status = (f"FAILED: executor peak {result.executor_peak} > predicted "
                             f"{result.predicted_peak}")
        elif result.ok and result.executor_peak < result.predicted_peak:
            result.status += (f" (executor peak {result.predicted_peak - result.executor_peak}"
                              " bytes below the prediction)")
    except Exception as e:  # recorded in the table, with the stage it failed in
        log.debug("%s failed:\n%s", case.name, traceback.format_exc())
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result.status = f"FAILED in {stage}: {type(e).__name__}: {first[:400]}"
    result.seconds = time.perf_counter() - t0
    return result
