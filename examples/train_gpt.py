"""Train a small GPT on random tokens with a plan: one call, the loop unchanged.

Without ``--plan`` it profiles the model (FLOP-estimated times) and solves a plan for
``--budget`` first, so it runs standalone on the CPU in well under a minute:

    python examples/train_gpt.py                       # profile, solve at 0.75, train 3 steps
    monet profile examples.gpt:gpt_small --input 4x64:int64:512 --estimate -o gpt.json
    monet solve gpt.json --budget 0.7 -o gpt_plan.json
    python examples/train_gpt.py --plan gpt_plan.json  # the same model and batch as profiled
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runtime  # noqa: E402
from examples.gpt import GPT  # noqa: E402
from planner.budget import format_bytes  # noqa: E402

log = logging.getLogger("train_gpt")


def make_model(vocab: int, seq: int) -> torch.nn.Module:
    """The model of ``examples.gpt:gpt_small`` (seeded as ``monet profile`` seeds it)."""
    torch.manual_seed(0)
    return GPT(vocab=vocab, d=64, heads=4, layers=2, seq=seq, dropout=0.1).train()


def make_plan(batch: int, seq: int, vocab: int, budget: str, time_limit: float):
    """Profile the model and solve a plan for ``budget`` (a ``planner.Plan``)."""
    from planner import solve
    from profiler import profile_model
    model = make_model(vocab, seq)
    tokens = torch.randint(0, vocab, (batch, seq))
    profile = profile_model(model, (tokens,), name="examples.gpt:gpt_small", estimate=True)
    from planner.backends import SolveOptions
    plan = solve(profile, budget, options=SolveOptions(time_limit_s=time_limit))
    log.info("solved a plan for budget %s (%s) in %.1f s", budget,
             format_bytes(plan.budget_bytes), plan.solver.solve_time_s)
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", help="a plan for examples.gpt:gpt_small with this batch and "
                        "sequence length (default: make one)")
    parser.add_argument("--budget", default="0.75", help="budget of the plan made without --plan")
    parser.add_argument("--time-limit", type=float, default=5.0, help="solver seconds")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    plan = args.plan or make_plan(args.batch, args.seq, args.vocab, args.budget, args.time_limit)
    model = runtime.load_plan(make_model(args.vocab, args.seq), plan)  # the one line
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        tokens = torch.randint(0, args.vocab, (args.batch, args.seq))
        logits = model(tokens)
        # next-token prediction: the logit at position t predicts token t + 1
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.vocab),
                                                 tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.info("step %d: loss %.4f, held %s (plan predicted %s, budget %s)", step,
                 loss.item(), format_bytes(model.last_peak_bytes),
                 format_bytes(model.plan.predicted_peak_bytes),
                 format_bytes(model.plan.budget_bytes))


if __name__ == "__main__":
    main()
