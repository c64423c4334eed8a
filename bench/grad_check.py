"""Gradients of planned steps against eager, parameter by parameter, on one device.

For each model, fraction of the unoptimised peak and variant mode (``all``: every
operator variant and write in place; ``exact``: only those with eager's kernels; ``none``),
solve a plan, run one step of it and of eager from the same weights, inputs and RNG seed,
and log: the loss difference, the largest gradient difference relative to the largest
eager entry of the same parameter (``bench/measure.py::grad_difference``) and the three
parameters that differ most. Two eager steps give the noise floor of the device's kernels.
``--deterministic`` turns cuDNN's benchmark search and TF32 off and asks for deterministic
cuDNN kernels: a plan without inexact variants must then match eager bit for bit.

    python bench/grad_check.py --models googlenet resnet50 --batch 32 --deterministic
    python bench/grad_check.py --small --models googlenet      # CPU: a check of the script
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baselines import MODELS, build  # noqa: E402
from common import parse_fraction, write_atomic  # noqa: E402
from measure import grad_difference  # noqa: E402

from planner import InfeasibleBudgetError, solve  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from planner.schedule import baseline_decisions  # noqa: E402
from planner.solve import evaluate, planner_graph  # noqa: E402
from profiler import profile_model  # noqa: E402
from runtime import load_plan  # noqa: E402

log = logging.getLogger("bench.grad_check")


def _run(module: torch.nn.Module, inputs) -> tuple[float, list[torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = module(*inputs)
    loss.backward()
    params = module.module.parameters() if hasattr(module, "module") else module.parameters()
    return loss.item(), [p.grad.detach().clone() if p.grad is not None
                         else torch.zeros_like(p) for p in params]


def _worst(names, grads, reference, k: int = 3) -> list[tuple[str, float]]:
    rel = []
    for n, g, r in zip(names, grads, reference):
        scale = float(r.abs().max()) if r.numel() else 0.0
        rel.append((n, float((g - r).abs().max()) / (scale or 1.0)))
    return sorted(rel, key=lambda t: -t[1])[:k]


def check_model(key: str, args, device: torch.device) -> list[dict]:
    """Rows for one model: eager's own noise, then every fraction and variant mode."""
    step, inputs = build(MODELS[key], args.small, batch=args.batch)
    step, inputs = step.to(device), tuple(x.to(device) for x in inputs)
    names = [n for n, _ in step.named_parameters()]
    profile = profile_model(step, inputs, name=key, estimate=device.type == "cpu", repeats=3)
    graph = planner_graph(profile)
    peak = evaluate(profile, graph, baseline_decisions(graph)).result.peak_bytes
    loss0, ref = _run(copy.deepcopy(step), inputs)
    loss1, again = _run(copy.deepcopy(step), inputs)
    rows = [dict(model=key, method="eager again", loss_diff=loss1 - loss0,
                 grad_diff=grad_difference(again, ref), bit_identical=all(
                     torch.equal(a, b) for a, b in zip(again, ref)),
                 worst=_worst(names, again, ref))]
    for frac in args.fractions:
        budget = int(peak * parse_fraction(frac))
        for mode in args.variants:
            row = dict(model=key, method=f"ours {frac} {mode}")
            try:
                plan = solve(profile, budget, options=SolveOptions(
                    time_limit_s=args.time_limit, variants=mode))
            except InfeasibleBudgetError as e:
                row.update(status=f"infeasible (smallest {e.smallest_feasible})")
                rows.append(row)
                continue
            planned = load_plan(copy.deepcopy(step), plan)
            loss, grads = _run(planned, inputs)
            row.update(loss_diff=loss - loss0, grad_diff=grad_difference(grads, ref),
                       bit_identical=all(torch.equal(a, b) for a, b in zip(grads, ref)),
                       worst=_worst(names, grads, ref), recomputed=sum(map(bool, plan.recompute)),
                       variants=sorted(set(plan.variants.values())), in_place=plan.in_place,
                       writes=len(plan.in_place_summary))
            rows.append(row)
            del planned
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["googlenet"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, help="batch size of an image model "
                        "(default: the config's)")
    parser.add_argument("--fractions", nargs="+", default=["1/2", "1/3"])
    parser.add_argument("--variants", nargs="+", default=["all", "none"],
                        choices=["all", "exact", "none"])
    parser.add_argument("--time-limit", type=float, default=15)
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--small", action="store_true", help="the small CPU models")
    parser.add_argument("--device")
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("profiler", "planner", "runtime"):
        logging.getLogger(name).setLevel(logging.WARNING)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.backends.cudnn.benchmark = True
    rows = []
    for key in args.models:
        try:
            for row in check_model(key, args, device):
                log.info("%s", json.dumps(row, default=str))
                rows.append(row)
        except Exception:
            log.exception("%s failed", key)
        if args.out:
            write_atomic(args.out, json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
