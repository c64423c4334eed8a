"""The planner: its memory model against the independent simulator, the backends, errors."""
import copy
import itertools

import pytest

from conftest import assert_same_step, model_case, train_step
from planner import InfeasibleBudgetError, solve
from planner.backends import SolveOptions
from planner.formulation import build_stage_milp
from planner.heuristic import checkpoint_decisions, structural_candidates
from planner.peak_search import checkpoints_of, lower_peak, worse_than
from planner.schedule import (
    Schedule,
    ScheduleError,
    Step,
    all_variants,
    baseline_decisions,
    build_schedule,
)
from planner.simulator import SimulationError, simulate, simulate_by_stage
from planner.solve import planner_graph
from runtime import load_plan

OPTIONS = SolveOptions(time_limit_s=6)


@pytest.mark.parametrize("name", ["gpt", "resnet18"])
def test_formulation_memory_equals_simulator(name):
    """For many different plans the MILP's memory rows give exactly the simulated peak:
    checkpoint plans that recompute in every stage that needs a value, and plans that hold
    what they recompute to its last use (``torch.utils.checkpoint``'s way; their keep sets
    start after the stage that recomputed)."""
    case = model_case(name)
    graph = planner_graph(case.profile)
    times = [n.time_s for n in case.profile.nodes]
    structural = list(structural_candidates(graph, times))
    held = [checkpoint_decisions(graph, checkpoints_of(graph, d), hold_recomputed=True)
            for d in structural[::3]]
    plans = [baseline_decisions(graph), *structural, *held]
    for mode in ("none", "all"):  # without and with writes in place
        milp = build_stage_milp(graph, times, budget=10**15, max_recompute_depth=None,
                                in_place=mode)
        # The memory claim of a returned plan builds its rows alone (planner.solve).
        rows = build_stage_milp(graph, times, budget=10**15, max_recompute_depth=None,
                                in_place=mode, rows_only=True)
        assert not rows.problem.constraints and len(rows.memory_rows) == len(milp.memory_rows)
        for d in plans:
            d.in_place = mode
            peak = simulate(case.profile, build_schedule(graph, d)).peak_bytes
            assert milp.evaluate_peak(d) == peak
            assert rows.evaluate_peak(d) == peak


def test_compiled_values_agree_with_pulp(gpt_case):
    """The numpy view of the MILP (planner.milp_vectors) against PuLP's own evaluation: at a
    plan's values every constraint holds, each auxiliary is the largest of its lower
    expressions (and 0), and the objective is PuLP's."""
    graph = planner_graph(gpt_case.profile)
    times = [n.time_s for n in gpt_case.profile.nodes]
    plans = [baseline_decisions(graph), *structural_candidates(graph, times)]
    milp = build_stage_milp(graph, times, budget=10**15, in_place="all")
    checked = 0
    for d in plans:
        d.in_place = "all"
        if not milp.represents(d):
            continue
        milp.set_start(d)
        for name, constraint in milp.problem.constraints.items():
            assert constraint.valid(1e-6), name
        for a in milp.aux:
            assert a.var.varValue == pytest.approx(
                max([0.0] + [e.value() for e in a.lower]), abs=1e-9)
        assert milp.objective_of(d) == pytest.approx(milp.problem.objective.value(), rel=1e-12)
        assert milp.evaluate_peak(d) == max(round(row.value()) for row in milp.memory_rows)
        checked += 1
    assert checked >= 2


def test_schedule_refuses_missing_tensors(gpt_case):
    graph = planner_graph(gpt_case.profile)
    d = baseline_decisions(graph)
    k = next(k for k in range(len(graph.stages)) if graph.stage_need_storages(k))
    d.keep[k] -= graph.stage_need_storages(k)
    with pytest.raises(ScheduleError, match="neither kept nor recomputed"):
        build_schedule(graph, d)


