"""Solver backends behind one signature: ``solve(problem, options) -> SolveOutcome``.

HiGHS (through PuLP's highspy interface) is the default; CBC (PuLP's bundled binary) is the
alternative. Both honour a time limit and a relative gap, and on the limit return the best
plan found so far with its bound.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import pulp

from .progress import ProgressLog
from .window_highs import use_highs_threads

log = logging.getLogger(__name__)


@dataclass
class SolveOptions:
    time_limit_s: float = 60.0
    gap: float = 1e-4
    threads: int | None = None
    verbose: bool = False
    warm_start: bool = False  # start from the variables' current values (a feasible plan)
    variants: str = "all"  # operator variants the plan may use: all, exact or none
    # HiGHS only: run the full MILP in a second process beside the window search
    # (planner.full_solve); off, the full MILP gets a share of the time before it.
    parallel: bool = True


class _WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS interface, plus a warm start from the variables' current values."""

    def __init__(self, warm_start: bool, **kwargs):
        super().__init__(**kwargs)
        self.warm_start = warm_start

    def callSolver(self, lp):  # noqa: N802 (PuLP's name)
        if self.warm_start:
            import highspy
            variables = lp.variables()
            if all(v.varValue is not None for v in variables):
                solution = highspy.HighsSolution()
                values = [0.0] * len(variables)
                for v in variables:
                    values[v.index] = float(v.varValue)
                solution.col_value = values  # a pybind list: assign it whole
                solution.value_valid = True
                lp.solverModel.setSolution(solution)
        report = ProgressLog("highs").highs_event
        lp.solverModel.cbMipImprovingSolution.subscribe(report)
        lp.solverModel.cbMipInterrupt.subscribe(report)  # called periodically
        use_highs_threads(self.threads)
        lp.solverModel.run()


@dataclass
class SolveOutcome:
    # "optimal" | "feasible" (limit hit, incumbent found) | "infeasible" | "no_solution"
    status: str
    objective: float | None
    bound: float | None
    seconds: float

    @property
    def has_solution(self) -> bool:
        return self.status in ("optimal", "feasible")


def tightest_bound(*bounds: float | None) -> float | None:
    """The largest of the lower bounds that are known (None if none is): bounds of the same
    minimisation from different solves or relaxations. HiGHS's -inf (stopped before it had
    one) is no bound."""
    known = [b for b in bounds if b is not None and math.isfinite(b)]
    return max(known) if known else None


def _outcome(problem: pulp.LpProblem, seconds: float, bound: float | None) -> SolveOutcome:
    sol = problem.sol_status
    if sol == pulp.LpSolutionOptimal:
        status = "optimal"
    elif sol == pulp.LpSolutionIntegerFeasible:
        status = "feasible"
    elif problem.status == pulp.LpStatusInfeasible or sol == pulp.LpSolutionInfeasible:
        status = "infeasible"
    else:
        status = "no_solution"
    return outcome_of(problem, status, seconds, bound)


def outcome_of(problem: pulp.LpProblem, status: str, seconds: float,
               bound: float | None) -> SolveOutcome:
    """The outcome of a solve whose variable values are set on ``problem``."""
    objective = pulp.value(problem.objective) if status in ("optimal", "feasible") else None
    if status == "optimal" and bound is None:
        bound = objective
    return SolveOutcome(status, objective, bound, seconds)


def solve_highs(problem: pulp.LpProblem, options: SolveOptions) -> SolveOutcome:
    solver = _WarmHiGHS(options.warm_start, msg=options.verbose, timeLimit=options.time_limit_s,
                        gapRel=options.gap, threads=options.threads)
    t0 = time.perf_counter()
    problem.solve(solver)
    seconds = time.perf_counter() - t0
    bound = None
    try:
        info = problem.solverModel.getInfo()
        bound = float(info.mip_dual_bound)
    except Exception:  # the bound is informative only
        pass
    return _outcome(problem, seconds, bound)


def solve_cbc(problem: pulp.LpProblem, options: SolveOptions) -> SolveOutcome:
    solver = pulp.PULP_CBC_CMD(msg=options.verbose, timeLimit=options.time_limit_s,
                               gapRel=options.gap, threads=options.threads,
                               warmStart=options.warm_start)
    t0 = time.perf_counter()
    try:
        problem.solve(solver)
    except pulp.PulpSolverError as e:
        # CBC stopped at a short limit (a window step on a loaded machine) before writing a
        # solution file: no plan from this solve, which the caller handles like a timeout.
        log.warning("CBC gave no solution: %s", e)
        return SolveOutcome("no_solution", None, None, time.perf_counter() - t0)
    return _outcome(problem, time.perf_counter() - t0, None)


def solve_cpsat(problem: pulp.LpProblem, options: SolveOptions) -> SolveOutcome:
    from .backend_cpsat import solve_cpsat as solve
    return solve(problem, options)


BACKENDS: dict[str, Callable[[pulp.LpProblem, SolveOptions], SolveOutcome]] = {
    "highs": solve_highs,
    "cbc": solve_cbc,
    "cpsat": solve_cpsat,
}


def solve_problem(problem: pulp.LpProblem, backend: str, options: SolveOptions) -> SolveOutcome:
    """Solve ``problem`` with the named backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown solver {backend!r}; choose one of {', '.join(BACKENDS)}")
    log.info("solving with %s: %d variables, %d constraints, time limit %.1f s", backend,
             len(problem.variables()), len(problem.constraints), options.time_limit_s)
    outcome = BACKENDS[backend](problem, options)
    log.info("%s: %s in %.2f s, objective %s, bound %s", backend, outcome.status,
             outcome.seconds, outcome.objective, outcome.bound)
    return outcome
