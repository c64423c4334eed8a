"""Window-by-window improvement (planner.lns): windows of stages and of forward ops, the
worker's plans taken up or merged, and the window model's whole solve."""
from __future__ import annotations

import logging
import time

import pytest

from conftest import model_case, slowest_checkpoint_start
from planner import lns as lns_module
from planner import milp_search as milp_search_module
from planner.backends import SolveOptions, SolveOutcome, solve_problem
from planner.candidates import evaluate
from planner.formulation import build_stage_milp
from planner.lns import improve_by_windows
from planner.schedule import baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph


@pytest.fixture(scope="module")
def resnet18_windows():
    """ResNet-18's slowest structural checkpoint plan at a budget it just fits, and what
    8-stage windows make of it in 8 s: (profile, graph, milp, budget, start, better)."""
    profile, graph, milp, budget, start = slowest_checkpoint_start("resnet18")
    better, _ = improve_by_windows(milp, graph, start, "highs", SolveOptions(), 8.0, window=8)
    return profile, graph, milp, budget, start, better


def test_windows_never_make_a_plan_worse(resnet18_windows):
    """Fix-and-resolve from a checkpoint plan: cheaper or equal, still within the budget,
    and its formulation objective is the simulator's extra time."""
    profile, graph, milp, budget, start, better = resnet18_windows
    unoptimised = simulate(profile, build_schedule(graph, baseline_decisions(graph)))
    assert milp.objective_of(better) <= milp.objective_of(start)
    sim = simulate(profile, build_schedule(graph, better))
    assert sim.peak_bytes <= budget
    assert sim.peak_bytes == milp.evaluate_peak(better)
    extra = sim.time_s - unoptimised.time_s
    assert milp.objective_of(better) == pytest.approx(extra, rel=1e-6, abs=1e-12)
    # The variables' bounds are restored.
    assert all(v.lowBound in (0, None) and v.upBound in (1, None)
               for v in milp.problem.variables())


def test_forward_op_windows_alone_make_a_plan_faster(resnet18_windows):
    """Windows of consecutive forward ops (each frees every variable of those ops' values,
    at every stage: a keep from the forward pass to a late stage moves whole) from the
    slowest checkpoint plan: faster, within the budget by the simulator, the objective the
    simulator's extra time, and the variables' bounds restored."""
    profile, graph, milp, budget, start, _ = resnet18_windows
    unoptimised = simulate(profile, build_schedule(graph, baseline_decisions(graph)))
    better, steps = improve_by_windows(milp, graph, start, "highs", SolveOptions(), 8.0,
                                       neighbourhoods=("forward ops",))
    assert steps > 0 and milp.objective_of(better) < milp.objective_of(start)
    sim = simulate(profile, build_schedule(graph, better))
    assert sim.peak_bytes <= budget
    assert sim.peak_bytes == milp.evaluate_peak(better)
    assert milp.objective_of(better) == pytest.approx(sim.time_s - unoptimised.time_s,
                                                      rel=1e-6, abs=1e-12)
    assert all(v.lowBound in (0, None) and v.upBound in (1, None)
               for v in milp.problem.variables())


def test_windows_start_from_the_start_when_the_full_solve_returns_a_slower_plan(
        resnet18_windows, monkeypatch):
    """A backend that does not keep the warm start (CP-SAT, CBC) may return a plan slower
    than it from the full solve: the windows then search from the start, not from that."""
    profile, graph, milp, budget, slow, fast = resnet18_windows
    assert milp.objective_of(fast) < milp.objective_of(slow)

    def slower_plan(problem, backend, options):
        milp.set_start(slow)  # a plan that fits, slower than the start
        return SolveOutcome("feasible", milp.objective_of(slow), None, 0.1)

    searched_from = []

    def windows(milp_, graph_, start, *args, **kwargs):
        searched_from.append(start)
        return start, 0

    monkeypatch.setattr(milp_search_module, "solve_problem", slower_plan)
    monkeypatch.setattr(milp_search_module, "improve_by_windows", windows)
    fitting = []
    milp_search_module.milp_search(profile, graph, budget, "cpsat", SolveOptions(),
                                   evaluate(profile, graph, fast), fitting,
                                   time.perf_counter() + 30, milp=milp)
    assert searched_from == [fast]


