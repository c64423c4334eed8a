"""Where a step's GPU time goes: eager against our runtime, kernel by kernel.

    python bench/kernel_breakdown.py --model resnet50 --plans PLANS --labels unoptimised 1/3 \
        --out RESULTS

Runs one warmed-up step of eager PyTorch and of each named plan of ``bench/compare.py``'s
solve phase under ``torch.profiler`` and writes ``kernels_<model>.md``: per method, the step's
wall time, the summed device time of its kernels, the idle share of the device (wall time
not covered by kernels: launch and Python overhead the GPU waits for), and the kernels that
take the most time, so that a gap between our step and eager's can be named.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baselines import MODELS, autocast_context, build  # noqa: E402
from measure import free_memory, training_step  # noqa: E402
from report import write_atomic  # noqa: E402

log = logging.getLogger("bench.kernels")


def profile_step(module: torch.nn.Module, inputs, autocast, warmup: int = 3
                 ) -> tuple[float, list[tuple[str, float, int]]]:
    """Wall seconds of one step and its kernels as (name, device seconds, calls), largest
    first."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        training_step(module, inputs, autocast)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        training_step(module, inputs, autocast)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels.setdefault(event.name, [0.0, 0])
            entry[0] += event.time_range.elapsed_us() / 1e6
            entry[1] += 1
    rows = sorted(((name, t, int(n)) for name, (t, n) in kernels.items()),
                  key=lambda r: -r[1])
    return wall, rows


def render(model: str, results: dict[str, tuple[float, list]], top: int) -> str:
    lines = [f"# GPU time of one {model} step, kernel by kernel (`bench/kernel_breakdown.py`)",
             "", f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| method | step wall | kernel time | device idle | kernels launched |",
             "|---|---|---|---|---|"]
    for method, (wall, rows) in results.items():
        busy = sum(r[1] for r in rows)
        lines.append(f"| {method} | {wall * 1e3:.1f} ms | {busy * 1e3:.1f} ms | "
                     f"{max(0.0, 1 - busy / wall):.0%} | {sum(r[2] for r in rows)} |")
    for method, (wall, rows) in results.items():
        lines += ["", f"## {method}: the {top} kernels that take the most time", "",
                  "| kernel | time | calls |", "|---|---|---|"]
        lines += [f"| `{name[:110]}` | {t * 1e3:.2f} ms | {n} |" for name, t, n in rows[:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--plans", required=True, help="bench/compare.py solve's directory")
    parser.add_argument("--labels", nargs="+", default=["unoptimised"])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from planner.plan import Plan
    from runtime import load_plan
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    bench = MODELS[args.model]
    pristine, inputs = build(bench, small=False)
    inputs = tuple(x.to(device) for x in inputs)
    autocast = autocast_context(bench, "cuda")
    index = json.load(open(os.path.join(args.plans, "plans.json"))).get(args.model, [])
    results = {}
    module = copy.deepcopy(pristine).to(device)
    results["eager"] = profile_step(module, inputs, autocast)
    del module
    free_memory(device)
    for label in args.labels:
        entry = next((e for e in index if e["label"] == label and e.get("file")), None)
        if entry is None:
            log.warning("%s: no plan %s in %s", args.model, label, args.plans)
            continue
        module = copy.deepcopy(pristine).to(device)
        with autocast:
            module = load_plan(module, Plan.load(os.path.join(args.plans, entry["file"])))
        results[f"ours {label}"] = profile_step(module, inputs, autocast)
        del module
        free_memory(device)
    os.makedirs(args.out, exist_ok=True)
    text = render(args.model, results, args.top)
    write_atomic(os.path.join(args.out, f"kernels_{args.model}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
