"""Forward ops writing over an input that is dead after them (``planner.in_place``).

Which ops qualify; the batch norm that normalises in place against ATen's functional op;
and whole plans with and without writes in place: bit-identical to eager on the CPU, the
executor's peak, the simulator's and the MILP's equal, and never above the same plan's
peak without them. The simulator refuses a schedule that reads a value after it was
written over.
"""
from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import assert_same_step, model_case, train_step
from planner import plan_for, solve
from planner.backends import SolveOptions
from planner.candidates import uses_only_variants
from planner.formulation import build_stage_milp
from planner.heuristic import checkpoint_decisions
from planner.in_place import allowed_writes, pointwise_out_overload
from planner.inspect import describe_plan
from planner.plan import Plan
from planner.schedule import build_schedule
from planner.simulator import SimulationError, simulate
from planner.solve import planner_graph
from profiler.batch_norm_kernels import batch_norm_into
from profiler.ir import FORWARD, Profile, ProfileFormatError
from profiler.out_overloads import pointwise_out_table
from profiler.variants import RULE_BY_NAME
from runtime import load_plan

aten = torch.ops.aten
PROFILES = Path(__file__).resolve().parents[1] / "configs" / "profiles"


def test_out_overloads_of_element_wise_ops():
    assert pointwise_out_overload("aten.add.Tensor") is aten.add.out
    assert pointwise_out_overload("aten.relu.default") is aten.relu.out
    assert pointwise_out_overload("aten.clamp.Tensor") is aten.clamp.Tensor_out
    assert pointwise_out_overload("aten.gelu.default") is aten.gelu.out
    for name in ("aten.convolution.default", "aten.native_dropout.default",
                 "aten.bernoulli.p", "aten.mm.default", "profiler.variant_ops.relu_mask"):
        assert pointwise_out_overload(name) is None, name


def test_profiles_record_which_ops_have_out_overloads():
    """The profile's table, from which the planner decides writes in place without torch
    (``monet solve``, the full-MILP worker), is torch's answer for each forward target, in
    a new profile and in the committed ones; the writes follow it, and a profile made before
    the table was recorded gets the same writes from torch."""
    profile = model_case("resnet18").profile
    forward = [n.target for n in profile.nodes if n.role == FORWARD]
    assert set(profile.pointwise_out) == set(forward)
    assert profile.pointwise_out["aten.relu.default"] and profile.pointwise_out["aten.add.Tensor"]
    assert not profile.pointwise_out["aten.convolution.default"]
    for path in sorted(PROFILES.glob("*.json")):
        committed = Profile.load(str(path))
        assert committed.pointwise_out == pointwise_out_table(committed.nodes), path.name
    writes = allowed_writes(planner_graph(profile), "all")
    relu = {o for o in writes if profile.nodes[o].target == "aten.relu.default"}
    assert relu
    old = dataclasses.replace(profile, pointwise_out={})
    assert allowed_writes(planner_graph(old), "all") == writes
    no_relu = dataclasses.replace(
        profile, pointwise_out={**profile.pointwise_out, "aten.relu.default": False})
    assert set(allowed_writes(planner_graph(no_relu), "all")) == set(writes) - relu
    with pytest.raises(ProfileFormatError, match="pointwise_out"):
        Profile.from_json({**profile.to_json(), "pointwise_out": {"aten.relu.default": 1}})


