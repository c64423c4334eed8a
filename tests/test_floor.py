"""The peak floor (planner.floor): below every plan's peak, and what an infeasible budget
under it reports."""
from __future__ import annotations

import copy
import dataclasses
import random

import pytest

from conftest import model_case
from planner import InfeasibleBudgetError, solve
from planner.backends import SolveOptions
from planner.floor import node_floors, peak_floor
from planner.heuristic import checkpoint_decisions
from planner.schedule import build_schedule
from planner.simulator import simulate
from planner.solve import evaluate, planner_graph
from profiler.ir import BACKWARD


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11", "gpt"])
def test_floor_is_below_every_plan(name):
    """Random plans, from recomputing everything to keeping most, with and without
    variants and writes in place: no run of a node holds less than the node's floor, no
    plan peaks below the floor, and the lowest of them is within a factor of the floor
    (it is not vacuous)."""
    case = model_case(name)
    graph = planner_graph(case.profile)
    floor = peak_floor(case.profile, graph)
    floors = node_floors(case.profile, graph)
    constants = sum(case.profile.storage_bytes[s] for s in graph.constant_storages)
    assert floor.node and floor.peak_bytes > constants
    rng = random.Random(3)
    ops, sites = graph.ops(), sorted(graph.variants)
    lowest = None
    for keep in (0.0, 0.0, 0.1, 0.3, 0.6, 1.0):
        for mode in ("all", "none"):
            variants = {e: rng.choice(graph.variants[e]).name for e in sites
                        if mode == "all" and rng.random() < 0.7}
            checkpoints = {o for o in ops if rng.random() < keep}
            d = checkpoint_decisions(graph, checkpoints, variants, in_place=mode)
            schedule = build_schedule(graph, d)
            sim = simulate(case.profile, schedule)
            peak = sim.peak_bytes
            assert peak >= floor.peak_bytes, (keep, mode, peak, floor)
            # Every run of every node holds at least that node's floor.
            runs = [step.node for step in schedule.forward + schedule.backward
                    if step.kind == "run"]
            assert len(runs) == len(sim.memory)
            for node, held in zip(runs, sim.memory):
                if node in floors:
                    assert held >= floors[node].peak_bytes, (keep, mode, floors[node], held)
            lowest = peak if lowest is None else min(lowest, peak)
    assert lowest < 3 * floor.peak_bytes


def test_budget_below_the_floor_is_refused_with_its_reason():
    """A backward node given a workspace larger than the whole step sets the floor: a
    budget under it is infeasible, the error names the node and its workspace, and the
    smallest feasible budget it names is at least the floor and solves."""
    case = model_case("resnet18")
    profile = copy.deepcopy(case.profile)
    base = evaluate(profile, planner_graph(profile),
                    checkpoint_decisions(planner_graph(profile), set()))
    target = next(n for n in profile.nodes
                  if n.role == BACKWARD and n.target.startswith("aten.convolution_backward"))
    nodes = list(profile.nodes)
    nodes[target.index] = dataclasses.replace(target, workspace_bytes=base.result.peak_bytes)
    profile = dataclasses.replace(profile, nodes=nodes)
    floor = peak_floor(profile, planner_graph(profile))
    assert floor.node == target.name and floor.workspace_bytes == base.result.peak_bytes
    options = SolveOptions(time_limit_s=6.0)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(profile, floor.peak_bytes - 1, options=options)
    error = info.value
    assert error.lower_bound == floor.peak_bytes
    assert error.smallest_feasible is not None and error.smallest_feasible >= floor.peak_bytes
    assert "no plan can peak below" in str(error) and target.name in str(error)
    assert "workspace" in str(error)
    plan = solve(profile, error.smallest_feasible, options=options)
    assert floor.peak_bytes <= plan.predicted_peak_bytes <= error.smallest_feasible


def test_error_says_infeasible_only_when_proven():
    """Below the floor a budget is infeasible, with the floor's reason; above it, without a
    plan found, the error says no plan was found and how far the floor is below the best."""
    from planner.floor import PeakFloor
    floor = PeakFloor(5_000, "convolution_backward_3", 1_000, 1_000, 3_000)
    below = InfeasibleBudgetError(4_000, 6_000, "parameters", proven=False, floor=floor)
    assert str(below).startswith("budget 3.91 KiB (4000 bytes) is infeasible")
    assert "convolution_backward_3 needs" in str(below) and below.proven
    above = InfeasibleBudgetError(5_500, 6_000, "parameters", proven=False, floor=floor)
    assert str(above).startswith("no plan found for budget") and not above.proven
    assert "no plan peaks below 5000 bytes, 16.67 % less" in str(above)
    assert str(above).endswith("a longer time limit may find one")
    at_floor = InfeasibleBudgetError(4_000, 5_000, "parameters", proven=False, floor=floor)
    assert "proven: no plan peaks below it" in str(at_floor)


def test_output_gradients_are_freed_after_their_last_reader():
    """The runtime takes the output gradients from the autograd engine and frees each after
    its last reader (``runtime.module``); the schedule, the simulator, the MILP's rows and
    the floor agree. The GPT's logits' gradient goes after the head's backward, so the last
    backward node's floor no longer holds it."""
    from planner.formulation import build_stage_milp
    case = model_case("gpt")
    graph = planner_graph(case.profile)
    size = case.profile.storage_bytes
    tangents = graph.tangent_storages - graph.pinned_storages
    assert tangents and graph.tangent_nodes
    decisions = checkpoint_decisions(graph, set())
    schedule = build_schedule(graph, decisions)
    steps = schedule.backward
    for m in graph.tangent_nodes:
        last = graph.executed[graph.backward_last_use[m]]
        at = next(i for i, st in enumerate(steps) if st.kind == "free" and st.node == m)
        ran = max(i for i, st in enumerate(steps[:at]) if st.kind == "run")
        assert steps[ran].node == last  # freed right after its last reader ran
    floor = node_floors(case.profile, graph)[graph.executed[-1]]
    assert floor.resident_bytes < sum(size[s] for s in
                                      graph.constant_storages | graph.pinned_storages) + \
        sum(size[s] for s in tangents) + sum(
            size[s] for e in graph.grad_nodes for s in case.profile.nodes[e].storages)
    sim = simulate(case.profile, schedule)
    milp = build_stage_milp(graph, [n.time_s for n in case.profile.nodes], None,
                            minimize_peak=True, max_recompute_depth=0, include=decisions,
                            in_place=decisions.in_place)
    assert milp.evaluate_peak(decisions) == sim.peak_bytes
