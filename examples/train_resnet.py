"""Train a torchvision ResNet on random data with a plan: one call, the loop unchanged.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.manual_seed(0)  # the profile was made with seed 0: same model, same graph
    model = torchvision.models.get_model(args.model, weights=None).train()
    model = runtime.load_plan(model, args.plan)  # the one line
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
