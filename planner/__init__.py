"""planner: keep/recompute decisions under a memory budget, solved as a stage MILP.

Imports ``profiler`` (for the Profile) and nothing from ``runtime``.
"""
from .budget import BudgetError, parse_budget
from .plan import Plan, PlanFormatError
from .solve import InfeasibleBudgetError, plan_for, smallest_feasible_budget, solve

__all__ = ["BudgetError", "parse_budget", "Plan", "PlanFormatError", "InfeasibleBudgetError",
           "plan_for", "smallest_feasible_budget", "solve"]
