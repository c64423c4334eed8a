"""End-to-end figures on the CPU: profile, solve at several budgets, run the plan, compare.

For each model and budget: the predicted peak (fraction of the unoptimised one), the
predicted time overhead, the solve time and gap, whether the executor's counted peak equals
the simulator's, whether gradients equal eager's bit for bit, and the measured CPU wall time
of a planned step against an eager one (median of a few steps; CPU only, so a check of the
runtime's overhead, not a GPU figure).

    python bench/cpu_pipeline.py            # writes bench/results/cpu_pipeline.md
"""
from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from planner import InfeasibleBudgetError, smallest_feasible_budget, solve  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from planner.budget import format_bytes  # noqa: E402
from profiler import load_model, profile_model  # noqa: E402
from runtime import load_plan  # noqa: E402

MODELS = {
    "resnet18 (32x3x160x160)": ("torchvision:resnet18", {"batch": 32, "image_size": 160}),
    "mobilenet_v2 (16x3x96x96)": ("torchvision:mobilenet_v2", {"batch": 16, "image_size": 96}),
    "gpt_small (4x64 tokens)": ("examples.gpt:gpt_small", {}),
}
log = logging.getLogger("bench")


def step(model, inputs, seed=0):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model(*inputs).float().square().mean().backward()
    return time.perf_counter() - t0


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("-o", "--output",
                        default=os.path.join(ROOT, "bench/results/cpu_pipeline.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = SolveOptions(time_limit_s=args.time_limit)
    rows = []
    for label, (spec, kwargs) in MODELS.items():
        model, inputs = load_model(spec, **kwargs)
        profile = profile_model(model, inputs, name=spec, estimate=True)
        eager = copy.deepcopy(model)
        step(eager, inputs)
        eager_grads = grads(eager)
        smallest, bound = smallest_feasible_budget(profile, options=options)
        budgets = [1.0, 0.8, 0.6, int(smallest * 1.05)]
        for budget in budgets:
            t0 = time.perf_counter()
            try:
                plan = solve(profile, budget, options=options)
            except InfeasibleBudgetError as e:
                rows.append(f"| {label} | {budget} | infeasible: smallest "
                            f"{format_bytes(e.smallest_feasible)} | | | | | | |")
                continue
            solve_s = time.perf_counter() - t0
            planned = load_plan(copy.deepcopy(model), plan)
            step(planned, inputs)
            exact = all(torch.equal(a, b) for a, b in zip(eager_grads, grads(planned.module)))
            counted = planned.last_peak_bytes
            times, eager_times = [], []
            for _ in range(args.steps):  # interleaved, so both see the same machine load
                for m, out in ((eager, eager_times), (planned, times)):
                    m.zero_grad(set_to_none=True)
                    out.append(step(m, inputs))
            ratio = statistics.median(times) / statistics.median(eager_times)
            gap = "" if plan.solver.gap is None else f"{plan.solver.gap:.1%}"
            spec_text = budget if isinstance(budget, float) else "smallest+5%"
            rows.append(
                f"| {label} | {spec_text} | {format_bytes(plan.predicted_peak_bytes)} "
                f"({plan.predicted_peak_bytes / plan.baseline_peak_bytes:.0%}) "
                f"| {plan.predicted_time_s / plan.baseline_time_s - 1:+.1%} "
                f"| {solve_s:.1f} s, {plan.solver.status}, gap {gap} "
                f"| {'yes' if counted == plan.predicted_peak_bytes else 'NO'} "
                f"| {'yes' if exact else 'NO'} | {ratio:.2f} |")
            log.info(rows[-1])
        rows.append(f"| {label} | lowest found | {format_bytes(smallest)}, lower bound "
                    f"{format_bytes(bound) if bound else '?'} | | | | | |")
    header = [
        "# CPU pipeline: profile, solve, run, compare",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, CPU ({os.cpu_count()} cores), "
        f"FLOP-estimated profiles, HiGHS with a {args.time_limit:.0f} s limit. Produced by "
        "`python bench/cpu_pipeline.py`.",
        "",
        "Peak = predicted peak (fraction of the unoptimised one); overhead = predicted step "
        "time against the unoptimised plan (estimated times); counted = the executor's held "
        "bytes equal the simulator's peak; exact = every gradient `torch.equal` to eager; "
        "CPU time = measured planned step / eager step (median of "
        f"{args.steps}, includes the Python executor).",
        "",
        "| model | budget | peak | overhead | solve | counted = predicted | exact | CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(header + rows) + "\n")
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
