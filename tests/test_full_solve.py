"""The full MILP in a second process beside the window search (planner.full_solve)."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import replace

import pytest

from conftest import imported_modules, model_case, reference_seconds
from planner import full_solve as full_solve_module
from planner import solve
from planner.backends import SolveOptions
from planner.formulation import build_stage_milp
from planner.full_solve import FullSolveProcess
from planner.heuristic import structural_candidates
from planner.schedule import baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from profiler.ir import Profile

# Every test here starts the worker on the second core, or times the solve: run alone.
pytestmark = pytest.mark.alone

needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core")


@pytest.fixture(autouse=True)
def worker_at_short_limits(monkeypatch):
    """These tests run the worker at limits under PARALLEL_MIN_LIMIT_S, to stay short."""
    monkeypatch.setattr(full_solve_module, "PARALLEL_MIN_LIMIT_S", 0.0)


def _resnet18_with_a_plan(share: float):
    """ResNet-18's profile, its stage MILP at ``share`` of its unoptimised peak, and the
    fastest checkpoint plan that fits it."""
    profile = model_case("resnet18").profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    peak = simulate(profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    milp = build_stage_milp(graph, times, int(share * peak))
    offered = min((replace(d, in_place=milp.in_place)
                   for d in structural_candidates(graph, times)),
                  key=lambda d: (not milp.represents(d) or milp.evaluate_peak(d) > milp.budget,
                                 milp.objective_of(d) if milp.represents(d) else 0))
    assert milp.represents(offered) and milp.evaluate_peak(offered) <= milp.budget
    return profile, milp, offered


def _worker_given(profile, milp, offered, limit_s: float):
    """The worker on ``milp``'s budget for ``limit_s``, offered ``offered`` at once: its
    outcome, its newest plan and the process object (stopped)."""
    full = FullSolveProcess(profile, milp.budget, limit_s, SolveOptions())
    try:
        full.offer(offered)
        outcome, last = full.close(limit_s + 4.0)
    finally:
        full.stop()
    return outcome, last, full


def test_plans_travel_both_ways():
    """The worker builds the problem from the profile; a plan offered to it comes back as
    its incumbent (or a better one), as decisions that are a point of the same problem
    built here, with the objective the worker reports; its bound is at most that.

    At 4-5 s the worker spends most of its time starting and building the problem, and
    HiGHS may end in presolve, with no bound: the plan offered meanwhile comes back
    because it is the MIP start. (Before, the offer was read by HiGHS's callbacks only,
    and at 4 s came back with ``no_solution``, 2 runs of 2, as in CI on two loaded cores
    at 8 s.)"""
    profile, milp, offered = _resnet18_with_a_plan(0.75)
    outcome, last, full = _worker_given(profile, milp, offered, 5.0)
    assert outcome.status in ("optimal", "feasible")
    assert outcome.bound is None or outcome.bound <= outcome.objective + 1e-9
    assert outcome.objective <= milp.objective_of(offered) + 1e-9
    assert last is not None
    objective, decisions, _base = last
    assert milp.represents(decisions)
    assert milp.objective_of(decisions) == pytest.approx(objective, rel=1e-6, abs=1e-9)
    assert milp.evaluate_peak(decisions) <= milp.budget * (1 + 1e-6)
    assert not os.path.exists(full.dir)


def test_the_worker_leaves_its_tree_for_windows_at_its_switch_time():
    """A 60 s solve's worker searches windows from its switch time on whether or not its
    root node is done; at a short limit (the sweep's) only once it is, or at ROOT_WAIT;
    never before HiGHS has both bounds, nor with its gap already within WINDOWS_GAP."""
    from planner.full_worker import (
        EARLY_SWITCH_LEFT_S,
        ROOT_WAIT,
        WINDOWS_GAP,
        searches_windows_now,
    )
    plan, bound = 1.0, 0.5  # a gap of 50 %
    limit, at = 57.8, 0.4 * 57.8
    assert limit - at >= EARLY_SWITCH_LEFT_S
    assert not searches_windows_now(at - 1.0, limit, at, plan, bound, 0)
    assert searches_windows_now(at, limit, at, plan, bound, 0)
    assert not searches_windows_now(at, limit, at, plan, -math.inf, 0)
    assert not searches_windows_now(at, limit, at, math.inf, bound, 0)
    assert not searches_windows_now(at, limit, at, plan, plan * (1 - WINDOWS_GAP / 2), 3)
    limit, at = 16.0, 0.4 * 16.0
    assert limit - at < EARLY_SWITCH_LEFT_S
    assert not searches_windows_now(at, limit, at, plan, bound, 0)
    assert searches_windows_now(at, limit, at, plan, bound, 1)
    assert searches_windows_now(ROOT_WAIT * limit, limit, at, plan, bound, 0)


@needs_two_cores
def test_a_worker_searching_windows_sends_its_changes_with_their_base(monkeypatch):
    """A worker whose branch and bound has not closed its gap by WINDOWS_AFTER of its limit
    searches windows from the plan offered: its plans come with the base its changes
    started from, both points of the problem, and the plan is better than the offer and
    keeps the budget."""
    monkeypatch.setattr(full_solve_module, "WINDOWS_AFTER", 0.0)
    profile, milp, offered = _resnet18_with_a_plan(0.6)
    outcome, last, _ = _worker_given(profile, milp, offered, 8.0)
    assert outcome.status == "feasible", outcome
    assert last is not None, outcome
    objective, decisions, base = last
    assert base is not None, (outcome, objective)  # the newest plan came from a window
    assert milp.represents(base) and milp.represents(decisions)
    assert objective == pytest.approx(milp.objective_of(decisions), rel=1e-6, abs=1e-9)
    assert objective < milp.objective_of(offered)
    assert milp.evaluate_peak(decisions) <= milp.budget


def test_the_worker_starts_without_torch(tmp_path):
    """The worker needs only the Profile and the planner, and imports no torch (2.7 s of
    its start here): ``profiler`` imports its torch modules on first use."""
    import subprocess

    profile = model_case("resnet18").profile
    path = tmp_path / "profile.json"
    profile.save(str(path))
    assert any(profile.pointwise_out.values())  # the worker reads the profile's table
    root = os.path.dirname(os.path.dirname(full_solve_module.WORKER))
    r = subprocess.run([sys.executable, "-P", "-X", "importtime", full_solve_module.WORKER,
                        str(path), "--dir", str(tmp_path), "--time-limit", "2", "--lowest"],
                       env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(line.startswith("DONE ") for line in r.stderr.splitlines())
    imported = imported_modules(r.stderr)
    assert {"highspy", "profiler.ir", "planner.formulation"} <= imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_the_worker_gets_the_table_of_out_overloads_of_an_older_profile():
    """A profile made before ``Profile.pointwise_out`` was recorded reaches the worker with
    the table made here, so the worker still needs no torch."""
    profile = model_case("resnet18").profile
    older = replace(profile, pointwise_out={})
    full = FullSolveProcess(older, None, 2.0, SolveOptions(time_limit_s=2.0))
    try:
        sent = Profile.load(os.path.join(full.dir, "profile.json"))
    finally:
        full.stop()
    assert sent.pointwise_out == profile.pointwise_out and any(sent.pointwise_out.values())


def test_dtype_sizes_without_torch_are_torchs():
    import torch

    from planner.in_place import _ITEMSIZE

    for name, size in _ITEMSIZE.items():
        assert getattr(torch, name).itemsize == size, name


@needs_two_cores
def test_solve_runs_the_full_milp_beside_the_windows(caplog):
    """A budgeted solve starts the worker, reports its bound (at least the LP's, no more
    than the plan's objective) and returns a plan the simulator confirms."""
    profile = model_case("resnet18").profile
    with caplog.at_level(logging.INFO, logger="planner"):
        plan = solve(profile, 0.7, options=SolveOptions(time_limit_s=reference_seconds(8)))
    assert "full MILP started in process" in caplog.text
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.solver_peak_bytes == plan.predicted_peak_bytes
    s = plan.solver
    assert s.bound is not None and s.bound <= s.objective + 1e-9
    # wall time: room for load on two cores (as in test_solvers)
    assert s.solve_time_s <= reference_seconds(8) * 1.2


@needs_two_cores
def test_a_proof_of_optimality_ends_the_solve_early():
    """When the worker proves its plan optimal, the window search stops: the solve returns
    long before its limit with gap 0."""
    profile = model_case("gpt").profile
    t0 = time.perf_counter()
    plan = solve(profile, 0.8, options=SolveOptions(time_limit_s=reference_seconds(120)))
    assert time.perf_counter() - t0 < reference_seconds(60)
    assert plan.solver.status == "optimal" and plan.solver.gap == pytest.approx(0, abs=1e-4)
    assert plan.predicted_peak_bytes <= plan.budget_bytes


@needs_two_cores
def test_a_failing_worker_loses_nothing(monkeypatch, tmp_path, caplog):
    """A worker that dies at once: the solve still returns the window search's plan, and
    says why the worker ended."""
    broken = tmp_path / "broken_worker.py"
    broken.write_text("import sys\nprint('no solver here', file=sys.stderr)\nsys.exit(3)\n")
    monkeypatch.setattr(full_solve_module, "WORKER", str(broken))
    profile = model_case("resnet18").profile
    with caplog.at_level(logging.WARNING, logger="planner.full_solve"):
        plan = solve(profile, 0.7, options=SolveOptions(time_limit_s=10))
    assert "ended with status 3" in caplog.text and "no solver here" in caplog.text
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.solver.objective is not None


@needs_two_cores
def test_a_worker_proving_its_problem_infeasible_ends_nothing(monkeypatch, tmp_path):
    """A worker whose problem lacks the plan's deeper recomputations may find it infeasible
    (U-Net's measured profile at 1/3): the window search still runs, and the plan is
    reported feasible with the in-process MILP's bound, not as infeasible."""
    infeasible = tmp_path / "infeasible_worker.py"
    infeasible.write_text("import sys\nprint('DONE infeasible nan nan 0.1', file=sys.stderr)\n")
    monkeypatch.setattr(full_solve_module, "WORKER", str(infeasible))
    profile = model_case("resnet18").profile
    plan = solve(profile, 0.7, options=SolveOptions(time_limit_s=reference_seconds(5)))
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    s = plan.solver
    assert s.status in ("feasible", "optimal"), s
    assert s.bound is not None and s.bound <= s.objective + 1e-9


@needs_two_cores
def test_an_error_in_the_search_stops_the_worker(monkeypatch):
    """An exception while the worker runs ends it and removes its files."""
    started: list[FullSolveProcess] = []

    class Recorded(FullSolveProcess):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    def fail(*args, **kwargs):
        raise RuntimeError("search failed")

    solve_module = sys.modules["planner.solve"]  # planner.solve is also the function
    monkeypatch.setattr(solve_module, "FullSolveProcess", Recorded)
    monkeypatch.setattr(solve_module, "faster_within", fail)
    with pytest.raises(RuntimeError, match="search failed"):
        solve(model_case("resnet18").profile, 0.7, options=SolveOptions(time_limit_s=30))
    assert len(started) == 1
    assert started[0].process.poll() is not None
    assert not os.path.exists(started[0].dir)


def test_one_process_when_asked_or_on_one_core(monkeypatch):
    monkeypatch.setattr(full_solve_module, "PARALLEL_MIN_LIMIT_S", 15.0)
    assert full_solve_module.parallel_available(SolveOptions(time_limit_s=15), "highs") == \
        ((os.cpu_count() or 1) >= 2)
    assert not full_solve_module.parallel_available(SolveOptions(time_limit_s=10), "highs")
    assert not full_solve_module.parallel_available(SolveOptions(parallel=False), "highs")
    assert not full_solve_module.parallel_available(SolveOptions(threads=1), "highs")
    assert not full_solve_module.parallel_available(SolveOptions(), "cbc")
    monkeypatch.setattr(full_solve_module.os, "cpu_count", lambda: 1)
    assert not full_solve_module.parallel_available(SolveOptions(), "highs")


@needs_two_cores
def test_lowest_peak_search_beside_the_worker(caplog):
    """The min-peak MILP in the worker, the peak search and windows here: the plan found is
    at most the lowest heuristic peak, and the worker's bound (MiB) at most its peak."""
    from planner.candidates import heuristic_candidates, lowest_peak_search
    from planner.formulation import MIB_SCALE
    profile = model_case("resnet18").profile
    graph = planner_graph(profile)
    candidates, _ = heuristic_candidates(profile, graph, None, 5.0, "all")
    with caplog.at_level(logging.INFO, logger="planner"):
        lowest, outcome = lowest_peak_search(profile, graph, "highs",
                                             SolveOptions(time_limit_s=10), candidates)
    assert "full MILP started in process" in caplog.text
    assert lowest.result.peak_bytes <= min(e.result.peak_bytes for e in candidates)
    assert outcome.bound is not None
    assert outcome.bound <= lowest.result.peak_bytes * MIB_SCALE * (1 + 1e-6)
    again = simulate(profile, build_schedule(graph, lowest.decisions))
    assert again.peak_bytes == lowest.result.peak_bytes


def test_worker_sends_the_lp_relaxation_rounded_here():
    """The worker's plain LP relaxation (``FullSolveProcess.lp_rounding``) is the one
    ``lp_rounding_candidates`` solves in this process: the same optimum, and its rounded
    plans are plans that run. Where its LP has no optimum (a budget no plan fits) it says
    so at once instead of leaving the planner to wait until ``until``."""
    from planner.candidates import evaluate
    from planner.heuristic import lp_rounding_candidates, rounded_candidates
    profile = model_case("resnet18").profile
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    peak = simulate(profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    budget = int(0.6 * peak)
    full = FullSolveProcess(profile, budget, 30.0, SolveOptions())
    try:
        rounding = full.lp_rounding(time.perf_counter() + 25.0)
    finally:
        full.stop()
    here, bound = lp_rounding_candidates(graph, times, budget)
    assert rounding is not None and bound is not None
    assert rounding.objective == pytest.approx(bound, rel=1e-6, abs=1e-9)
    plans = rounded_candidates(graph, rounding)
    assert plans and here
    assert all(evaluate(profile, graph, d).result.time_s > 0 for d in plans)

    full = FullSolveProcess(profile, 1, 30.0, SolveOptions())
    try:
        t0 = time.perf_counter()
        assert full.lp_rounding(t0 + 25.0) is None
        assert time.perf_counter() - t0 < 20.0
    finally:
        full.stop()
