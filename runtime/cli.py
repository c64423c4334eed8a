"""``monet``: profile a model, solve a plan under a memory budget, inspect a plan.

Every error is one line saying what to do (exit status 1); ``-v`` adds the traceback and
the solver's progress.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

log = logging.getLogger("monet")


def _profile(args: argparse.Namespace) -> None:
    from profiler import load_model, profile_model
    model, inputs = load_model(args.model, inputs=args.input or (), batch=args.batch,
                               image_size=args.image_size, device=args.device, seed=args.seed)
    profile = profile_model(model, inputs, name=args.model, estimate=args.estimate,
                            repeats=args.repeats, autocast=args.autocast)
    profile.save(args.output)
    from planner.budget import format_bytes
    from planner.schedule import baseline_decisions
    from planner.solve import evaluate, planner_graph
    graph = planner_graph(profile)
    base = evaluate(profile, graph, baseline_decisions(graph))
    print(f"{args.output}: {len(profile.nodes)} nodes, {len(graph.stages)} backward stages, "
          f"unoptimised peak {format_bytes(base.result.peak_bytes)}, step "
          f"{base.result.time_s * 1e3:.2f} ms ({profile.timing}), hash {profile.graph_hash[:12]}")


def _solve(args: argparse.Namespace) -> None:
    from planner.backends import SolveOptions
    from planner.budget import format_bytes
    from planner.solve import solve
    from profiler import Profile
    profile = Profile.load(args.profile)
    options = SolveOptions(time_limit_s=args.time_limit, gap=args.gap, verbose=args.verbose > 1,
                           variants="none" if args.no_variants else args.variants)
    plan = solve(profile, args.budget, backend=args.solver, options=options)
    plan.save(args.output)
    overhead = plan.predicted_time_s / plan.baseline_time_s - 1 if plan.baseline_time_s else 0
    gap = "" if plan.solver.gap is None else f", gap {plan.solver.gap:.1%}"
    print(f"{args.output}: budget {format_bytes(plan.budget_bytes)}, predicted peak "
          f"{format_bytes(plan.predicted_peak_bytes)} (unoptimised "
          f"{format_bytes(plan.baseline_peak_bytes)}), time overhead {overhead:+.1%}, "
          f"solver {plan.solver.name} {plan.solver.status}{gap}, "
          f"{len(plan.variants)} operator variants")


def _inspect(args: argparse.Namespace) -> None:
    from planner.inspect import describe_plan
    from planner.plan import Plan
    print(describe_plan(Plan.load(args.plan), top=args.top))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) and the solver's own output (-vv); show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="capture and time a model's training step")
    p.add_argument("model", help="torchvision:<name> or package.module:function")
    p.add_argument("--input", action="append", metavar="SPEC",
                   help="example input SHAPE[:DTYPE[:HIGH]], e.g. 8x3x64x64 or "
                        "8x128:int64:50257 (repeat for several inputs)")
    p.add_argument("--batch", type=int, help="batch size of an image input (with --image-size)")
    p.add_argument("--image-size", type=int, help="height and width of an image input")
    p.add_argument("--device", default="cpu", help="device to profile on (cpu, cuda)")
    p.add_argument("--estimate", action="store_true",
                   help="estimate times from FLOPs and bytes instead of measuring them")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per node")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--autocast", choices=["bf16", "fp16"],
                   help="capture the step under torch.autocast with this dtype (train the "
                        "planned model under the same autocast)")
    p.add_argument("-o", "--output", default="profile.json")
    p.set_defaults(run=_profile)

    s = sub.add_parser("solve", help="plan keep/recompute decisions under a memory budget")
    s.add_argument("profile")
    s.add_argument("--budget", required=True,
                   help="bytes, a size (5GiB, 800MB) or a fraction in (0, 1] of the "
                        "unoptimised peak")
    s.add_argument("--solver", default="highs", choices=["highs", "cbc", "cpsat"],
                   help="MILP backend: HiGHS (default), CBC or OR-Tools CP-SAT")
    s.add_argument("--time-limit", type=float, default=60.0, help="seconds (default 60)")
    s.add_argument("--gap", type=float, default=1e-4, help="relative optimality gap")
    s.add_argument("--variants", choices=["all", "exact", "none"], default="all",
                   help="operator variants the plan may use: all (default), exact (only "
                        "those with bit-identical gradients: masks, pooling), none")
    s.add_argument("--no-variants", action="store_true",
                   help="same as --variants none: checkpointing only")
    s.add_argument("-o", "--output", default="plan.json")
    s.set_defaults(run=_solve)

    i = sub.add_parser("inspect", help="summarise a plan")
    i.add_argument("plan")
    i.add_argument("--top", type=int, default=15, help="how many ops to list")
    i.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("monet: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error becomes one actionable line
        if args.verbose:
            raise
        print(f"monet {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