@pytest.mark.parametrize("shape", [(7, 5, 3), (2, 4, 33, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_writing_over_an_input_gives_the_same_bits(shape, dtype):
    """Each element-wise op of the models, through its ``out=`` overload into one of its
    inputs, equals the functional op; channels-last layouts included."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    if len(shape) == 4:
        a, b = (t.to(memory_format=torch.channels_last) for t in (a, b))
    cases = [("aten.relu.default", (a,), {}, 0), ("aten.add.Tensor", (a, b), {}, 1),
             ("aten.add.Tensor", (a, b), {"alpha": 0.5}, 1),
             ("aten.gelu.default", (a,), {"approximate": "tanh"}, 0),
             ("aten.hardtanh.default", (a, -0.5, 0.5), {}, 0),
             ("aten.mul.Tensor", (a, b), {}, 0)]
    for name, args, kwargs, into in cases:
        op = getattr(getattr(aten, name.split(".")[1]), name.split(".")[2])
        ref = op(*args, **kwargs)
        copies = [t.clone(memory_format=torch.preserve_format) if isinstance(t, torch.Tensor)
                  else t for t in args]
        got = pointwise_out_overload(name)(*copies, **kwargs, out=copies[into])
        assert got.data_ptr() == copies[into].data_ptr()
        assert torch.equal(got, ref) and got.stride() == ref.stride(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((6, 5, 7, 3), False), ((6, 5, 7, 3), True),
                                                 ((9, 4, 11), False)])
def test_batch_norm_into_is_the_functional_op(shape, channels_last, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    w, b = torch.randn(c, generator=g, dtype=dtype), torch.randn(c, generator=g, dtype=dtype)
    rm, rv = torch.randn(c, generator=g, dtype=dtype), torch.rand(c, generator=g, dtype=dtype)
    ref = aten._native_batch_norm_legit_functional.default(x, w, b, rm, rv, True, 0.1, 1e-5)
    target = x.clone(memory_format=torch.preserve_format)
    got = batch_norm_into(target, w, b, rm, rv, True, 0.1, 1e-5)
    assert got[0].data_ptr() == target.data_ptr()
    for r, o in zip(ref, got):
        assert torch.equal(r, o)
    assert got[0].stride() == ref[0].stride()


def test_which_ops_write_in_place():
    graph = planner_graph(model_case("resnet18").profile)
    every = allowed_writes(graph, "all")
    kinds = Counter(graph.nodes[o].target.split(".")[1] for o in every)
    assert kinds == {"_native_batch_norm_legit_functional": 20, "relu": 17, "add": 8}
    exact = allowed_writes(graph, "exact")
    assert set(exact) == {o for o, w in every.items() if "batch_norm" not in
                          graph.nodes[o].target}
    assert allowed_writes(graph, "none") == {}
    for w in every.values():  # never a parameter, buffer, input or user output
        assert w.storage in graph.creator and w.storage not in graph.pinned_storages
        assert w.input in graph.nodes[w.op].inputs
    # The GPT's GELU reads its linear layer's output through a view of the whole storage.
    gpt = planner_graph(model_case("gpt").profile)
    kinds = Counter(gpt.nodes[o].target for o in allowed_writes(gpt, "all"))
    assert kinds["aten.gelu.default"] == 2 and kinds["aten.add.Tensor"] >= 4


@pytest.mark.parametrize("name", ["resnet18", "gpt"])
def test_plans_writing_in_place(name):
    """Random checkpoint plans and variants: the MILP's peak is the simulator's, at most
    the same plan's without writes in place (and lower for some), the executor measures it,
    and the step is bit-identical to eager (on the CPU every write in place runs the same
    kernel)."""
    case = model_case(name)
    graph = planner_graph(case.profile)
    times = [n.time_s for n in case.profile.nodes]
    milp = build_stage_milp(graph, times, budget=10**15, max_recompute_depth=None)
    rng = random.Random(1)
    ops, sites = graph.ops(), sorted(graph.variants)
    lower = 0
    for i in range(6):
        variants = {e: graph.variants[e][0].name for e in sites if rng.random() < 0.5}
        checkpoints = {o for o in ops if rng.random() < 0.4}
        d = checkpoint_decisions(graph, checkpoints, variants, in_place="all")
        schedule = build_schedule(graph, d)
        assert any(step.into >= 0 for step in schedule.backward)  # in recompute phases
        sim = simulate(case.profile, schedule)
        assert milp.evaluate_peak(d) == sim.peak_bytes
        plain = simulate(case.profile, build_schedule(graph, dataclasses.replace(
            d, in_place="none")))
        assert sim.peak_bytes <= plain.peak_bytes
        lower += sim.peak_bytes < plain.peak_bytes
        if i < 2:
            exact = {e: v for e, v in variants.items() if RULE_BY_NAME[v].exact}
            d = checkpoint_decisions(graph, checkpoints, exact, in_place="all")
            plan = plan_for(case.profile, d)
            assert plan.in_place == "all"
            model = load_plan(copy.deepcopy(case.model), plan)
            result = train_step(model, case.inputs)
            assert model.last_peak_bytes == plan.predicted_peak_bytes == plan.solver_peak_bytes
            assert_same_step(result, case.eager, exact=True)
    if name == "resnet18":  # the GPT's peaks are elsewhere (its head and loss)
        assert lower >= 1


def test_simulator_refuses_reading_an_overwritten_value():
    case = model_case("resnet18")
    graph = planner_graph(case.profile)
    d = checkpoint_decisions(graph, set(graph.ops()[::3]), in_place="all")
    schedule = build_schedule(graph, d)
    simulate(case.profile, schedule)
    # Mark a forward run as writing over an input that the backward still reads.
    writes = allowed_writes(graph, "all")
    for i, step in enumerate(schedule.forward):
        w = writes.get(step.node)
        if step.kind == "run" and step.into < 0 and w is not None:
            schedule.forward[i] = step._replace(into=w.input)
            break
    with pytest.raises(SimulationError, match="after a run in place wrote over it"):
        simulate(case.profile, schedule)


def test_solve_modes_and_plan_files(tmp_path):
    case = model_case("resnet18")
    graph = planner_graph(case.profile)
    d = checkpoint_decisions(graph, set(graph.ops()[::2]), in_place="all")
    assert uses_only_variants(graph, "all", d)
    assert not uses_only_variants(graph, "exact", d)
    assert not uses_only_variants(graph, "none", d)
    assert uses_only_variants(graph, "exact", dataclasses.replace(d, in_place="exact"))
    plain = solve(case.profile, 0.6, options=SolveOptions(time_limit_s=5, variants="none"))
    assert plain.in_place == "none" and not plain.variants
    best = solve(case.profile, 0.6, options=SolveOptions(time_limit_s=5))
    assert best.in_place == "all"
    path = str(tmp_path / "plan.json")
    best.save(path)
    assert Plan.load(path).decisions().in_place == "all"
    assert "in place" in describe_plan(best)


def test_profiles_without_strides_write_nothing():
    """A profile from before strides were recorded offers no write in place, and its plans
    say so (the runtime captures the graph again, with strides)."""
    old = copy.deepcopy(model_case("resnet18").profile)
    for n in old.nodes:
        n.strides = []
    graph = planner_graph(old)
    assert allowed_writes(graph, "all") == {}
    plan = plan_for(old, checkpoint_decisions(graph, set(graph.ops()[::2]), in_place="all"))
    assert plan.in_place == "none"
