"""A HiGHS model built once, solved whole or window by window.

PuLP rebuilds the whole solver model on every solve: for the stage MILP of ResNet-50
(~25K columns, ~42K rows) that is about a second of Python per call, a third of a window
step's time. Here the model is built once and its arrays read once; a window step cuts its
own model out of them (``planner.window_model``), gives the incumbent as the MIP start, and
runs.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pulp

from .progress import ProgressLog
from .window_model import RowMatrix

log = logging.getLogger(__name__)

# HiGHS sizes one thread scheduler per process at its first run; a later run that asks for
# another number of threads fails (status kError, no solution, nothing raised) until the
# scheduler is reset. The count the scheduler was last set up for by this module:
_scheduler_threads: object = "unset"


def use_highs_threads(threads: int | None) -> None:
    """Make the next in-process HiGHS run with ``threads`` threads (None: HiGHS's default)
    work after runs with another count in this process (a solve with the default and a
    window search with one thread, say). Runs are sequential in this package, so no run is
    in flight while the scheduler is reset."""
    global _scheduler_threads
    if threads != _scheduler_threads:
        import highspy
        highspy.Highs.resetThreadScheduler(False)
        _scheduler_threads = threads


class PersistentHiGHS:
    """``problem`` loaded into one highspy model; ``solve`` re-solves it with some variables
    fixed. Variables' ``varValue`` are set from each solution found."""

    def __init__(self, problem: pulp.LpProblem, gap: float, threads: int | None,
                 verbose: bool = False):
        self.threads = threads
        use_highs_threads(threads)
        solver = pulp.HiGHS(msg=verbose, gapRel=gap, threads=threads)
        solver.createAndConfigureSolver(problem)
        solver.buildSolverModel(problem)  # sets every variable's column index
        self.highs = problem.solverModel
        self.variables = problem.variables()
        self._lower = np.array([-math.inf if v.lowBound is None else v.lowBound
                                for v in self.variables], dtype=np.float64)
        self._upper = np.array([math.inf if v.upBound is None else v.upBound
                                for v in self.variables], dtype=np.float64)
        self._matrix: RowMatrix | None = None  # read at the first window
        self._window = None  # the highspy model windows are solved on

    def solve(self, fixed: dict[int, float], start: list[float], time_limit_s: float,
              stop: Callable[[], bool] | None = None) -> str:
        """Fix the columns in ``fixed`` (index -> value), free the others to their own
        bounds, start from ``start`` (a point that keeps every row) and solve; ``stop``, if
        given, is asked at HiGHS's interrupt points and ends the run when it says so.
        Solved as a model of its own (``planner.window_model``): the free columns and the
        rows they meet. Returns the status (optimal, feasible, infeasible or
        no_solution); a solution's values, the fixed columns' included, are in the
        variables' ``varValue``."""
        import highspy
        matrix = self._rows()
        x = np.array(start, dtype=np.float64)
        free = np.ones(len(x), dtype=bool)
        at, values = _fixed_arrays(fixed)
        x[at] = values
        free[at] = False
        if not free.any():
            self.set_values(x)
            return "optimal"
        lp, columns = matrix.window(free, x, self._lower, self._upper)
        window = self._window
        window.passModel(lp)
        solution = highspy.HighsSolution()
        solution.col_value = x[columns].tolist()
        solution.value_valid = True
        window.setSolution(solution)
        window.setOptionValue("time_limit", float(max(time_limit_s, 0.1)))

        def interrupt(event) -> None:
            if stop():
                event.data_in.user_interrupt = True

        if stop is not None:
            window.cbMipInterrupt.subscribe(interrupt)
        use_highs_threads(self.threads)
        try:
            window.run()
        finally:
            if stop is not None:
                window.cbMipInterrupt.unsubscribe(interrupt)
        if window.getInfo().primal_solution_status >= 2:  # 2: feasible
            x[columns] = window.getSolution().col_value
            self.set_values(x)
        return highs_status(window)

    def _rows(self) -> RowMatrix:
        """The model's rows as arrays (read at the first call; rows added to the model
        after it, such as cuts, are not in them) and the model windows are solved on."""
        if self._matrix is None:
            import highspy
            self._matrix = RowMatrix.of(self.highs)
            self._window = highspy.Highs()
            self._window.passOptions(self.highs.getOptions())
        return self._matrix

    def keeps_rows(self, x: np.ndarray) -> bool:
        """Whether the point ``x`` (the model's columns, in order) keeps every row of the
        model, within HiGHS's feasibility tolerance's order (``RowMatrix.keeps_rows``); a
        plan made outside the solver (``planner.merge``) is checked so."""
        bounds_kept = np.all(x >= self._lower - 1e-9) and np.all(x <= self._upper + 1e-9)
        return bool(bounds_kept) and self._rows().keeps_rows(x)

    def solve_whole(self, start: list[float] | None, time_limit_s: float
                    ) -> tuple[str, float | None]:
        """Solve the whole problem (no column fixed), from ``start`` if given, with progress
        through ``logging``: what PuLP's solve does, on this model, so that the window
        search that follows need not build another (GoogLeNet's takes 2.6 s on a machine a
        third of the reference speed). Returns the status (optimal, feasible, infeasible or
        no_solution) and HiGHS's bound (None if it had none); a solution's values are in the
        variables' ``varValue``."""
        report = ProgressLog("highs").highs_event
        self.highs.cbMipImprovingSolution.subscribe(report)
        self.highs.cbMipInterrupt.subscribe(report)
        try:
            self._run({}, start, time_limit_s)
        finally:
            self.highs.cbMipImprovingSolution.unsubscribe(report)
            self.highs.cbMipInterrupt.unsubscribe(report)
        self._read_solution()
        bound = float(self.highs.getInfo().mip_dual_bound)
        return highs_status(self.highs), bound if math.isfinite(bound) else None

    def _run(self, fixed: dict[int, float], start: list[float] | None,
             time_limit_s: float) -> None:
        """Run the whole model with the columns in ``fixed`` fixed (none for
        ``solve_whole``; a window as ``solve`` ran it until 2026-12-06, which the tests
        compare ``solve`` with)."""
        import highspy
        at, values = _fixed_arrays(fixed)
        lows, highs = self._lower.copy(), self._upper.copy()
        lows[at] = highs[at] = values
        n = len(self.variables)
        self.highs.changeColsBounds(n, np.arange(n), lows, highs)
        if start is not None:
            solution = highspy.HighsSolution()
            solution.col_value = [float(x) for x in start]
            solution.value_valid = True
            self.highs.setSolution(solution)
        self.highs.setOptionValue("time_limit", float(max(time_limit_s, 0.1)))
        use_highs_threads(self.threads)
        self.highs.run()

    def set_values(self, values) -> None:
        """Give the variables (the model's columns, in order) these values."""
        for v, x in zip(self.variables, values):
            v.varValue = float(x)

    def _read_solution(self) -> bool:
        if self.highs.getInfo().primal_solution_status < 2:  # 2: feasible
            return False
        self.set_values(self.highs.getSolution().col_value)
        return True


def _fixed_arrays(fixed: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """``fixed`` (column -> value) as an index array and a value array."""
    return (np.fromiter(fixed.keys(), dtype=np.int64, count=len(fixed)),
            np.fromiter(fixed.values(), dtype=np.float64, count=len(fixed)))


def highs_status(highs) -> str:
    """The status of a MIP run on a highspy model: optimal, infeasible, feasible (stopped
    with a solution) or no_solution."""
    import highspy
    model_status = highs.getModelStatus()
    if model_status == highspy.HighsModelStatus.kOptimal:
        return "optimal"
    if model_status == highspy.HighsModelStatus.kInfeasible:
        return "infeasible"
    return "feasible" if highs.getInfo().primal_solution_status >= 2 else "no_solution"
