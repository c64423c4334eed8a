"""Train a torchvision ResNet on random data with a plan: one call, the loop unchanged.

Without ``--plan`` it profiles the model (FLOP-estimated times) and solves a plan for
``--budget`` first, so it runs standalone on the CPU in well under a minute:

    python examples/train_resnet.py --batch 8 --image-size 64

With a plan of your own (``make demo`` does this):

    monet profile torchvision:resnet18 --batch 16 --image-size 96 --estimate -o profile.json
    monet solve profile.json --budget 0.7 -o plan.json
    python examples/train_resnet.py --plan plan.json --batch 16 --image-size 96
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runtime  # noqa: E402
from planner.budget import format_bytes  # noqa: E402

log = logging.getLogger("train_resnet")


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the profile was made with seed 0: same model, same graph
    return torchvision.models.get_model(name, weights=None).train()


def make_plan(name: str, batch: int, image_size: int, budget: str, time_limit: float):
    """Profile the model and solve a plan for ``budget`` (a ``planner.Plan``)."""
    from planner import solve
    from planner.backends import SolveOptions
    from profiler import profile_model
    images = torch.randn(batch, 3, image_size, image_size)
    profile = profile_model(make_model(name), (images,), name=f"torchvision:{name}",
                            estimate=True)
    plan = solve(profile, budget, options=SolveOptions(time_limit_s=time_limit))
    log.info("solved a plan for budget %s (%s) in %.1f s", budget,
             format_bytes(plan.budget_bytes), plan.solver.solve_time_s)
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", help="a plan for this model, batch and image size "
                        "(default: make one)")
    parser.add_argument("--budget", default="0.85", help="budget of the plan made without --plan")
    parser.add_argument("--time-limit", type=float, default=5.0, help="solver seconds")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    plan = args.plan or make_plan(args.model, args.batch, args.image_size, args.budget,
                                  args.time_limit)
    model = runtime.load_plan(make_model(args.model), plan)  # the one line
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(args.steps):
        images = torch.randn(args.batch, 3, args.image_size, args.image_size)
        labels = torch.randint(0, 1000, (args.batch,))
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.info("step %d: loss %.4f, held %s (plan predicted %s, budget %s)", step, loss.item(),
                 format_bytes(model.last_peak_bytes), format_bytes(model.plan.predicted_peak_bytes),
                 format_bytes(model.plan.budget_bytes))


if __name__ == "__main__":
    main()
