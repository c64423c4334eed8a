"""Operator variants inside whole plans: the memory model, the runtime and the gradients.

The variant kernels on their own are tested in test_variant_ops.py. Here every variant a
model offers runs inside a plan: bit-identical to eager for the exact variants (masks,
pooling), within float32 rounding for the norms run from their output; the executor's
peak, the simulator's and the formulation's agree; and the solver uses variants to beat
checkpointing alone.
"""
from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
import torch

from conftest import assert_same_step, model_case, train_step
from planner import plan_for, solve
from planner.backends import SolveOptions
from planner.formulation import build_stage_milp
from planner.heuristic import checkpoint_decisions
from planner.inspect import describe_plan
from planner.schedule import all_variants, baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from profiler import profile_model
from profiler.variant_names import EXACT_VARIANTS
from profiler.variants import RULE_BY_NAME, RULES
from runtime import load_plan

EXPECTED = {
    "resnet18": {"relu_mask", "batch_norm_from_output", "max_pool_compact"},
    "mobilenet_v2": {"hardtanh_mask", "batch_norm_from_output", "dropout_bits"},
    "vgg11": {"relu_mask", "max_pool_compact", "dropout_bits"},
    "gpt": {"dropout_bits", "layer_norm_from_output"},
    "gpt_fused": {"layer_norm_from_output", "attention_math"},
}


def compare(result, case, exact: bool) -> None:
    assert_same_step(result, case.eager, exact, case=case)


def run(case, plan):
    model = load_plan(copy.deepcopy(case.model), plan)
    result = train_step(model, case.inputs)
    assert model.last_peak_bytes == plan.predicted_peak_bytes == plan.solver_peak_bytes
    return result


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_variant_in_a_whole_plan(name):
    case = model_case(name)
    graph = planner_graph(case.profile)
    every = all_variants(graph)
    assert set(every.values()) == EXPECTED[name]
    exact = {e: v for e, v in every.items() if RULE_BY_NAME[v].exact}
    for chosen, is_exact in ((exact, True), (every, not (every.keys() - exact.keys()))):
        plan = plan_for(case.profile, baseline_decisions(graph, chosen))
        assert len(plan.variants) == len(chosen)
        compare(run(case, plan), case, exact=is_exact)
    # Keeping every tensor, the variants alone lower the peak (VGG's is its parameters'),
    # but for attention_math, which keeps the attention probabilities to save a matmul.
    saving = {e: v for e, v in every.items() if v != "attention_math"}
    if saving != every:
        with_every, plan = plan, plan_for(case.profile, baseline_decisions(graph, saving))
        assert with_every.predicted_peak_bytes > plan.predicted_peak_bytes
    if name != "vgg11":
        assert plan.predicted_peak_bytes < plan.baseline_peak_bytes


@pytest.mark.parametrize("name", ["resnet18", "gpt", "gpt_fused"])
def test_formulation_memory_equals_simulator_with_variants(name):
    """Random variant choices with checkpoint plans: the MILP's peak is the simulator's."""
    case = model_case(name)
    graph = planner_graph(case.profile)
    times = [n.time_s for n in case.profile.nodes]
    milp = build_stage_milp(graph, times, budget=10**15, max_recompute_depth=None,
                            in_place="none")  # with writes in place: test_in_place.py
    rng = random.Random(0)
    ops = graph.ops()
    sites = sorted(graph.variants)
    for _ in range(8):
        variants = {e: graph.variants[e][0].name for e in sites if rng.random() < 0.5}
        checkpoints = {o for o in ops if rng.random() < 0.4}
        d = checkpoint_decisions(graph, checkpoints, variants)
        sim = simulate(case.profile, build_schedule(graph, d))
        assert milp.evaluate_peak(d) == sim.peak_bytes


def test_solver_prefers_variants_and_inspect_reports_them():
    case = model_case("resnet18")
    # At 0.7 of the peak variants pay (about +2.8 % against +5.3 % without, estimated
    # times); at 0.6 the budget sits just above the forward pass's own floor, where a
    # variant's pack has no room and the best plans are the same with and without.
    options = SolveOptions(time_limit_s=10, variants="none")
    plain = solve(case.profile, 0.7, options=options)
    assert not plain.variants
    compare(run(case, plain), case, exact=True)
    best = solve(case.profile, 0.7, options=SolveOptions(time_limit_s=10),
                 hints=[plain.decisions()])
    assert best.predicted_time_s < plain.predicted_time_s
    assert best.variants and best.predicted_peak_bytes <= best.budget_bytes
    compare(run(case, best), case,
            exact=all(RULE_BY_NAME[v].exact for v in best.variants.values()))
    text = describe_plan(best)
    for name, count in Counter(best.variants.values()).items():
        assert any(line.split()[:2] == [name, str(count)] for line in text.splitlines())
    assert "operator variants: none chosen" in describe_plan(plain)


def test_zero_norm_weight_is_refused_not_wrong():
    """A batch norm whose weight has a zero cannot be reconstructed from its output: the
    variant stops the step with an error instead of returning a wrong gradient."""
    case = model_case("resnet18")
    graph = planner_graph(case.profile)
    norms = {e: v for e, v in all_variants(graph).items() if v == "batch_norm_from_output"}
    plan = plan_for(case.profile, baseline_decisions(graph, norms))
    model = copy.deepcopy(case.model)
    with torch.no_grad():
        model.bn1.weight[3] = 0.0
    planned = load_plan(model, plan)
    with pytest.raises(RuntimeError, match="no-variants"):
        train_step(planned, case.inputs)


def test_attention_math_declares_its_temporaries():
    """The attention variant's pack and backward declare at least the temporaries they
    really allocate (measured on the CPU, the profile takes the larger of the two): the
    measured profile's workspaces are the declared ones."""
    case = model_case("gpt_fused")
    measured = profile_model(copy.deepcopy(case.model), case.inputs, estimate=False,
                             repeats=1)
    nodes = [n for n in case.profile.nodes if "attention_ops" in n.target]
    assert len(nodes) == 4 and all(n.workspace_bytes > 0 for n in nodes)
    for n in nodes:
        assert measured.nodes[n.index].target == n.target
        assert measured.nodes[n.index].workspace_bytes == n.workspace_bytes, n.target


def test_exact_variant_names_agree_with_the_rules():
    """The planner's torch-free list of exact variants names registered rules only (the
    rules read their ``exact`` from it)."""
    assert EXACT_VARIANTS == {r.name for r in RULES if r.exact}