def test_simulator_checks_inputs_independently(gpt_case):
    graph = planner_graph(gpt_case.profile)
    good = build_schedule(graph, baseline_decisions(graph))
    first_run = next(i for i, s in enumerate(good.forward) if s.kind == "run")
    broken = Schedule(forward=good.forward[first_run + 1:], backward=good.backward,
                      saved=good.saved)
    with pytest.raises(SimulationError):
        simulate(gpt_case.profile, broken)
    with pytest.raises(SimulationError, match="freed but not held"):
        simulate(gpt_case.profile, Schedule(forward=[Step("free", good.forward[0].node, -1)]))


def test_cbc_backend_gives_a_correct_plan(gpt_case):
    plan = solve(gpt_case.profile, 0.7, backend="cbc",
                 options=SolveOptions(time_limit_s=5, variants="exact"))
    assert plan.solver.name == "cbc"
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    model = load_plan(copy.deepcopy(gpt_case.model), plan)
    result = train_step(model, gpt_case.inputs)
    assert model.last_peak_bytes == plan.predicted_peak_bytes
    for name, grad in gpt_case.eager.grads.items():
        assert (result.grads[name] == grad).all()


def test_lower_budget_costs_time_and_solver_reports_gap(gpt_case):
    loose = solve(gpt_case.profile, 0.8, options=OPTIONS)
    tight = solve(gpt_case.profile, 0.65, options=OPTIONS)
    assert tight.predicted_peak_bytes <= loose.budget_bytes
    assert tight.predicted_time_s >= loose.predicted_time_s >= loose.baseline_time_s
    assert tight.solver.bound is not None and tight.solver.gap is not None
    assert 0 <= tight.solver.gap <= 1
    # The same bound on the whole step: the lowest step time it allows, against the plan's.
    fastest = tight.baseline_time_s + tight.solver.bound
    step = tight.baseline_time_s + tight.solver.objective
    assert tight.step_gap == pytest.approx((step - fastest) / step, abs=1e-12)
    assert tight.step_gap <= tight.solver.gap
    assert f"{tight.step_gap:.2%} of the step" in tight.gap_text()
    assert tight.solver_peak_bytes == tight.predicted_peak_bytes
    # The solver's objective is the simulator's extra time when the solver's plan is kept.
    extra = tight.predicted_time_s - tight.baseline_time_s
    assert tight.solver.objective == pytest.approx(extra, rel=1e-6, abs=1e-12)


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver"):
        solve(model_case("gpt").profile, 0.6, backend="gurobi", options=OPTIONS)


def test_peak_search_lowers_the_peak_with_valid_plans():
    """The peak-directed local search returns a plan whose simulation it reports, with a
    lower peak than the plan it starts from, and whose run equals eager's."""
    case = model_case("resnet18")
    graph = planner_graph(case.profile)
    start = baseline_decisions(graph)
    start_peak = simulate(case.profile, build_schedule(graph, start)).peak_bytes
    decisions, result = lower_peak(case.profile, graph, start, graph.variant_sites("exact"),
                                   time_limit_s=20)
    assert result.peak_bytes < 0.8 * start_peak
    assert simulate(case.profile, build_schedule(graph, decisions)).peak_bytes == \
        result.peak_bytes
    plan = solve(case.profile, result.peak_bytes,
                 options=SolveOptions(time_limit_s=3, variants="exact"),
                 hints=[decisions])
    model = load_plan(copy.deepcopy(case.model), plan)
    step = train_step(model, case.inputs)
    assert model.last_peak_bytes == plan.predicted_peak_bytes <= result.peak_bytes
    assert_same_step(step, case.eager, exact=True, case=case)


