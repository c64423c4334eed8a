"""Results of ``bench/compare.py``: rows, the markdown table, the JSON and the Pareto plot."""
from __future__ import annotations

import datetime
import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from common import write_atomic

GIB = 2**30
PEAK_TOLERANCE = 0.02  # measured peak within 2 % of the predicted one


@dataclass
class Row:
    """One method on one model."""

    model: str
    method: str
    status: str = "ok"  # ok | oom | error: ... | infeasible | skipped
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    step_s: float | None = None
    overhead: float | None = None  # step time / eager step time - 1
    loss: float | None = None
    grad_diff: float | None = None  # max relative gradient difference from eager
    # Our plans only:
    budget_bytes: int | None = None  # the target: fraction x eager peak
    predicted_peak: int | None = None  # the plan's peak plus the library bytes
    ratio: float | None = None  # measured / predicted
    over_budget: bool | None = None
    note: str = ""


@dataclass
class RunInfo:
    """Where and when the results were measured."""

    device: str
    device_name: str
    torch_version: str
    date: str
    small: bool
    command: str = ""

    @classmethod
    def now(cls, device: str, device_name: str, torch_version: str, small: bool,
            command: str = "") -> "RunInfo":
        return cls(device, device_name, torch_version,
                   datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   small, command)


def save_json(path: str, info: RunInfo, rows: list[Row], extra: dict[str, Any] | None = None
              ) -> None:
    """The results as JSON: the run's information and one object per row."""
    body = {"info": asdict(info), "rows": [asdict(r) for r in rows], **(extra or {})}
    write_atomic(path, json.dumps(body, indent=1))


def load_json(path: str) -> tuple[RunInfo, list[Row]]:
    """Read results written by ``save_json``."""
    with open(path) as f:
        body = json.load(f)
    return RunInfo(**body["info"]), [Row(**r) for r in body["rows"]]


def _gib(n: int | None) -> str:
    if n is None:
        return ""
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / 2**20:.2f} MiB"


def _ms(s: float | None) -> str:
    return "" if s is None else f"{s * 1e3:.1f} ms"


def render_markdown(info: RunInfo, rows: list[Row]) -> str:
    """The table: one row per model and method, with the 2 % check for our plans."""
    lines = [
        "# Memory and step time against the alternatives (`bench/compare.py`)", "",
        f"Device: {info.device_name} ({info.device}); torch {info.torch_version}; {info.date}"
        + ("; **small CPU versions of the models: a check of the script, not the benchmark**"
           if info.small else "") + ".", "",
        "Step = forward, cross-entropy loss, backward (no optimizer step), random data, cuDNN "
        "benchmark mode on. Peak allocated = `torch.cuda.max_memory_allocated()` over one "
        "step after warm-up, parameters and input included (on the CPU: MemTracker's peak); "
        "peak reserved = `max_memory_reserved()`; time = median of the timed steps after "
        "warm-up; overhead against eager. For our plans: the budget is the fraction of the "
        "eager peak, predicted = the plan's peak plus the bytes the libraries hold (measured "
        f"after a warm-up), ratio = measured / predicted (criterion: within "
        f"{PEAK_TOLERANCE:.0%}), and over budget flags a measured peak above the budget. "
        "Gradient difference: largest entry difference from eager relative to the largest "
        "eager entry of the same parameter.", "",
        "| model | method | peak allocated | peak reserved | step | overhead | budget | "
        "predicted | measured / predicted | over budget | grad diff | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}" + (
            "" if abs(r.ratio - 1) <= PEAK_TOLERANCE else " (outside 2 %)")
        over = "" if r.over_budget is None else ("**YES**" if r.over_budget else "no")
        lines.append(
            f"| {r.model} | {r.method} | {_gib(r.peak_allocated)} | {_gib(r.peak_reserved)} "
            f"| {_ms(r.step_s)} | {'' if r.overhead is None else f'{r.overhead:+.1%}'} "
            f"| {_gib(r.budget_bytes)} | {_gib(r.predicted_peak)} | {ratio} | {over} "
            f"| {'' if r.grad_diff is None else f'{r.grad_diff:.1e}'} | {r.status}"
            f"{(': ' + r.note) if r.note else ''} |")
    return "\n".join(lines) + "\n"


def pareto_plot(info: RunInfo, rows: list[Row], path: str) -> None:
    """Peak allocated (x) against step time (y): one panel per model, one series per
    method family (eager, checkpoint, compile, ours)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    cols = min(3, max(1, len(models)))
    nrows = -(-len(models) // cols) if models else 1
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4 * nrows), squeeze=False)
    markers = {"eager": "*", "checkpoint": "s", "compile": "^", "ours": "o"}
    for ax, model in zip(axes.flat, models):
        by_family: dict[str, list[Row]] = {}
        for r in rows:
            if r.model == model and r.status == "ok" and r.peak_allocated and r.step_s:
                by_family.setdefault(r.method.split(" ")[0], []).append(r)
        for family, rs in by_family.items():
            rs = sorted(rs, key=lambda r: r.peak_allocated)
            ax.plot([r.peak_allocated / GIB for r in rs], [r.step_s * 1e3 for r in rs],
                    marker=markers.get(family, "x"), label=family,
                    linestyle="-" if len(rs) > 1 else "none")
            for r in rs:
                ax.annotate(r.method.split(" ", 1)[1] if " " in r.method else "",
                            (r.peak_allocated / GIB, r.step_s * 1e3), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_title(model)
        ax.set_xlabel("peak allocated (GiB)")
        ax.set_ylabel("step time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(f"{info.device_name}, torch {info.torch_version}, {info.date}"
                 + (" (small CPU check)" if info.small else ""), fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue(), suffix=".png")


def write_results(out_dir: str, info: RunInfo, rows: list[Row], stem: str = "compare") -> None:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>_pareto.png`` in ``out_dir``."""
    save_json(os.path.join(out_dir, f"{stem}.json"), info, rows)
    write_atomic(os.path.join(out_dir, f"{stem}.md"), render_markdown(info, rows))
    pareto_plot(info, rows, os.path.join(out_dir, f"{stem}_pareto.png"))
