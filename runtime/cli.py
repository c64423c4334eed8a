"""``monet``: profile a model, solve a plan under a memory budget, sweep budgets, inspect a plan.

Every error is one line saying what to do (exit status 1); ``-v`` adds the traceback and
the solver's progress.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

log = logging.getLogger("monet")


class UserError(Exception):
    """An error whose message already says what to do."""


def _need_file(path: str, what: str, hint: str) -> str:
    if not os.path.exists(path):
        raise UserError(f"no such {what} file: {path} ({hint})")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a {what} file ({hint})")
    return path


def _load_profile(path: str):
    from profiler import Profile
    return Profile.load(_need_file(path, "profile", "make one with monet profile MODEL -o FILE"))


def _options(args: argparse.Namespace):
    from planner.backends import SolveOptions
    if args.time_limit <= 0:
        raise UserError(f"--time-limit must be positive seconds, not {args.time_limit}")
    return SolveOptions(time_limit_s=args.time_limit, gap=args.gap, verbose=args.verbose > 1,
                        variants="none" if args.no_variants else args.variants,
                        parallel=not args.one_process)


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
    from planner.budget import format_bytes
    from planner.solve import solve
    profile = _load_profile(args.profile)
    options = _options(args)
    plan = solve(profile, args.budget, backend=args.solver, options=options)
    plan.save(args.output)
    overhead = plan.predicted_time_s / plan.baseline_time_s - 1 if plan.baseline_time_s else 0
    gap = f", {plan.gap_text()}" if plan.gap_text() else ""
    print(f"{args.output}: budget {format_bytes(plan.budget_bytes)}, predicted peak "
          f"{format_bytes(plan.predicted_peak_bytes)} (unoptimised "
          f"{format_bytes(plan.baseline_peak_bytes)}), time overhead {overhead:+.1%}, "
          f"solver {plan.solver.name} {plan.solver.status}{gap}, "
          f"{len(plan.variants)} operator variants")


def _sweep(args: argparse.Namespace) -> None:
    from planner.progress_bar import SweepProgress
    from planner.sweep import result_summary, run_sweep
    if args.config:
        if args.profile:
            raise UserError("give either PROFILE or --config, not both")
        from profiler.config import ModelConfig
        config = ModelConfig.load(_need_file(args.config, "config", "see configs/*.yaml"))
        budgets = args.budgets or config.budgets
        if not budgets:
            raise UserError(f"{args.config} has no budgets: add 'budgets: [0.5, 0.25]' or "
                            "give --budgets")
        profile = config.load_profile()
        profile_path, name = config.profile, config.name
    elif args.profile:
        if not args.budgets:
            raise UserError("give the budgets to sweep: --budgets 0.2:1.0:0.1 (or a list "
                            "such as 0.5,0.3,2GiB)")
        profile, budgets = _load_profile(args.profile), args.budgets
        profile_path = args.profile
        name = os.path.splitext(os.path.basename(args.profile))[0]
    else:
        raise UserError("give a PROFILE (from monet profile) or --config configs/<model>.yaml")
    out = args.output or f"sweep_{name}"
    progress = SweepProgress()
    try:
        result = run_sweep(profile, budgets, out, backend=args.solver, options=_options(args),
                           progress=progress, profile_path=os.path.abspath(profile_path),
                           time_split=args.time_split)
    finally:
        progress.close()
    print(result_summary(result))
    print(f"{result.csv_path}: {len(result.rows)} budgets")
    if not args.no_plot:
        from planner.plots import pareto_plot
        plot = args.plot or os.path.join(out, "pareto.png")
        pareto_plot(result, plot)
        print(f"{plot}: memory against time")


def _inspect(args: argparse.Namespace) -> None:
    from planner.inspect import describe_plan
    from planner.plan import Plan
    plan = Plan.load(_need_file(args.plan, "plan", "make one with monet solve PROFILE "
                                "--budget B -o FILE"))
    if args.trace and not args.plot:
        raise UserError("--trace goes with --plot FILE: the measured curve is drawn beside "
                        "the predicted timeline")
    if not args.plot:
        print(describe_plan(plan, top=args.top))
        return
    from planner import plots
    profile = _load_profile(args.profile or _profile_of(args.plan))
    trace = plots.load_trace(args.trace) if args.trace else None
    sim = plots.plan_timeline(profile, plan)  # every input is checked before printing
    print(describe_plan(plan, top=args.top))
    plots.timeline_plot(sim, plan, args.plot, trace=trace)
    schedule = args.schedule_plot or os.path.splitext(args.plot)[0] + "_schedule.png"
    plots.schedule_plot(plots.schedule_grid(profile, plan), plan, schedule)
    print(f"\n{args.plot}: memory over the training step" +
          (" (measured beside predicted)" if trace else ""))
    print(f"{schedule}: kept, recomputed and variant ops per stage")


def _profile_of(plan_path: str) -> str:
    """The profile a sweep directory's manifest names, for a plan inside it."""
    import json
    manifest = os.path.join(os.path.dirname(os.path.abspath(plan_path)), "sweep.json")
    try:
        with open(manifest) as f:
            return str(json.load(f)["profile"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError("the plots need the plan's profile: give --profile PROFILE") from None


def _solver_options(p: argparse.ArgumentParser, time_limit: float) -> None:
    p.add_argument("--solver", default="highs", choices=["highs", "cbc", "cpsat"],
                   help="MILP backend: HiGHS (default), CBC or OR-Tools CP-SAT")
    p.add_argument("--time-limit", type=float, default=time_limit,
                   help=f"seconds per budget (default {time_limit:g})")
    p.add_argument("--gap", type=float, default=1e-4, help="relative optimality gap")
    p.add_argument("--variants", choices=["all", "exact", "none"], default="all",
                   help="operator variants the plan may use: all (default), exact (only "
                        "those with bit-identical gradients: masks, pooling), none")
    p.add_argument("--no-variants", action="store_true",
                   help="same as --variants none: checkpointing only")
    p.add_argument("--one-process", action="store_true",
                   help="HiGHS: solve the full MILP before the window search instead of "
                        "beside it in a second process (for a single core)")


VERBOSE_HELP = "log progress (-v) and the solver's own output (-vv); show tracebacks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monet", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    # -v is also taken after the command (`monet solve -v`); SUPPRESS keeps the count given
    # before it when none is given after.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                         help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", parents=[verbose],
                       help="capture and time a model's training step")
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

    s = sub.add_parser("solve", parents=[verbose],
                       help="plan keep/recompute decisions under a memory budget")
    s.add_argument("profile")
    s.add_argument("--budget", required=True,
                   help="bytes, a size (5GiB, 800MB) or a fraction in (0, 1] of the "
                        "unoptimised peak")
    _solver_options(s, time_limit=60.0)
    s.add_argument("-o", "--output", default="plan.json")
    s.set_defaults(run=_solve)

    w = sub.add_parser("sweep", parents=[verbose],
                       help="one plan per budget, a CSV and a memory/time plot",
                       description="Solve a profile at many budgets, largest first, each "
                       "warm-started from the previous plan. The output directory keeps "
                       "every finished plan: run the same command again to resume.")
    w.add_argument("profile", nargs="?", help="a profile from monet profile (or use --config)")
    w.add_argument("--config", help="configs/<model>.yaml: its profile (made if missing) "
                   "and its budgets")
    w.add_argument("--budgets", nargs="+", metavar="B",
                   help="START:STOP:STEP (fractions or bytes, STOP included, e.g. "
                        "0.2:1.0:0.1) or budgets as for solve (0.5 2GiB, or 0.5,0.3)")
    _solver_options(w, time_limit=30.0)
    w.add_argument("--time-split", choices=["tight", "even"], default="tight",
                   help="how the budgets share the time: tight (default) gives a budget "
                        "time in proportion to the unoptimised peak over the budget, so "
                        "tighter budgets get more and --time-limit is the mean; even gives "
                        "each --time-limit")
    w.add_argument("-o", "--output", metavar="DIR",
                   help="output directory (default sweep_<profile name>): plan_<budget>.json, "
                        "sweep.csv, pareto.png")
    w.add_argument("--plot", metavar="PNG", help="where to write the plot (default "
                   "DIR/pareto.png)")
    w.add_argument("--no-plot", action="store_true", help="write no plot")
    w.set_defaults(run=_sweep)

    i = sub.add_parser("inspect", parents=[verbose],
                       help="summarise a plan; draw its memory timeline")
    i.add_argument("plan")
    i.add_argument("--top", type=int, default=15, help="how many ops to list")
    i.add_argument("--plot", metavar="PNG", help="draw memory over the training step (by "
                   "category, with the budget) to PNG, and the schedule to PNG_schedule.png")
    i.add_argument("--schedule-plot", metavar="PNG", help="where to draw the schedule grid")
    i.add_argument("--profile", help="the plan's profile (needed by --plot unless the plan "
                   "is in a monet sweep directory)")
    i.add_argument("--trace", metavar="SNAPSHOT.pickle",
                   help="a memory snapshot of your own GPU run "
                        "(torch.cuda.memory._record_memory_history(), one step, then "
                        "torch.cuda.memory._dump_snapshot(FILE)), drawn beside the "
                        "prediction. It is a pickle: only plain data is read from it, "
                        "but give only snapshots you made yourself")
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
        hint = "; run the same command again to resume" if args.command == "sweep" else ""
        print(f"monet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:  # every error becomes one actionable line
        if args.verbose:
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"monet {args.command}: error: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