def test_the_search_replays_stage_by_stage_what_simulate_replays_whole():
    """The local searches build and replay a plan a stage at a time, and stop at the first
    stage where it is worse than the one they have: a plan replayed to the end gives the
    simulator's numbers and the stage of the peak step; one above a peak anywhere, or at it
    and no faster, gives None."""
    case = model_case("resnet18")
    graph = planner_graph(case.profile)
    times = [n.time_s for n in case.profile.nodes]
    plans = [baseline_decisions(graph)] + list(itertools.islice(
        structural_candidates(graph, times, all_variants(graph)), 4))
    for decisions in plans:
        schedule = build_schedule(graph, decisions)
        whole = simulate(case.profile, schedule)
        runs = [s for s in schedule.backward if s.kind == "run"]
        stage = -1 if whole.peak_step < whole.forward_steps else \
            runs[whole.peak_step - whole.forward_steps].stage
        for reject in (None, worse_than(whole.peak_bytes, whole.time_s * 1.001)):
            result, peak_stage = simulate_by_stage(case.profile, graph, decisions, reject)
            assert (result.peak_bytes, result.time_s, result.memory, result.peak_step,
                    result.forward_steps, peak_stage) == \
                (whole.peak_bytes, whole.time_s, whole.memory, whole.peak_step,
                 whole.forward_steps, stage)
        for peak, seconds in ((whole.peak_bytes - 1, 1e9), (whole.peak_bytes, whole.time_s)):
            assert simulate_by_stage(case.profile, graph, decisions,
                                     worse_than(peak, seconds)) is None
        # A plan above the limit in a backward stage is dropped there, before the rest of
        # its stages are replayed.
        forward_peak = max(whole.memory[:whole.forward_steps])
        seen: list[float] = []
        assert (simulate_by_stage(case.profile, graph, decisions, lambda peak, seconds:
                                  seen.append(seconds) or peak > forward_peak) is None) == \
            (stage >= 0)
        if stage >= 0:
            assert len(seen) <= stage + 2 and seen[-1] <= whole.time_s


def test_problems_too_large_for_the_time_limit_use_heuristics(gpt_case, monkeypatch, caplog):
    """Where the MILP could not even be built in the time limit (DenseNet-201's 880K binaries
    take two minutes), heuristic plans and the peak search answer, and say so."""
    monkeypatch.setattr("planner.time_shares.BUILD_SIZE_PER_SECOND", 1)
    plan = solve(gpt_case.profile, 0.7, options=SolveOptions(time_limit_s=2))
    assert plan.solver.status == "heuristic" and plan.solver.bound is None
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.solver_peak_bytes == plan.predicted_peak_bytes
    assert "too long for a 2 s limit" in caplog.text
    with pytest.raises(InfeasibleBudgetError, match="the smallest feasible budget is"):
        solve(gpt_case.profile, 0.05, options=SolveOptions(time_limit_s=2))


def test_the_build_estimate_follows_the_machine_speed(gpt_case, monkeypatch):
    """The time shares' build estimate is for this machine: a machine half as fast at
    building PuLP expressions is given twice the build time, and the speed is measured once
    per process."""
    from planner import time_shares

    graph = planner_graph(gpt_case.profile)
    speed = time_shares.machine_speed()
    assert 0.1 <= speed <= 4.0 and time_shares.machine_speed() == speed
    here = time_shares.estimated_build_s(graph)
    monkeypatch.setattr(time_shares, "machine_speed", lambda: speed / 2)
    assert time_shares.estimated_build_s(graph) == pytest.approx(2 * here)


@pytest.mark.parametrize("name", ["gpt", "resnet18"])
def test_per_block_checkpointing_is_among_the_candidates(name):
    """Per-block checkpointing of the model's modules (each op recomputed once, in the first
    stage that needs it, and held) is a candidate: a valid plan that trains exactly, and no
    solve at its peak returns a slower plan."""
    from collections import Counter

    from planner.heuristic import module_block_candidates
    from planner.solve import evaluate, plan_for
    case = model_case(name)
    graph = planner_graph(case.profile)
    once = []
    for d in module_block_candidates(graph):
        counts = Counter(o for stage in d.recompute for o in stage)
        if counts and max(counts.values()) == 1:
            once.append((d, evaluate(case.profile, graph, d).result))
    assert once, "no per-block plan recomputes each op once"
    d, result = min(once, key=lambda e: e[1].time_s)
    planned = load_plan(copy.deepcopy(case.model), plan_for(case.profile, d))
    assert_same_step(train_step(planned, case.inputs), case.eager, exact=True, case=case)
    plan = solve(case.profile, result.peak_bytes, options=SolveOptions(time_limit_s=5))
    assert plan.predicted_time_s <= result.time_s * (1 + 1e-9)
