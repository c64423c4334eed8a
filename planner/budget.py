"""Memory budgets: bytes, size strings (``5GiB``, ``800MB``) or a fraction of the peak."""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class BudgetError(ValueError):
    """A budget that does not parse or is out of range."""


def parse_budget(spec: str | int | float, unoptimised_peak: int) -> int:
    """Bytes for a budget given as bytes, a size string, or a fraction in (0, 1]."""
    if isinstance(spec, int):
        value, fraction = spec, False
    elif isinstance(spec, float):
        value, fraction = spec, spec <= 1
    else:
        text = spec.strip().lower().replace(" ", "")
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([a-z]*)", text)
        if not m or m.group(2) not in _UNITS:
            raise BudgetError(f"budget {spec!r} does not parse: give bytes (123456789), a size "
                              "(5GiB, 800MB) or a fraction of the unoptimised peak in (0, 1]")
        number, unit = float(m.group(1)), m.group(2)
        fraction = unit == "" and "." in m.group(1) or (unit == "" and number <= 1)
        value = number * _UNITS[unit]
    if fraction:
        if not 0 < value <= 1:
            raise BudgetError(f"budget fraction {value} is not in (0, 1]: give a fraction of "
                              "the unoptimised peak, bytes (123456789) or a size (5GiB)")
        return int(value * unoptimised_peak)
    if value <= 0:
        raise BudgetError(f"budget {spec!r} must be positive: give a fraction in (0, 1], "
                          "bytes or a size (5GiB)")
    return int(value)


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.50 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
