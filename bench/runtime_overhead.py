"""The runtime's own cost per executed op: a planned step against eager on inputs so small
that kernels take almost no time, with a plan that recomputes nothing (budget 1.0).

    python bench/runtime_overhead.py [--steps 30] [--out bench/results/runtime_overhead.md]

The planned step runs the captured ATen graph op by op from Python; eager runs the same
model through its modules. (planned - eager) / executed ops is what the runtime adds per op
on top of dispatching the kernel. On a GPU this cost decides whether the step is
launch-bound: bench/results/compare_h200 measured ResNet-50 plans at 1/2 and 1/3 at the same
135 ms against 86 ms for eager.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from examples.gpt import GPT  # noqa: E402
from planner import solve  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from profiler import profile_model  # noqa: E402
from runtime import load_plan  # noqa: E402

log = logging.getLogger("bench.runtime_overhead")


def _models():
    import torchvision
    torch.manual_seed(0)
    yield "resnet18 (2x3x32x32)", torchvision.models.resnet18(num_classes=10), \
        torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    yield "GPT 2 layers, d=32 (1x16 tokens)", GPT(vocab=64, d=32, heads=2, layers=2, seq=16,
                                                   dropout=0.0), torch.randint(0, 64, (1, 16))


def _median_step(module, x, steps: int) -> float:
    times = []
    for i in range(steps + 3):
        module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        module(x).float().sum().backward()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      "runtime_overhead.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    lines = ["# Runtime overhead per executed op (`bench/runtime_overhead.py`)", "",
             f"torch {torch.__version__}, CPU, 1 thread, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of "
             f"{args.steps} steps after 3 warm-up steps; plan at budget 1.0 (no recompute).",
             "", "| model | executed ops | eager step | planned step | added per op |",
             "|---|---|---|---|---|"]
    for name, model, x in _models():
        model.train()
        profile = profile_model(model, (x,), estimate=True)
        plan = solve(profile, 1.0, options=SolveOptions(time_limit_s=5))
        planned = load_plan(copy.deepcopy(model), plan)
        schedule = planned.runner.schedule
        ops = sum(1 for s in schedule.forward + schedule.backward if s.kind == "run")
        eager = _median_step(copy.deepcopy(model), x, args.steps)
        ours = _median_step(planned, x, args.steps)
        per_op = (ours - eager) / ops
        log.info("%s: eager %.2f ms, planned %.2f ms, %d ops, %.1f us per op", name,
                 eager * 1e3, ours * 1e3, ops, per_op * 1e6)
        lines.append(f"| {name} | {ops} | {eager * 1e3:.2f} ms | {ours * 1e3:.2f} ms | "
                     f"{per_op * 1e6:.1f} us |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
