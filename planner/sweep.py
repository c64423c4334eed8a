"""Budget sweeps (``monet sweep``): one plan per budget, a CSV of the trade-off, resumable.

The output directory holds the state. Every finished budget leaves ``plan_<budget>.json``
(or ``plan_<budget>.infeasible.json`` when no plan fits) and the CSV is rewritten after
each, all atomically, so an interrupted sweep keeps what it finished; run again, it skips
every budget whose plan matches the profile's graph hash and variant setting.

Budgets run from the largest to the smallest and each solve is warm-started from the
previous budget's plan. Once a budget is infeasible, smaller ones below the smallest
feasible budget found are recorded as infeasible without solving.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from profiler.ir import (
    Profile,
    ProfileFormatError,
    read_json,
    write_atomic,
    write_json_atomic,
)

from .backends import SolveOptions
from .budget import BudgetError, format_bytes, parse_budget
from .floor import peak_floor
from .plan import Plan, PlanFormatError
from .schedule import Decisions, baseline_decisions
from .solve import InfeasibleBudgetError, evaluate, planner_graph, solve

log = logging.getLogger(__name__)

CSV_COLUMNS = ["budget", "budget_bytes", "predicted_peak_bytes", "predicted_time_s",
               "overhead", "solve_time_s", "gap", "status", "smallest_feasible_bytes",
               "solver", "variants_used", "plan"]
MAX_BUDGETS = 1000


def parse_budget_list(specs: Sequence[str | int | float]) -> list[str]:
    """Expand budget specifications into single budgets (strings, as ``parse_budget`` takes).

    Each item is a single budget (``0.5``, ``5GiB``, ``123456789``), a comma-separated list
    of them, or a range ``START:STOP:STEP`` of plain numbers (fractions or bytes), STOP
    included: ``0.2:1.0:0.1`` is 0.2, 0.3, ..., 1.0.
    """
    out: list[str] = []
    for item in specs:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                out += _expand_range(part)
            else:
                out.append(part)
    if not out:
        raise BudgetError("no budgets given: use e.g. --budgets 0.2:1.0:0.1 or 0.5,0.3,2GiB")
    return out


def _expand_range(spec: str) -> list[str]:
    parts = spec.split(":")
    try:
        if len(parts) != 3:
            raise InvalidOperation
        start, stop, step = (Decimal(p) for p in parts)
    except InvalidOperation:
        raise BudgetError(f"budget range {spec!r} is not START:STOP:STEP of plain numbers, "
                          "e.g. 0.2:1.0:0.1") from None
    if step <= 0:
        raise BudgetError(f"budget range {spec!r}: STEP must be positive, e.g. 0.2:1.0:0.1")
    if start <= 0 or stop < start:
        raise BudgetError(f"budget range {spec!r}: need 0 < START <= STOP, e.g. 0.2:1.0:0.1")
    if (stop - start) / step >= MAX_BUDGETS:
        raise BudgetError(f"budget range {spec!r} gives more than {MAX_BUDGETS} budgets; "
                          "use a larger STEP")
    fractions = "." in spec
    values, v = [], start
    while v <= stop:
        if fractions:  # 1.0 stays a fraction (of the peak), not 1 byte
            text = format(v.normalize(), "f")
            values.append(text if "." in text else text + ".0")
        else:
            values.append(str(v))
        v += step
    return values


def budget_label(spec: str) -> str:
    """A file-name-safe label for a budget spec: ``0.5`` -> ``0.5``, ``5 GiB`` -> ``5GiB``."""
    return re.sub(r"[^0-9A-Za-z.]+", "_", spec.strip()) or "budget"


@dataclass
class SweepRow:
    """One budget of a sweep: what was asked, what the plan predicts, how it was solved."""

    budget: str
    budget_bytes: int
    predicted_peak_bytes: int | None = None
    predicted_time_s: float | None = None
    overhead: float | None = None
    solve_time_s: float = 0.0
    gap: float | None = None
    status: str = ""
    smallest_feasible_bytes: int | None = None
    solver: str = ""
    variants_used: int | None = None
    plan: str = ""
    resumed: bool = False

    @property
    def feasible(self) -> bool:
        return self.status != "infeasible"


@dataclass
class SweepResult:
    model: str
    graph_hash: str
    baseline_peak_bytes: int
    baseline_time_s: float
    rows: list[SweepRow] = field(default_factory=list)
    csv_path: str = ""
    floor_bytes: int | None = None  # a peak no plan goes below (planner.floor)

    @property
    def smallest_feasible_bytes(self) -> int | None:
        """The smallest feasible budget an infeasible budget reported, else the lowest
        peak of the sweep's plans (None when no budget was feasible or reported one)."""
        reported = [r.smallest_feasible_bytes for r in self.rows
                    if not r.feasible and r.smallest_feasible_bytes is not None]
        if reported:
            return min(reported)
        peaks = [r.predicted_peak_bytes for r in self.rows if r.feasible]
        return min(peaks) if peaks else None  # type: ignore[type-var]


