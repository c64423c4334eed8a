"""runtime: run a plan's forward and backward programs inside torch.autograd.

``model = runtime.load_plan(model, "plan.json")`` returns an ``nn.Module`` whose training
steps follow the plan; the loop, optimizer and ``loss.backward()`` are unchanged.

The names below are imported on first use (``profiler.lazy``), so that ``monet``
(``runtime.cli``) imports the capture only for the commands that run a model: ``inspect``
imports no torch at all, ``solve`` and ``sweep`` torch without torch._dynamo.
"""
from __future__ import annotations

from profiler.lazy import lazy_exports

__all__ = ["PlanMismatchError", "PlannedModule", "load_plan"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "module"))
