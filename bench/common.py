"""What the bench scripts share: results written atomically, so an interrupted run keeps
the rows it finished and never leaves a half-written file, and budget fractions."""
from __future__ import annotations

from profiler.ir import write_atomic

__all__ = ["parse_fraction", "write_atomic"]


def parse_fraction(text: str) -> float:
    """``1/3`` or ``0.5`` as a number in (0, 1]."""
    num, _, den = text.partition("/")
    value = float(num) / float(den or 1)
    if not 0 < value <= 1:
        raise ValueError(f"budget fraction {text!r} is not in (0, 1]")
    return value