# progress(event, index, total, row, seconds_left): event is "start", "done" or "skipped".
ProgressFn = Callable[[str, int, int, SweepRow, "float | None"], None]


TIME_SPLITS = ("tight", "even")


def time_shares(budget_bytes: Sequence[int], peak_bytes: int, split: str = "tight"
                ) -> list[float]:
    """Each budget's share of a sweep's time, as a multiple of the per-budget time limit
    (the shares average 1, so the sweep's total is unchanged). ``even``: 1 each. ``tight``:
    in proportion to ``peak_bytes / budget``, so that tighter budgets, where the window
    search is still improving when a 27 s limit ends, get more. On ResNet-50's measured
    profile (10 budgets, 0.25-0.7, 263-264 s either way) it took 0.25-0.35 from +48.9, +48.9
    and +33.3 % to +28.9, +27.1 and +27.1 %, and cost 0.3-0.7 points at 0.5-0.7."""
    if split not in TIME_SPLITS:
        raise ValueError(f"time split must be one of {', '.join(TIME_SPLITS)}, not {split!r}")
    if split == "even" or not budget_bytes:
        return [1.0] * len(budget_bytes)
    weights = [peak_bytes / max(b, 1) for b in budget_bytes]
    return [w * len(weights) / sum(weights) for w in weights]