def test_windows_keep_their_set_up_time_within_the_budget(resnet18_windows, monkeypatch):
    """A backend whose windows take 2 s beyond their solver's limit (CP-SAT's model and
    process set-up) does not run a window the time left cannot hold: 4 s of windows of
    0.5 s took 5 s before."""
    _profile, graph, milp, _budget, start, _ = resnet18_windows

    def slow_window(problem, backend, options):
        time.sleep(options.time_limit_s + 2.0)
        return SolveOutcome("feasible", milp.objective_of(start), None, options.time_limit_s)

    monkeypatch.setattr(lns_module, "solve_problem", slow_window)
    t0 = time.perf_counter()
    best, steps = improve_by_windows(milp, graph, start, "cbc", SolveOptions(), 4.0,
                                     window=8, step_limit_s=0.5)
    assert time.perf_counter() - t0 <= 4.3
    assert steps == 0 and best is start


@pytest.mark.parametrize("neighbourhoods", [("forward ops",), ("stages", "forward ops")])
def test_windows_return_the_start_when_no_time_is_left(neighbourhoods, resnet18_windows):
    """With its time already spent (a window's solve can overrun the deadline), the search
    returns its start at once, whatever kinds of window it takes turns with. Until
    2026-12-06 a search of forward-op windows alone started turns of no window forever."""
    _, graph, milp, _, start, _ = resnet18_windows
    t0 = time.perf_counter()
    found, steps = improve_by_windows(milp, graph, start, "highs", SolveOptions(), 0.0,
                                      neighbourhoods=neighbourhoods)
    assert time.perf_counter() - t0 < 5.0
    assert found is start and steps == 0


