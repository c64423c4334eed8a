"""The CP-SAT backend: correct plans, its progress, and an integer model whose every
solution keeps the PuLP problem's rows."""
from __future__ import annotations

import copy
import logging

import pulp

from conftest import assert_same_step, plan_is_exact, train_step
from planner import solve
from planner.backend_cpsat import implied_integers
from planner.backends import SolveOptions, solve_problem
from planner.formulation import StageMILP, build_stage_milp
from planner.graph import PlannerGraph
from planner.schedule import baseline_decisions, build_schedule
from planner.simulator import simulate
from planner.solve import planner_graph
from runtime import load_plan


def _gpt_stage_milp(gpt_case, share: float) -> tuple[PlannerGraph, StageMILP]:
    """The GPT case's graph and its stage MILP at ``share`` of its unoptimised peak."""
    graph = planner_graph(gpt_case.profile)
    times = [n.time_s for n in gpt_case.profile.nodes]
    peak = simulate(gpt_case.profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    return graph, build_stage_milp(graph, times, int(share * peak))


def test_cpsat_backend_gives_a_correct_plan(gpt_case):
    plan = solve(gpt_case.profile, 0.7, backend="cpsat", options=SolveOptions(time_limit_s=5))
    assert plan.solver.name == "cpsat"
    assert plan.predicted_peak_bytes <= plan.budget_bytes
    assert plan.solver_peak_bytes == plan.predicted_peak_bytes
    assert plan.solver.bound is not None and 0 <= plan.solver.gap <= 1
    model = load_plan(copy.deepcopy(gpt_case.model), plan)
    result = train_step(model, gpt_case.inputs)
    assert model.last_peak_bytes == plan.predicted_peak_bytes
    assert_same_step(result, gpt_case.eager, plan_is_exact(plan), case=gpt_case)


def test_cpsat_logs_its_progress(gpt_case, caplog):
    """CP-SAT's incumbents reach the progress log. On the stage MILP directly: inside a
    5-s solve the heuristics may leave CP-SAT a fraction of a second, too little to find a
    plan on a slow machine (it failed so on CI)."""
    milp = _gpt_stage_milp(gpt_case, 0.7)[1]
    with caplog.at_level(logging.INFO, logger="planner.progress"):
        outcome = solve_problem(milp.problem, "cpsat", SolveOptions(time_limit_s=5))
    assert outcome.has_solution
    assert any("cpsat" in r.message and "incumbent" in r.message for r in caplog.records)


def test_implied_integers_only_where_rounding_down_keeps_every_row():
    """Continuous variables bounded below by integral rows of integers (and by each other)
    are integers at some optimum; one bounded by a fractional row is not, nor are two that
    share a row each would have to meet."""
    a, b = pulp.LpVariable("a", cat="Binary"), pulp.LpVariable("b", cat="Binary")
    z, y, w = (pulp.LpVariable(n, lowBound=0) for n in "zyw")
    problem = pulp.LpProblem("implied", pulp.LpMinimize)
    problem += a + 0.5 * b + 0.1 * z
    problem += z >= a + b - 1  # z is 1 when both are
    problem += y >= z - b  # y follows z
    problem += w >= 0.5 * a  # w may be 0.5 at its minimum
    problem += 0.3 * a + 0.7 * z + 0.2 * w + 0.1 * y <= 1  # larger values only hurt here
    assert implied_integers(problem) == {"z", "y"}
    u, v = pulp.LpVariable("u", lowBound=0), pulp.LpVariable("v", lowBound=0)
    shared = pulp.LpProblem("shared", pulp.LpMinimize)
    shared += u + v
    shared += u + v >= 1  # u = v = 0.5 rounds down to 0 + 0 < 1
    assert implied_integers(shared) == set()
    maximised = pulp.LpProblem("max", pulp.LpMaximize)
    maximised += -z
    maximised += z >= a
    assert implied_integers(maximised) == set()


def test_cpsat_solution_keeps_every_row_of_the_stage_milp(gpt_case):
    """CP-SAT's answer satisfies the PuLP rows themselves, memory rows included. Until
    2026-12-06 the 0/1 auxiliaries (continuous in PuLP) were scaled to units of 1/1024 and
    their memory coefficients rounded to 0 in that unit: CP-SAT kept plans that broke the
    budget by up to a quarter (gpt_small at 1/2: 352 rows broken), which the simulator
    then dropped."""
    graph, milp = _gpt_stage_milp(gpt_case, 0.5)
    implied = implied_integers(milp.problem)
    assert implied and {a.var.name for a in milp.aux} > implied  # the MiB maxima are not
    outcome = solve_problem(milp.problem, "cpsat", SolveOptions(time_limit_s=10))
    assert outcome.has_solution
    broken = [name for name, row in milp.problem.constraints.items() if not row.valid(1e-6)]
    assert broken == []
    decisions = milp.decisions(len(graph.stages))
    assert milp.evaluate_peak(decisions) <= milp.budget
    assert simulate(gpt_case.profile, build_schedule(graph, decisions)).peak_bytes == \
        milp.evaluate_peak(decisions)