def run_sweep(profile: Profile, budgets: Sequence[str | int | float], out_dir: str,
              backend: str = "highs", options: SolveOptions | None = None,
              progress: ProgressFn | None = None, profile_path: str = "",
              time_split: str = "tight") -> SweepResult:
    """Solve ``profile`` at every budget into ``out_dir``; resume what is already there.
    ``profile_path`` is recorded in ``out_dir/sweep.json`` (``monet inspect`` finds the
    profile of a plan there). ``time_split`` shares the time among the budgets
    (:func:`time_shares`): ``options.time_limit_s`` is the mean per budget."""
    options = options or SolveOptions()
    graph = planner_graph(profile)
    base = evaluate(profile, graph, baseline_decisions(graph)).result
    specs = parse_budget_list(budgets)
    by_bytes: dict[int, str] = {}
    for spec in specs:  # checked before any solve; equal budgets are solved once
        by_bytes.setdefault(parse_budget(spec, base.peak_bytes), spec)
    todo = sorted(by_bytes.items(), reverse=True)
    shares = time_shares([b for b, _ in todo], base.peak_bytes, time_split)
    os.makedirs(out_dir, exist_ok=True)
    _check_manifest(out_dir, profile, options, profile_path)
    result = SweepResult(model=profile.model, graph_hash=profile.graph_hash,
                         baseline_peak_bytes=base.peak_bytes, baseline_time_s=base.time_s,
                         csv_path=os.path.join(out_dir, "sweep.csv"),
                         floor_bytes=peak_floor(profile, graph, options.variants,
                                                options.variants).peak_bytes)
    hints: list[Decisions] = []
    plans: dict[int, tuple[Plan, str]] = {}  # budget bytes -> its plan and file
    smallest: int | None = None
    solved_s, solved_share = 0.0, 0.0  # seconds and time shares of the budgets solved
    for i, (budget_bytes, spec) in enumerate(todo):
        plan_path = os.path.join(out_dir, f"plan_{budget_label(spec)}.json")
        row, plan = _resume(plan_path, profile, budget_bytes, spec, base.time_s)
        if row is not None:
            log.info("budget %s: skipped, %s already in %s", spec, row.status, out_dir)
            if progress:
                progress("skipped", i, len(todo), row, None)
        else:
            row = SweepRow(budget=spec, budget_bytes=budget_bytes)
            eta = solved_s / solved_share * sum(shares[i:]) if solved_share else None
            if progress:
                progress("start", i, len(todo), row, eta)
            t0 = time.perf_counter()
            if smallest is not None and budget_bytes < smallest:
                row.status, row.smallest_feasible_bytes = "infeasible", smallest
                log.info("budget %s: below the smallest feasible budget found, %s", spec,
                         format_bytes(smallest))
            else:
                try:
                    limit = options.time_limit_s * shares[i]
                    log.info("budget %s: %.1f s", spec, limit)
                    plan = solve(profile, spec, backend,
                                 replace(options, time_limit_s=limit), hints=hints[-1:])
                    plan.save(plan_path)
                    row = _row_of(plan, spec, plan_path, base.time_s)
                except InfeasibleBudgetError as e:
                    row.status, row.smallest_feasible_bytes = "infeasible", e.smallest_feasible
                    log.info("budget %s: %s", spec, e)
                row.solve_time_s = time.perf_counter() - t0
                solved_s, solved_share = solved_s + row.solve_time_s, solved_share + shares[i]
            if not row.feasible:
                write_json_atomic(_infeasible_path(plan_path), {
                    "graph_hash": profile.graph_hash, **asdict(row)})
            if progress:
                eta = solved_s / solved_share * sum(shares[i + 1:]) if solved_share else None
                progress("done", i, len(todo), row, eta)
        if plan is not None:
            hints.append(plan.decisions())
        if not row.feasible and row.smallest_feasible_bytes is not None:
            smallest = min(smallest or row.smallest_feasible_bytes, row.smallest_feasible_bytes)
        result.rows.append(row)
        write_csv(result.csv_path, result.rows)
        if plan is not None:
            plans[budget_bytes] = (plan, plan_path)
    if _share_faster_plans(plans, result.rows, base.time_s):
        write_csv(result.csv_path, result.rows)
    return result


def _share_faster_plans(plans: dict[int, tuple[Plan, str]], rows: list[SweepRow],
                        baseline_time_s: float) -> bool:
    """A plan that fits a larger budget and is faster than that budget's own plan (time-
    limited solves of neighbouring budgets can find such plans) replaces it: every budget
    ends with the fastest plan of the sweep within it. The replacement records which budget
    it was solved for, and no bound or gap (those were another problem's). Returns whether
    anything changed."""
    changed = False
    solved = [p for p, _ in plans.values() if not p.solver.status.startswith("from budget")]
    for row in rows:
        own = plans.get(row.budget_bytes)
        if own is None:
            continue
        fitting = [p for p in solved if p.predicted_peak_bytes <= row.budget_bytes] or [own[0]]
        best = min(fitting, key=lambda p: p.predicted_time_s)
        plan, path = own
        if best.predicted_time_s >= plan.predicted_time_s:
            continue
        log.info("budget %s: the plan of budget %s is faster (%+.2f%% against %+.2f%%)",
                 row.budget, best.budget_spec, 100 * (best.predicted_time_s /
                                                      baseline_time_s - 1),
                 100 * (plan.predicted_time_s / baseline_time_s - 1))
        shared = replace(best, budget_bytes=plan.budget_bytes, budget_spec=plan.budget_spec,
                         solver=replace(best.solver, status=f"from budget {best.budget_spec}",
                                        bound=None, gap=None))
        shared.save(path)
        plans[row.budget_bytes] = (shared, path)
        new = _row_of(shared, row.budget, path, baseline_time_s)
        new.solve_time_s, new.resumed = row.solve_time_s, row.resumed
        row.__dict__.update(new.__dict__)
        changed = True
    return changed


def _row_of(plan: Plan, spec: str, path: str, baseline_time_s: float) -> SweepRow:
    overhead = plan.predicted_time_s / baseline_time_s - 1 if baseline_time_s else 0.0
    return SweepRow(budget=spec, budget_bytes=plan.budget_bytes,
                    predicted_peak_bytes=plan.predicted_peak_bytes,
                    predicted_time_s=plan.predicted_time_s, overhead=overhead,
                    solve_time_s=plan.solver.solve_time_s, gap=plan.solver.gap,
                    status=plan.solver.status, solver=plan.solver.name,
                    variants_used=len(plan.variants), plan=os.path.basename(path))


