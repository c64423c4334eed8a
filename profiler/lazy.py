"""Names of a package imported from its submodules on first use (PEP 562), so that importing
the package, or one of its light submodules, does not import torch."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, submodule_of: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose public names are the keys
    of ``submodule_of``, each imported from the submodule it maps to when first asked for
    (and kept in the package's namespace from then on)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in submodule_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{submodule_of[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *submodule_of})

    return __getattr__, __dir__
