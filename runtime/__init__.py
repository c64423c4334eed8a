"""runtime: run a plan's forward and backward programs inside torch.autograd.

``model = runtime.load_plan(model, "plan.json")`` returns an ``nn.Module`` whose training
steps follow the plan; the loop, optimizer and ``loss.backward()`` are unchanged.
"""
from .module import PlanMismatchError, PlannedModule, load_plan

__all__ = ["PlanMismatchError", "PlannedModule", "load_plan"]