def test_whole_solve_on_the_window_model_is_pulps():
    """``PersistentHiGHS.solve_whole`` (the first solve of the MILP search, on the model the
    windows then re-solve) proves the same optimum as PuLP's HiGHS solve of the problem,
    from a start or without one, and says infeasible where it is."""
    from planner.window_highs import PersistentHiGHS
    profile = model_case("gpt").profile  # proved optimal in about a second at 0.9
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    peak = simulate(profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    milp = build_stage_milp(graph, times, int(0.9 * peak))
    reference = solve_problem(milp.problem, "highs", SolveOptions(time_limit_s=60))
    assert reference.status == "optimal"
    start = milp.vectors.values(milp.decisions(len(graph.stages)))[:milp.vectors.columns]
    for first in (start.tolist(), None):
        model = PersistentHiGHS(milp.problem, 1e-4, None)
        status, bound = model.solve_whole(first, 60.0)
        assert status == "optimal"
        found = milp.decisions(len(graph.stages))
        assert milp.objective_of(found) == pytest.approx(reference.objective, rel=1e-4,
                                                         abs=1e-12)
        assert bound is not None and bound <= milp.objective_of(found) + 1e-9
        assert simulate(profile, build_schedule(graph, found)).peak_bytes <= milp.budget
    tight = build_stage_milp(graph, times, 1)
    assert PersistentHiGHS(tight.problem, 1e-4, None).solve_whole(None, 60.0)[0] == \
        "infeasible"


class _FakeWorker:
    """Stands in for the full MILP process: one plan, claimed at ``claimed`` objective,
    handed over whole (no base) on the first call; every look at its bound (once per
    window) is logged."""

    proved_optimal = False

    def __init__(self, plan, claimed: float):
        self.plan, self.claimed, self.given = plan, claimed, False

    def take_plan(self):
        if self.given:
            return None
        self.given = True
        return self.claimed, self.plan, None

    @property
    def bound(self):
        logging.getLogger("test.worker").info("window boundary")
        return None

    def offer(self, decisions, base=None) -> None:
        pass


@pytest.mark.parametrize("far_better", [True, False])
def test_first_sweep_takes_up_only_a_far_better_worker_plan(far_better, resnet18_windows,
                                                            caplog):
    """The window search's first sweep keeps to its start unless the worker's plan is far
    better (FIRST_SWEEP_TAKE_UP); from the second sweep on any better plan is taken up."""
    _, graph, milp, _, start, worker_plan = resnet18_windows
    start_obj = milp.objective_of(start)
    assert milp.objective_of(worker_plan) < start_obj
    claimed = 0.0 if far_better else 0.99 * start_obj
    with caplog.at_level(logging.INFO):
        improve_by_windows(milp, graph, start, "highs", SolveOptions(), 8.0, window=8,
                           full=_FakeWorker(worker_plan, claimed))
    lines = [r.message for r in caplog.records if r.name in ("test.worker", "planner.lns")]
    taken = [i for i, m in enumerate(lines) if m.startswith("full MILP")]
    looks_before = lines[:taken[0]].count("window boundary") if taken else None
    K = len(graph.stages)
    first_sweep_windows = len(range(max(K - 8, 0), -4, -4))
    if far_better:
        assert looks_before == 0  # taken up at the first window
    else:  # after the first sweep, or never (the windows found as good a plan)
        assert looks_before is None or looks_before >= first_sweep_windows


def test_a_worker_plan_with_its_base_is_merged_even_in_the_first_sweep(resnet18_windows,
                                                                       caplog):
    """A worker plan sent with the base its changes started from is merged into the best
    plan here at once, in the first sweep too, where the same plan whole would wait
    (claimed not far better); the search returns a plan at least as good as the merge,
    which keeps the budget."""
    _, graph, milp, budget, start, worker_plan = resnet18_windows

    class SendsItsChanges(_FakeWorker):
        def take_plan(self):
            found = super().take_plan()
            return None if found is None else (*found[:2], start)

    with caplog.at_level(logging.INFO, logger="planner.lns"):
        best, _ = improve_by_windows(
            milp, graph, start, "highs", SolveOptions(), 2.0, window=8,
            full=SendsItsChanges(worker_plan, 0.99 * milp.objective_of(start)))
    lines = [r.message for r in caplog.records if r.name == "planner.lns"]
    assert lines and lines[0].startswith("merged: objective")
    assert not any(m.startswith("full MILP") for m in lines)
    assert milp.objective_of(best) <= milp.objective_of(worker_plan) + 1e-9
    assert milp.evaluate_peak(best) <= budget


def test_a_window_spanning_every_stage_gets_the_rest_of_the_time(resnet18_windows):
    """A window spanning every stage is the whole problem: it runs until the time is spent
    (HiGHS takes about 45 s to prove this one), not for one step's limit, and improves the
    start. Before 2026-12-05 it had the step's limit (here 0.1 s) and the search ended."""
    _, graph, milp, budget, start, _ = resnet18_windows
    t0 = time.perf_counter()
    better, _ = improve_by_windows(milp, graph, start, "highs", SolveOptions(), 6.0,
                                   window=len(graph.stages), step_limit_s=0.001)
    assert time.perf_counter() - t0 >= 5.0
    assert milp.objective_of(better) < milp.objective_of(start)
    assert milp.evaluate_peak(better) <= budget


def test_the_whole_problem_stops_when_the_worker_proves_its_plan(resnet18_windows):
    """The window search's whole-problem solve ends soon after the worker says it has
    proved its plan optimal, not at the search's deadline."""
    _, graph, milp, _, start, _ = resnet18_windows
    t0 = time.perf_counter()

    class ProvesAfterASecond(_FakeWorker):
        @property
        def proved_optimal(self) -> bool:
            return time.perf_counter() > t0 + 1.0

    improve_by_windows(milp, graph, start, "highs", SolveOptions(), 30.0,
                       window=len(graph.stages), step_limit_s=0.001,
                       full=ProvesAfterASecond(start, milp.objective_of(start)))
    assert time.perf_counter() - t0 < 10.0
