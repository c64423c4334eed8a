"""Solver progress through ``logging``: elapsed time, incumbent, bound and gap.

Every backend reports through one ``ProgressLog``, so ``monet solve -v`` shows the same
lines whichever solver runs. New incumbents are always logged; other updates at most every
``every_s`` seconds.
"""
from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("planner.progress")


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """(objective - bound) / |objective|, 0 when both are 0; None when either is unknown."""
    if objective is None or bound is None or not math.isfinite(objective) \
            or not math.isfinite(bound):
        return None
    if abs(objective) <= 1e-12:
        return 0.0 if abs(bound) <= 1e-12 else None
    return max(0.0, (objective - bound) / abs(objective))


class ProgressLog:
    """Throttled progress lines for one solve."""

    def __init__(self, solver: str, every_s: float = 5.0):
        self.solver = solver
        self.every_s = every_s
        self.start = time.perf_counter()
        self.last = -math.inf
        self.best: float | None = None

    def highs_event(self, event) -> None:
        """A HiGHS MIP callback (improving solution, interrupt): its state, as ``update``."""
        d = event.data_out
        self.update(d.mip_primal_bound, d.mip_dual_bound, d.running_time)

    def update(self, incumbent: float | None, bound: float | None,
               elapsed: float | None = None) -> None:
        """Log the state if there is a new incumbent or ``every_s`` has passed."""
        now = time.perf_counter()
        improved = incumbent is not None and math.isfinite(incumbent) and \
            (self.best is None or incumbent < self.best - 1e-12)
        if not improved and now - self.last < self.every_s:
            return
        if improved:
            self.best = incumbent
        self.last = now
        gap = relative_gap(self.best, bound)
        log.info("%s %6.1f s: incumbent %s, bound %s, gap %s%s", self.solver,
                 elapsed if elapsed is not None else now - self.start,
                 "none" if self.best is None else f"{self.best:.6g}",
                 "none" if bound is None or not math.isfinite(bound) else f"{bound:.6g}",
                 "n/a" if gap is None else f"{gap:.2%}", " (new incumbent)" if improved else "")
