"""The Plan: versioned JSON with the schedule's decisions and what they promise.

A plan carries a checksum of its own content, so a truncated or hand-edited file is refused
instead of silently running a different schedule than the one that was verified.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from profiler.ir import ProfileFormatError, read_json, unknown_fields, write_json_atomic

from .schedule import Decisions

PLAN_SCHEMA_VERSION = 2


class PlanFormatError(ValueError):
    """A plan file that is missing, truncated, edited or of an unknown schema version."""


@dataclass
class SolverInfo:
    name: str
    status: str
    time_limit_s: float
    solve_time_s: float
    objective: float | None = None
    bound: float | None = None
    gap: float | None = None
    variables: int = 0
    constraints: int = 0


@dataclass
class Plan:
    """What to keep and what to recompute in every stage, and the resulting peak and time."""

    graph_hash: str
    model: str
    device: str
    device_name: str
    dtype: str
    torch_version: str
    input_shapes: list[list[int]]
    input_dtypes: list[str]
    graph_targets: list[str]
    budget_bytes: int
    budget_spec: str
    predicted_peak_bytes: int
    predicted_time_s: float
    solver_peak_bytes: int
    baseline_peak_bytes: int
    baseline_time_s: float
    solver: SolverInfo
    keep: list[list[int]]  # per stage: forward storages held at its start
    recompute: list[list[int]]  # per stage: forward nodes recomputed at its start
    variants: dict[str, str] = field(default_factory=dict)  # site node index -> variant
    in_place: str = "none"  # the writes in place it uses (planner.in_place)
    in_place_summary: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # human-readable summary
    variant_summary: list[dict[str, Any]] = field(default_factory=list)
    autocast: str = ""  # "" or the torch.autocast dtype the graph was captured under
    # node index -> temporary bytes of its call beyond its outputs (the profile's, measured
    # on the device or declared by a variant), where not 0: what the runtime counts
    workspace_bytes: dict[str, int] = field(default_factory=dict)
    schema_version: int = PLAN_SCHEMA_VERSION

    @property
    def step_gap(self) -> float | None:
        """The gap measured on the whole step rather than on the extra time: (objective -
        bound) / (unoptimised step + objective), how far above the fastest step that fits
        this plan's may be (MONeT's and Checkmate's objective is the whole step's compute
        time). ``solver.gap`` is the stricter (objective - bound) / objective. None
        without a bound."""
        s = self.solver
        if s.objective is None or s.bound is None or s.gap is None:
            return None
        step = self.baseline_time_s + s.objective
        return 0.0 if step <= 0 else max(0.0, (s.objective - s.bound) / step)

    def gap_text(self) -> str:
        """The two gaps as one phrase ("" without a bound)."""
        if self.step_gap is None:
            return ""
        return f"gap {self.solver.gap:.1%} of the extra time ({self.step_gap:.2%} of the step)"

    def decisions(self) -> Decisions:
        return Decisions(keep=[set(k) for k in self.keep],
                         recompute=[set(r) for r in self.recompute],
                         variants={int(k): v for k, v in self.variants.items()},
                         in_place=self.in_place)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["checksum"] = _checksum(d)
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Plan":
        if not isinstance(d, dict):
            raise PlanFormatError("not a plan: the file holds no JSON object")
        if d.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise PlanFormatError(f"plan schema_version {d.get('schema_version')!r} is not "
                                  f"{PLAN_SCHEMA_VERSION}: solve the plan again")
        d = dict(d)
        checksum = d.pop("checksum", None)
        if checksum != _checksum(d):
            raise PlanFormatError("plan checksum does not match its content: the file was "
                                  "edited or damaged; solve the plan again")
        unknown = unknown_fields(cls, d, "plan")
        if unknown:
            raise PlanFormatError(f"{unknown}: solve the plan again with this one")
        try:
            d["solver"] = SolverInfo(**d["solver"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise PlanFormatError(f"not a valid plan: {e}") from e

    def save(self, path: str) -> None:
        """Write the plan atomically: an interrupted write leaves no partial file."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Plan":
        try:
            data = read_json(path, what="plan")
        except ProfileFormatError as e:
            raise PlanFormatError(str(e)) from e
        return cls.from_json(data)


def _checksum(d: dict[str, Any]) -> str:
    body = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()
