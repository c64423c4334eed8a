"""Pictures of plans and sweeps (matplotlib, Agg backend, imported only when drawing).

* ``pareto_plot``: a sweep's predicted peak against predicted step time, the unoptimised
  point and the smallest feasible budget marked.
* ``timeline_plot``: memory over the steps of one training step, stacked by category
  (constants, kept activations, recomputed activations, backward tensors, workspace), the
  budget as a line; beside it a measured trace when one is given.
* ``schedule_plot``: forward op x stage grid: kept, recomputed, or read through a variant.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, Sequence

from profiler.ir import Profile

from .plan import Plan
from .simulator import CATEGORIES, SimulationResult, simulate
from .sweep import SweepResult

COLOURS = {"constant": "#9e9e9e", "kept": "#1f77b4", "recomputed": "#ff7f0e",
           "backward": "#2ca02c", "workspace": "#d62728"}
LABELS = {"constant": "parameters, buffers, inputs", "kept": "kept activations",
          "recomputed": "recomputed activations", "backward": "gradients and backward tensors",
          "workspace": "workspace"}


class TraceFormatError(ValueError):
    """A memory snapshot that is not torch.cuda.memory._dump_snapshot's plain-data pickle."""


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _unit(peak: float) -> tuple[float, str]:
    return (2**30, "GiB") if peak >= 2**30 else (2**20, "MiB") if peak >= 2**20 else (2**10, "KiB")


