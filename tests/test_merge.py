"""Merging the changes of two window searches (planner.merge)."""
from __future__ import annotations

from dataclasses import replace

from conftest import model_case
from planner.formulation import build_stage_milp
from planner.heuristic import structural_candidates
from planner.merge import merged_decisions, merged_point
from planner.schedule import Decisions, baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from planner.window_highs import PersistentHiGHS


def test_changes_are_applied_and_the_rest_is_kept():
    base = Decisions(keep=[{1, 2}, {2}], recompute=[set(), set()],
                     variants={7: "relu_mask", 8: "relu_mask"})
    changed = Decisions(keep=[{1, 3}, {2}], recompute=[set(), {5}],
                        variants={7: "relu_mask", 9: "dropout_bits"})
    target = Decisions(keep=[{1, 2, 4}, set()], recompute=[{6}, set()],
                       variants={7: "other", 8: "relu_mask"}, in_place="all")
    merged = merged_decisions(target, base, changed)
    # 2 dropped and 3 added at stage 0, 5 recomputed at stage 1, variant 8 dropped and 9
    # added; what the change did not touch is the target's (4, 6, the target's variant 7
    # and its empty keep set at stage 1).
    assert merged.keep == [{1, 3, 4}, set()]
    assert merged.recompute == [{6}, {5}]
    assert merged.variants == {7: "other", 9: "dropout_bits"}
    assert merged.in_place == "all"
    # No change: the target itself.
    assert merged_decisions(target, base, base) == target


def test_a_merge_is_taken_only_if_it_keeps_every_row():
    """Changes made from the unoptimised plan, merged into it, give the changed plan; a
    change that drops a needed tensor without recomputing it breaks a row and is
    refused."""
    profile = model_case("resnet18").profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    base = baseline_decisions(graph)
    peak = simulate(profile, build_schedule(graph, base)).peak_bytes
    milp = build_stage_milp(graph, times, peak)
    base = replace(base, in_place=milp.in_place)
    model = PersistentHiGHS(milp.problem, 1e-4, 1)
    plans = (replace(d, in_place=milp.in_place) for d in structural_candidates(graph, times))
    plan = next(d for d in plans if milp.represents(d) and any(d.recompute)
                and milp.evaluate_peak(d) <= milp.budget)
    assert merged_point(milp, model, base, base, plan, None) == plan
    # A storage the last stage reads, dropped wherever its keep variable there holds:
    # still a point of the problem, but the stage's need row breaks.
    k = len(graph.stages) - 1
    needed = next(iter(graph.stage_need_storages(k, {}) & base.keep[k]))
    variable = milp.keep[(k, needed)]
    dropped = replace(base, keep=[kept - {needed} if milp.keep.get((j, needed)) is variable
                                  else kept for j, kept in enumerate(base.keep)])
    assert milp.represents(dropped)
    assert merged_point(milp, model, base, base, dropped, None) is None
