"""runtime: run a plan's forward and backward programs inside torch.autograd.

``model = runtime.load_plan(model, "plan.json")`` returns an ``nn.Module`` whose training
steps follow the plan; the loop, optimizer and ``loss.backward()`` are unchanged.

The names below are imported on first use (``profiler.lazy``), so that ``monet``
(``runtime.cli``) imports torch only for the commands that run a model: ``inspect``,
``solve`` and ``sweep`` import none (a profile records which of its ops have ``out=``
overloads, ``Profile.pointwise_out``, the one thing the planner asked torch).
"""
from __future__ import annotations

from profiler.lazy import lazy_exports

__all__ = ["PlanMismatchError", "PlannedModule", "load_plan"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "module"))