def pareto_plot(result: SweepResult, path: str, title: str | None = None) -> None:
    """Predicted peak (x) against predicted step time (y), one point per feasible budget."""
    plt = _pyplot()
    scale, unit = _unit(result.baseline_peak_bytes)
    tscale, tunit = (1e3, "ms") if result.baseline_time_s < 10 else (1.0, "s")
    feasible = sorted((r for r in result.rows if r.feasible and r.predicted_peak_bytes),
                      key=lambda r: r.predicted_peak_bytes or 0)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    if feasible:
        xs = [(r.predicted_peak_bytes or 0) / scale for r in feasible]
        ys = [(r.predicted_time_s or 0) * tscale for r in feasible]
        front, best = [], float("inf")  # the Pareto front: no plan is smaller and faster
        for x, y in zip(xs, ys):
            if y < best:
                front.append((x, y))
                best = y
        ax.plot(xs, ys, "o", color=COLOURS["kept"], label="plans (one per budget)")
        ax.plot(*zip(*front), "-", color=COLOURS["kept"], label="Pareto front")
        for r, x, y in zip(feasible, xs, ys):
            ax.annotate(r.budget, (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="#444444")
    ax.plot([result.baseline_peak_bytes / scale], [result.baseline_time_s * tscale], "*",
            markersize=14, color="black", label="unoptimised (everything kept)")
    smallest = result.smallest_feasible_bytes
    if smallest is not None:
        what = "smallest feasible budget found" if any(not r.feasible for r in result.rows) \
            else "lowest peak of the sweep"
        ax.axvline(smallest / scale, color=COLOURS["workspace"], linestyle="--",
                   label=f"{what} ({smallest / scale:.2f} {unit})")
    if result.floor_bytes:
        ax.axvline(result.floor_bytes / scale, color=COLOURS["constant"], linestyle=":",
                   label=f"floor: no plan below ({result.floor_bytes / scale:.2f} {unit})")
    infeasible = [r for r in result.rows if not r.feasible]
    if infeasible:
        y0 = result.baseline_time_s * tscale
        ax.plot([r.budget_bytes / scale for r in infeasible], [y0] * len(infeasible), "x",
                color=COLOURS["workspace"], label="infeasible budgets")
    ax.set_xlabel(f"predicted peak memory ({unit})")
    ax.set_ylabel(f"predicted step time ({tunit})")
    ax.set_title(title or f"{result.model}: memory against time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plan_timeline(profile: Profile, plan: Plan) -> SimulationResult:
    """Simulate ``plan`` on its profile with the per-step breakdown by category."""
    from .schedule import build_schedule
    from .solve import planner_graph
    if profile.graph_hash != plan.graph_hash:
        raise ValueError("the profile is not the one the plan was solved for (graph hashes "
                         "differ): give the plan's own profile with --profile")
    graph = planner_graph(profile)
    return simulate(profile, build_schedule(graph, plan.decisions()), breakdown=True)


def timeline_plot(sim: SimulationResult, plan: Plan, path: str,
                  trace: Sequence[int] | None = None) -> None:
    """Memory over the run steps of the training step, stacked by category, with the budget
    and the forward/backward divide; a measured trace (bytes per event) in a second panel."""
    plt = _pyplot()
    scale, unit = _unit(max(plan.budget_bytes, sim.peak_bytes))
    panels = 2 if trace else 1
    fig, axes = plt.subplots(1, panels, figsize=(9 + 5 * (panels - 1), 5), dpi=100,
                             squeeze=False)
    ax = axes[0][0]
    steps = list(range(len(sim.breakdown)))
    ax.stackplot(steps, *[[b[c] / scale for b in sim.breakdown] for c in CATEGORIES],
                 labels=[LABELS[c] for c in CATEGORIES],
                 colors=[COLOURS[c] for c in CATEGORIES], alpha=0.85, step="post")
    ax.axhline(plan.budget_bytes / scale, color="black", linestyle="--",
               label=f"budget {plan.budget_bytes / scale:.2f} {unit}")
    ax.axvline(sim.forward_steps, color="#555555", linestyle=":")
    top = max(plan.budget_bytes, sim.peak_bytes) / scale
    ax.text(sim.forward_steps, top * 1.07, " forward | backward ", ha="center", fontsize=8)
    ax.set_ylim(0, top * 1.14)
    ax.set_xlabel("step of the schedule (each node run)")
    ax.set_ylabel(f"live memory ({unit})")
    ax.set_title(f"predicted: peak {sim.peak_bytes / scale:.2f} {unit}")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    if trace:
        mx = axes[0][1]
        tscale, tunit = _unit(max(trace))
        mx.plot(range(len(trace)), [t / tscale for t in trace], color=COLOURS["kept"],
                label="measured allocated")
        mx.axhline(sim.peak_bytes / tscale, color=COLOURS["workspace"], linestyle="--",
                   label="predicted peak")
        mx.axhline(plan.budget_bytes / tscale, color="black", linestyle=":", label="budget")
        mx.set_xlabel("allocator event")
        mx.set_ylabel(f"allocated ({tunit})")
        mx.set_title(f"measured: peak {max(trace) / tscale:.2f} {tunit}")
        mx.legend(fontsize=7)
        mx.grid(alpha=0.3)
    fig.suptitle(f"{plan.model}: memory over the training step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class ScheduleGrid:
    """``cells[row][col]``: 0 nothing, 1 ran/kept, 2 recomputed, 3+ read through variant
    ``variants[value - 3]``; column 0 is the forward pass, column k+1 backward stage k."""

    rows: list[str]
    cells: list[list[int]]
    variants: list[str]


def schedule_grid(profile: Profile, plan: Plan) -> ScheduleGrid:
    """Which forward op is kept or recomputed in which stage, and which it reads through an
    operator variant instead."""
    from .solve import planner_graph
    graph = planner_graph(profile)
    stages = len(plan.keep)
    row_of = {n["index"]: i for i, n in enumerate(plan.nodes)}
    cells = [[1] + [0] * stages for _ in plan.nodes]
    for i, n in enumerate(plan.nodes):
        for k in n["kept_in_stages"]:
            cells[i][k + 1] = 1
        for k in n["recomputed_in_stages"]:
            cells[i][k + 1] = 2
    names = sorted(set(plan.variants.values()))
    for site, name in plan.variants.items():
        e = int(site)
        k = graph.site_stage.get(e)
        if k is None:
            continue
        unneeded = graph.needs_of_choice[e, ""] - graph.needs_of_choice[e, name]
        for m in unneeded:
            for s in graph.planned_storages(m):
                row = row_of.get(graph.creator.get(s, -1))
                if row is not None:
                    cells[row][k + 1] = 3 + names.index(name)
    return ScheduleGrid(rows=[n["name"] for n in plan.nodes], cells=cells, variants=names)


def schedule_plot(grid: ScheduleGrid, plan: Plan, path: str) -> None:
    """The schedule grid as a picture: ops down, stages across."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    palette = ["#ffffff", COLOURS["kept"], COLOURS["recomputed"],
               "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    values = 3 + len(grid.variants)
    colours = (palette * 2)[:values]
    rows = max(len(grid.rows), 1)
    fig, ax = plt.subplots(figsize=(10, max(4.0, min(14.0, 2 + rows * 0.05))), dpi=100)
    cells = grid.cells or [[0]]
    ax.imshow(cells, aspect="auto", interpolation="nearest", cmap=ListedColormap(colours),
              vmin=-0.5, vmax=values - 0.5)
    ax.set_xlabel("stage (0: forward pass, k: backward stage k-1)")
    ax.set_ylabel(f"forward op ({len(grid.rows)}, in forward order)")
    if len(grid.rows) <= 40:
        ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=6)
    handles = [Patch(color=COLOURS["kept"], label="run in the forward / kept"),
               Patch(color=COLOURS["recomputed"], label="recomputed")]
    handles += [Patch(color=colours[3 + i], label=f"read through variant {v}")
                for i, v in enumerate(grid.variants)]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1),
              ncol=min(len(handles), 4), frameon=False)
    ax.set_title(f"{plan.model}: schedule ({len(plan.keep)} backward stages)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only (dicts, lists, strings, numbers): any class is refused, so a
    snapshot file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise TraceFormatError(f"the snapshot holds an object of {module}.{name}; only "
                               "torch.cuda.memory._dump_snapshot's plain data is read")


def load_trace(path: str) -> list[int]:
    """Allocated bytes after every allocator event of a ``torch.cuda.memory`` snapshot
    (``_record_memory_history`` then ``_dump_snapshot``), for the device with most events.

    Memory allocated before the recording started is unknown; frees of it would make the
    curve negative, so the curve is raised by the largest such deficit.
    """
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(f).load()
    except FileNotFoundError:
        raise TraceFormatError(f"trace file {path!r} does not exist") from None
    except TraceFormatError:
        raise
    except Exception as e:
        raise TraceFormatError(f"trace file {path!r} is not a torch memory snapshot: "
                               f"{type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("device_traces"), list):
        raise TraceFormatError(f"trace file {path!r} has no 'device_traces': make it with "
                               "torch.cuda.memory._record_memory_history() and _dump_snapshot()")
    traces = [t for t in data["device_traces"] if isinstance(t, list)]
    events = max(traces, key=len) if traces else []
    curve, live = [], 0
    for e in events:
        if not isinstance(e, dict):
            continue
        if e.get("action") == "alloc":
            live += int(e.get("size", 0))
        elif e.get("action") == "free_completed":
            live -= int(e.get("size", 0))
        else:
            continue
        curve.append(live)
    if not curve:
        raise TraceFormatError(f"trace file {path!r} records no allocations: call "
                               "_record_memory_history() before the training step")
    low = min(curve)
    return [c - low for c in curve] if low < 0 else curve
