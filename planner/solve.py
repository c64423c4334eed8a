"""Solve a profile under a memory budget into a verified Plan."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from profiler.ir import Profile

from .backends import SolveOptions, solve_problem
from .budget import format_bytes, parse_budget
from .formulation import build_stage_milp
from .graph import PlannerGraph
from .plan import Plan, SolverInfo
from .schedule import Decisions, baseline_decisions, build_schedule
from .simulator import SimulationResult, simulate

log = logging.getLogger(__name__)


class InfeasibleBudgetError(ValueError):
    """No schedule fits the budget; ``smallest_feasible`` is a budget that does."""

    def __init__(self, budget: int, smallest_feasible: int | None, floor: str):
        self.budget = budget
        self.smallest_feasible = smallest_feasible
        found = (f"the smallest feasible budget is {format_bytes(smallest_feasible)} "
                 f"({smallest_feasible} bytes)" if smallest_feasible is not None
                 else "no feasible budget was found within the time limit")
        super().__init__(f"budget {format_bytes(budget)} ({budget} bytes) is infeasible: "
                         f"{found}; {floor}")


class SolverLimitError(RuntimeError):
    """The solver found no plan within its time limit (the budget may still be feasible)."""


@dataclass
class Evaluation:
    decisions: Decisions
    result: SimulationResult


def evaluate(profile: Profile, graph: PlannerGraph, decisions: Decisions) -> Evaluation:
    """Build the schedule for ``decisions`` and simulate it independently."""
    return Evaluation(decisions, simulate(profile, build_schedule(graph, decisions)))


def planner_graph(profile: Profile) -> PlannerGraph:
    return PlannerGraph.build(profile.nodes, profile.storage_bytes, profile.outputs)


def _floor_text(profile: Profile, graph: PlannerGraph) -> str:
    params = sum(profile.storage_bytes[s] for s in graph.constant_storages)
    outs = sum(profile.storage_bytes[s] for s in graph.pinned_storages | graph.tangent_storages)
    return (f"parameters, buffers and inputs alone take {format_bytes(params)}, the outputs "
            f"and their gradients {format_bytes(outs)}")


def smallest_feasible_budget(profile: Profile, backend: str = "highs",
                             options: SolveOptions | None = None) -> tuple[int | None, float | None]:
    """The peak of the lowest-memory plan the solver finds, and a lower bound on any plan."""
    graph = planner_graph(profile)
    options = options or SolveOptions()
    milp = build_stage_milp(graph, [n.time_s for n in profile.nodes], None, minimize_peak=True)
    outcome = solve_problem(milp.problem, backend, options)
    if not outcome.has_solution:
        return None, None
    ev = evaluate(profile, graph, milp.decisions(len(graph.stages)))
    bound = outcome.bound * 2**20 if outcome.bound is not None else None
    return ev.result.peak_bytes, bound


def solve(profile: Profile, budget: str | int | float, backend: str = "highs",
          options: SolveOptions | None = None) -> Plan:
    """The fastest plan for ``profile`` whose peak memory is at most ``budget``.

    Raises InfeasibleBudgetError (naming the smallest feasible budget) when none fits.
    """
    options = options or SolveOptions()
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    base = evaluate(profile, graph, baseline_decisions(graph))
    budget_bytes = parse_budget(budget, base.result.peak_bytes)
    log.info("unoptimised peak %s, budget %s, %d stages", format_bytes(base.result.peak_bytes),
             format_bytes(budget_bytes), len(graph.stages))

    if budget_bytes >= base.result.peak_bytes:
        info = SolverInfo(name="none", status="optimal", time_limit_s=options.time_limit_s,
                          solve_time_s=0.0, objective=0.0, bound=0.0, gap=0.0)
        claimed = build_stage_milp(graph, times, budget_bytes).evaluate_peak(base.decisions)
        return _make_plan(profile, graph, base, base, budget_bytes, str(budget), info, claimed)

    target = budget_bytes
    for attempt in range(3):
        milp = build_stage_milp(graph, times, target)
        outcome = solve_problem(milp.problem, backend, options)
        if outcome.status == "infeasible":
            smallest, _ = smallest_feasible_budget(profile, backend, options)
            raise InfeasibleBudgetError(budget_bytes, smallest, _floor_text(profile, graph))
        if not outcome.has_solution:
            raise SolverLimitError(f"{backend} found no plan for {format_bytes(budget_bytes)} "
                                   f"within {options.time_limit_s:.0f} s; raise --time-limit")
        decisions = milp.decisions(len(graph.stages))
        ev = evaluate(profile, graph, decisions)
        if ev.result.peak_bytes <= budget_bytes:
            break
        # Solver tolerances let a row exceed the budget by a few bytes: tighten and retry.
        target -= ev.result.peak_bytes - budget_bytes + 1024
        log.info("plan exceeds the budget by %d bytes after rounding; tightening",
                 ev.result.peak_bytes - budget_bytes)
    else:
        raise SolverLimitError("the solver's plans kept exceeding the budget after rounding")
    solver_peak = milp.evaluate_peak(decisions)
    gap = None
    if outcome.bound is not None and outcome.objective is not None:
        gap = 0.0 if outcome.objective <= 1e-12 else \
            max(0.0, (outcome.objective - outcome.bound) / outcome.objective)
    info = SolverInfo(name=backend, status=outcome.status, time_limit_s=options.time_limit_s,
                      solve_time_s=outcome.seconds, objective=outcome.objective,
                      bound=outcome.bound, gap=gap, variables=len(milp.problem.variables()),
                      constraints=len(milp.problem.constraints))
    return _make_plan(profile, graph, ev, base, budget_bytes, str(budget), info, solver_peak)


def _make_plan(profile: Profile, graph: PlannerGraph, ev: Evaluation, base: Evaluation,
               budget_bytes: int, budget_spec: str, info: SolverInfo, solver_peak: int) -> Plan:
    d = ev.decisions
    summary = []
    for o in graph.ops():
        n = profile.nodes[o]
        kept = [k for k in range(len(graph.stages))
                if any(s in d.keep[k] for s in n.new_storages)]
        recomputed = [k for k in range(len(graph.stages)) if o in d.recompute[k]]
        summary.append({"index": o, "name": n.name, "target": n.target, "module": n.module,
                        "bytes": graph.new_bytes(o), "time_s": n.time_s,
                        "kept_in_stages": kept, "recomputed_in_stages": recomputed})
    return Plan(
        graph_hash=profile.graph_hash, model=profile.model, device=profile.device,
        device_name=profile.device_name, dtype=profile.dtype,
        torch_version=profile.torch_version, input_shapes=profile.input_shapes,
        input_dtypes=profile.input_dtypes, graph_targets=[n.target for n in profile.nodes],
        budget_bytes=budget_bytes, budget_spec=budget_spec,
        predicted_peak_bytes=ev.result.peak_bytes, predicted_time_s=ev.result.time_s,
        solver_peak_bytes=solver_peak, baseline_peak_bytes=base.result.peak_bytes,
        baseline_time_s=base.result.time_s, solver=info,
        keep=[sorted(k) for k in d.keep], recompute=[sorted(r) for r in d.recompute],
        nodes=summary)
