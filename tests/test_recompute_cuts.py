"""Recomputation cuts (``planner.recompute_cuts``): valid at every plan, and separated into a
HiGHS model they raise its LP bound without changing its optimum."""
from __future__ import annotations

import random

import highspy
import pytest

from conftest import model_case
from planner import recompute_cuts
from planner.formulation import build_stage_milp
from planner.heuristic import checkpoint_decisions, module_block_candidates, structural_candidates
from planner.recompute_cuts import recomputation_cuts, separate
from planner.schedule import all_variants, baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from planner.window_highs import PersistentHiGHS


@pytest.mark.parametrize("name", ["gpt", "resnet18"])
def test_every_plan_is_a_point_of_the_formulation(name):
    """Plans of every kind (checkpoint sets at random, with and without variants and with
    recomputed values held, per-block, structural) satisfy every row of the stage MILP
    with its recomputation cuts, apart from the memory rows (the budget is unlimited): the
    cuts cut off no plan."""
    profile = model_case(name).profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    every = all_variants(graph)
    rng = random.Random(0)
    ops = sorted(graph.ops())
    plans = [checkpoint_decisions(graph, set(rng.sample(ops, int(len(ops) * share))),
                                  variants={e: v for e, v in every.items()
                                            if i % 2 and rng.random() < 0.7},
                                  hold_recomputed=i % 3 == 0)
             for i, share in enumerate([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7] * 3)]
    plans += list(module_block_candidates(graph)) + list(module_block_candidates(graph, every))
    plans += list(structural_candidates(graph, times, every))
    milp = build_stage_milp(graph, times, 10**15, max_recompute_depth=None, in_place="none",
                            recompute_cuts=True)
    rows = [c for c in milp.problem.constraints.values() if not c.name.startswith("mem_")]
    assert any(c.name.startswith("gain_") for c in rows)
    assert any(c.name.startswith("choice_") for c in rows)
    assert any(c.name.startswith("needpath_") for c in rows)
    checked = 0
    for d in plans:
        if not milp.represents(d):
            continue
        milp.set_start(d)
        broken = [c.name for c in rows if not c.valid(1e-9)]
        assert not broken, broken[:5]
        checked += 1
    assert checked >= 20


def _lp_bound(h: highspy.Highs) -> float:
    n = h.getNumCol()
    integrality = list(h.getLp().integrality_)
    h.changeColsIntegrality(n, list(range(n)), [0] * n)
    h.run()
    value = h.getInfo().objective_function_value
    h.changeColsIntegrality(n, list(range(n)), integrality)
    return value


def test_separated_cuts_raise_the_lp_bound_and_keep_the_optimum(gpt_case):
    """On the GPT at 0.75 of its peak (chains of 3 recomputed ops): the violated cuts are
    added, the LP bound rises, the columns are integer again afterwards, and the MILP's
    optimum is the one without cuts."""
    graph = planner_graph(gpt_case.profile)
    times = [n.time_s for n in gpt_case.profile.nodes]
    peak = simulate(gpt_case.profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    optimum = {}
    for with_cuts in (False, True):
        milp = build_stage_milp(graph, times, int(0.75 * peak), max_recompute_depth=3)
        h = PersistentHiGHS(milp.problem, 1e-6, 1).highs
        before = _lp_bound(h)
        rows = h.getNumRow()
        if with_cuts:
            cuts = recomputation_cuts(graph, milp.keep, milp.recompute,
                                      graph.variant_sites("all"))
            added = separate(h, cuts, deadline=float("inf"))
            assert 0 < added < len(cuts) and h.getNumRow() == rows + added
            assert _lp_bound(h) > before * 1.01
        assert list(h.getLp().integrality_) == [
            highspy.HighsVarType.kInteger if v.cat == "Integer" else
            highspy.HighsVarType.kContinuous for v in milp.problem.variables()]
        h.setOptionValue("time_limit", 30.0)
        h.run()
        assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
        optimum[with_cuts] = h.getInfo().objective_function_value
    assert optimum[True] == pytest.approx(optimum[False], rel=1e-6)


def test_a_separation_stopped_far_from_done_adds_the_other_cuts(gpt_case):
    """Stopped after one round, the separation adds the other cuts only when more than the
    given share of them was violated in that round, or (with any share, as the full-MILP
    worker's 1.0) when it solved no LP in time."""
    graph = planner_graph(gpt_case.profile)
    times = [n.time_s for n in gpt_case.profile.nodes]
    peak = simulate(gpt_case.profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    added = {}
    for above, deadline in ((None, float("inf")), (0.0, float("inf")), (0.99, float("inf")),
                            (1.0, float("inf")), (None, 0.0), (1.0, 0.0)):
        milp = build_stage_milp(graph, times, int(0.75 * peak), max_recompute_depth=3)
        h = PersistentHiGHS(milp.problem, 1e-6, 1).highs
        cuts = recomputation_cuts(graph, milp.keep, milp.recompute, graph.variant_sites("all"))
        added[above, deadline] = separate(h, cuts, deadline=deadline, rounds=1,
                                          add_rest_above=above)
    checked = {above: added[above, float("inf")] for above in (None, 0.0, 0.99, 1.0)}
    assert 0 < checked[None] == checked[0.99] == checked[1.0] < checked[0.0] == len(cuts)
    assert added[None, 0.0] == 0 and added[1.0, 0.0] == len(cuts)


def test_need_cuts_raise_the_lp_bound(monkeypatch):
    """On ResNet-18 at 0.75 of its peak the LP relaxation with every other cut meets a
    stage's need partly through the tensor held and partly through its recomputation, each
    with its own share of the input: the need cuts (``NEED_CUT_DEPTH``) raise its bound by
    more than 3 % (0.01841 to 0.01974 s when written), and following more inputs up never
    lowers it."""
    profile = model_case("resnet18").profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    peak = simulate(profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    bound = {}
    for depth in (0, 1, 3):
        monkeypatch.setattr(recompute_cuts, "NEED_CUT_DEPTH", depth)
        milp = build_stage_milp(graph, times, int(0.75 * peak), max_recompute_depth=3,
                                recompute_cuts=True)
        assert any(c.startswith("needpath_") for c in milp.problem.constraints) == (depth > 0)
        bound[depth] = _lp_bound(PersistentHiGHS(milp.problem, 1e-6, 1).highs)
    assert bound[1] > 1.03 * bound[0]
    assert bound[3] >= bound[1] * (1 - 1e-9)
