"""profiler: capture the joint forward+backward graph and measure it into a Profile.

Imports nothing from ``planner`` or ``runtime``. The names below are imported on first use
(``profiler.lazy``): reading a Profile (``profiler.ir``) needs neither torch nor the
capture's torch._dynamo, which took 5.4 s of ``monet``'s 6.5 s start-up here.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .lazy import lazy_exports

_SUBMODULE_OF = {
    "CaptureError": "capture", "CapturedGraph": "capture", "autocast_name": "capture",
    "capture": "capture",
    "NodeRecord": "ir", "OutputRecord": "ir", "Profile": "ir", "ProfileFormatError": "ir",
    "ModelSpecError": "models", "load_model": "models",
    "device_name": "profile", "profile_captured": "profile", "profile_model": "profile",
}
__all__ = list(_SUBMODULE_OF)
__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE_OF)


class _Package(types.ModuleType):
    """Keeps ``profiler.capture`` the function, as the eager imports did: importing the
    submodule ``profiler.capture`` sets the package's attribute of that name to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "capture" and isinstance(value, types.ModuleType):
            value = value.capture
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
