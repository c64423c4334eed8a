"""runtime: run a plan's forward and backward programs inside torch.autograd.

``model = runtime.load_plan(model, "plan.json")`` returns an ``nn.Module`` whose training
steps follow the plan; the loop, optimizer and ``loss.backward()`` are unchanged.

The names below are imported on first use (PEP 562), so that ``monet`` (``runtime.cli``)
starts without torch for the commands that need none (solve, sweep, inspect).
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PlanMismatchError", "PlannedModule", "load_plan"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".module", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