def _infeasible_path(plan_path: str) -> str:
    return plan_path[:-len(".json")] + ".infeasible.json"


def _resume(plan_path: str, profile: Profile, budget_bytes: int, spec: str,
            baseline_time_s: float) -> tuple[SweepRow | None, Plan | None]:
    """The finished row (and plan) of this budget if the directory holds one for this
    profile; (None, None) when it must be solved."""
    if os.path.exists(plan_path):
        try:
            plan = Plan.load(plan_path)
        except PlanFormatError as e:
            log.warning("re-solving budget %s: %s", spec, e)
            return None, None
        if plan.graph_hash == profile.graph_hash and plan.budget_bytes == budget_bytes:
            row = _row_of(plan, spec, plan_path, baseline_time_s)
            row.resumed = True
            return row, plan
        log.info("re-solving budget %s: %s is for another profile", spec, plan_path)
        return None, None
    path = _infeasible_path(plan_path)
    if os.path.exists(path):
        try:
            data = read_json(path, what="sweep record")
            if data.pop("graph_hash") == profile.graph_hash and \
                    data.get("budget_bytes") == budget_bytes:
                row = SweepRow(**{**data, "resumed": True})
                return row, None
        except (ProfileFormatError, KeyError, TypeError) as e:
            log.warning("re-solving budget %s: %s", spec, e)
    return None, None


def _check_manifest(out_dir: str, profile: Profile, options: SolveOptions,
                    profile_path: str) -> None:
    """Record what the directory's plans were solved for; a sweep with another variant
    setting must not reuse them, so their files are set aside."""
    path = os.path.join(out_dir, "sweep.json")
    manifest = {"model": profile.model, "graph_hash": profile.graph_hash,
                "variants": options.variants, "profile": profile_path}
    try:
        old = read_json(path, what="sweep manifest") if os.path.exists(path) else None
    except ProfileFormatError:
        old = None
    if old is not None and old.get("variants") != options.variants:
        log.warning("%s holds plans with variants=%s; solving again with variants=%s",
                    out_dir, old.get("variants"), options.variants)
        for name in os.listdir(out_dir):
            if name.startswith("plan_") and name.endswith(".json"):
                os.replace(os.path.join(out_dir, name), os.path.join(out_dir, name + ".old"))
    write_json_atomic(path, manifest)


def write_csv(path: str, rows: Sequence[SweepRow]) -> None:
    """Write the sweep's CSV atomically, one row per budget, largest budget first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        d = asdict(r)
        writer.writerow(["" if d[c] is None else _fmt(d[c]) for c in CSV_COLUMNS])
    write_atomic(path, buf.getvalue(), suffix=".csv")


def _fmt(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a sweep CSV as dictionaries of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def result_summary(result: SweepResult) -> str:
    """A table of the sweep for the terminal."""
    lines = [f"{'budget':>10} {'bytes':>11} {'peak':>11} {'overhead':>9} {'solve s':>8} "
             f"{'gap':>7}  status"]
    for r in result.rows:
        peak = format_bytes(r.predicted_peak_bytes) if r.predicted_peak_bytes else "-"
        over = f"{r.overhead:+.1%}" if r.overhead is not None else "-"
        gap = f"{r.gap:.1%}" if r.gap is not None else "-"
        status = r.status + (" (resumed)" if r.resumed else "")
        if not r.feasible and r.smallest_feasible_bytes:
            status += f", smallest feasible {format_bytes(r.smallest_feasible_bytes)}"
        lines.append(f"{r.budget:>10} {format_bytes(r.budget_bytes):>11} {peak:>11} "
                     f"{over:>9} {r.solve_time_s:>8.1f} {gap:>7}  {status}")
    if result.floor_bytes:
        lines.append(f"no plan peaks below {format_bytes(result.floor_bytes)} (the floor: the "
                     "most memory one op needs while it runs)")
    return "\n".join(lines)

