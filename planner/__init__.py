"""planner: keep/recompute decisions under a memory budget, solved as a stage MILP.

Imports ``profiler`` (for the Profile) and nothing from ``runtime``. Where PuLP (or HiGHS)
is not installed, such as the GPU machine of docs/gpu.md, plans can still be read and run
(``planner.plan``, ``planner.schedule``, ``runtime``); the solving functions then raise
ImportError naming what is missing.
"""
from typing import Any

from .budget import BudgetError, parse_budget
from .plan import Plan, PlanFormatError

try:
    from .solve import InfeasibleBudgetError, plan_for, smallest_feasible_budget, solve
except ImportError as _missing:  # no solver packages: reading and running plans still work
    _reason = str(_missing)

    class InfeasibleBudgetError(ValueError):  # type: ignore[no-redef]
        """Stands in for planner.solve.InfeasibleBudgetError where it cannot be imported."""

    def _unavailable(*_: Any, **__: Any) -> Any:
        raise ImportError(f"solving plans needs PuLP and HiGHS ({_reason}): install them, "
                          "or solve on another machine and bring the plan file")

    solve = plan_for = smallest_feasible_budget = _unavailable  # type: ignore[assignment]

__all__ = ["BudgetError", "parse_budget", "Plan", "PlanFormatError", "InfeasibleBudgetError",
           "plan_for", "smallest_feasible_budget", "solve"]
