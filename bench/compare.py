"""Our plans against eager PyTorch, per-block checkpointing and torch.compile, on one device.

Three phases, so that the GPU machine (which lacks PuLP and HiGHS) never has to solve:

    python bench/compare.py profile --out PROFILES          # GPU: measured profiles + eager peaks
    python bench/compare.py solve --profiles PROFILES --out PLANS   # here: plans at 1/2, 1/3, 1/4
    python bench/compare.py run --plans PLANS --out RESULTS  # GPU: every method, table + plot
    python bench/compare.py all --out RESULTS                # the three in one process
    python bench/compare.py report --inputs A.json B.json --out RESULTS  # merge partial runs

``--small --device cpu`` runs tiny versions of the models on the CPU (a check of the script).
Models: resnet50 (184), mobilenet_v2 (272), vgg16 (176), googlenet (320), unet (11 x
416x608), gpt (8 x 1024) and gpt_bf16 (the GPT under bf16 autocast); see bench/baselines.py
for the step, the loss and the checkpointed blocks, bench/measure.py for what is measured,
and docs/gpu.md for running it on the GPU machine.

Budgets of our plans are fractions of the eager peak measured in the profile phase. The
solver gets that budget less the bytes the libraries keep allocated (cuBLAS workspaces,
measured after an eager warm-up; they are not in the planner's graph) and less ``--margin``
of it; bench/memory_model.md explains the choice.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baselines import (  # noqa: E402
    COMPILE_BUDGETS,
    MODELS,
    BenchModel,
    autocast_context,
    build,
    checkpointed,
    compile_context,
)
from common import parse_fraction  # noqa: E402
from measure import free_memory, grad_difference, measure_step, resident_bytes  # noqa: E402
from report import Row, RunInfo, load_json, save_json, write_atomic, write_results  # noqa: E402

from profiler import Profile, capture, device_name, profile_captured  # noqa: E402
from profiler.allocator import allocator_bytes  # noqa: E402

# "unoptimised" is the plan that keeps everything (the graph as captured, run by our runtime):
# the step time of our runtime before any recomputation.
UNOPTIMISED = "unoptimised"
FRACTIONS = (UNOPTIMISED, "1/2", "1/3", "1/4")
log = logging.getLogger("bench.compare")


def _device(args) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _label(label: str) -> str:
    return label.replace("/", "-")


def _constant_bytes(step: torch.nn.Module, inputs) -> int:
    """Allocator bytes of the distinct storages of parameters, buffers and inputs."""
    storages = {t.untyped_storage().data_ptr(): (t.untyped_storage().nbytes(), t.device)
                for t in [*step.parameters(), *step.buffers(), *inputs]}
    return sum(allocator_bytes(n, d) for n, d in storages.values())


def profile_phase(args) -> None:
    """Measure each model's eager step and profile its joint graph on the device."""
    device = _device(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the algorithms (and workspaces) of the run
    meta_path = os.path.join(args.out, "eager.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    for key in args.models:
        try:
            _profile_one(args, key, device, meta, meta_path)
        except Exception:  # one failing model must not end the phase
            log.exception("%s: profile failed", key)
        free_memory(device)  # the model's tensors went with _profile_one's frame


def _profile_one(args, key: str, device: torch.device, meta: dict, meta_path: str) -> None:
    """Measure one model's eager step, profile it, and record both."""
    bench = MODELS[key]
    step, inputs = build(bench, args.small)
    step, inputs = step.to(device), tuple(x.to(device) for x in inputs)
    free_memory(device)
    eager = measure_step(step, inputs, device, autocast_context(bench, device.type),
                         warmup=2, steps=3)
    free_memory(device)
    library = max(0, resident_bytes(device) - _constant_bytes(step, inputs)) \
        if device.type == "cuda" else 0
    captured = capture(step, inputs, autocast=bench.autocast)
    profile = profile_captured(captured, step, inputs, name=key, estimate=False,
                               repeats=args.repeats)
    profile.save(os.path.join(args.out, f"{key}.measured.json"))
    del captured
    if device.type == "cuda":
        library = max(library, _runtime_library_bytes(bench, step, inputs, profile, device))
    meta[key] = {"eager_peak": eager.peak_allocated, "eager_step_s": eager.step_s,
                 "library_bytes": library, "device": device.type,
                 "device_name": device_name(device), "small": args.small,
                 "torch_version": torch.__version__, "graph_hash": profile.graph_hash}
    write_atomic(meta_path, json.dumps(meta, indent=1))
    log.info("%s: eager peak %.3f GiB, library %.1f MiB, %d nodes", key,
             eager.peak_allocated / 2**30, library / 2**20, len(profile.nodes))


def _runtime_library_bytes(bench: BenchModel, step: torch.nn.Module, inputs,
                           profile: Profile, device: torch.device) -> int:
    """Library bytes resident after steps through our runtime with the plan that keeps
    everything. Our backward runs other kernels than eager's on other threads (cuBLASLt
    for the captured ``addmm``), whose libraries keep workspaces of their own: on the H200
    the GPT's grew from 65 to 172 MiB once our plans had run, which put two plans over
    budget. Measuring after both runs leaves that memory out of every solver budget."""
    try:
        from planner.schedule import baseline_decisions
        from planner.solve import plan_for, planner_graph
    except ImportError:  # no solver package here: eager's figure stands
        log.warning("%s: planner unavailable, library bytes measured after eager only",
                    bench.key)
        return 0
    from runtime import load_plan
    plan = plan_for(profile, baseline_decisions(planner_graph(profile)))
    with autocast_context(bench, device.type):
        module = load_plan(copy.deepcopy(step), plan)
    measure_step(module, inputs, device, autocast_context(bench, device.type), warmup=1,
                 steps=1)
    del module
    free_memory(device)
    return max(0, resident_bytes(device) - _constant_bytes(step, inputs))


def _solve_one(profile_path: str, key: str, label: str, info: dict, out: str,
               time_limit: float, margin: float) -> tuple[str, dict]:
    """Solve one model at one budget fraction; write its plan and return its index entry."""
    from planner import InfeasibleBudgetError, solve  # needs PuLP and HiGHS
    from planner.backends import SolveOptions
    profile = Profile.load(profile_path)
    if label == UNOPTIMISED:  # no recomputation, no variant: what the runtime itself costs
        frac, budget, target = 1.0, 1.0, None
    else:
        frac = parse_fraction(label)
        target = int(frac * info["eager_peak"])
        budget = target - info["library_bytes"] - int(margin * target)
    entry = {"label": label, "fraction": frac, "target_bytes": target,
             "solver_budget_bytes": budget, "library_bytes": info["library_bytes"],
             "margin": margin, "file": None}
    try:
        plan = solve(profile, budget, options=SolveOptions(time_limit_s=time_limit))
    except InfeasibleBudgetError as e:
        entry.update(status="infeasible", smallest=e.smallest_feasible)
        log.info("%s %s: infeasible, smallest %s", key, label, e.smallest_feasible)
        return key, entry
    name = f"{key}_{_label(label)}.plan.json"
    plan.save(os.path.join(out, name))
    if target is None:
        entry.update(target_bytes=plan.predicted_peak_bytes + info["library_bytes"],
                     solver_budget_bytes=plan.budget_bytes)
    entry.update(status=plan.solver.status, file=name, gap=plan.solver.gap,
                 predicted_peak=plan.predicted_peak_bytes,
                 predicted_time_s=plan.predicted_time_s,
                 baseline_time_s=plan.baseline_time_s)
    log.info("%s %s: predicted peak %.3f GiB, +%.1f%%", key, label,
             plan.predicted_peak_bytes / 2**30,
             100 * (plan.predicted_time_s / plan.baseline_time_s - 1))
    return key, entry


def solve_phase(args) -> None:
    """Solve every profile of ``--profiles`` at 1/2, 1/3 and 1/4 of its eager peak, in
    ``--jobs`` processes at once (each solve is single-threaded HiGHS plus heuristics)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    meta = json.load(open(os.path.join(args.profiles, "eager.json")))
    os.makedirs(args.out, exist_ok=True)
    index_path = os.path.join(args.out, "plans.json")
    keys = [k for k in args.models if k in meta]
    index: dict[str, list[dict]] = {k: [] for k in keys}
    jobs = [(os.path.join(args.profiles, f"{key}.measured.json"), key, label, meta[key],
             args.out, args.time_limit, args.margin)
            for key in keys for label in args.fractions]
    order = {(key, label): i for i, (_, key, label, *_rest) in enumerate(jobs)}

    def record(key: str, entry: dict) -> None:
        index[key].append(entry)
        index[key].sort(key=lambda e: order[(key, e["label"])])
        write_atomic(index_path, json.dumps(index, indent=1))

    if args.jobs <= 1:
        for job in jobs:
            record(*_solve_one(*job))
    else:
        import multiprocessing
        spawn = multiprocessing.get_context("spawn")  # the parent may hold a CUDA context
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            for future in as_completed([pool.submit(_solve_one, *job) for job in jobs]):
                record(*future.result())
    write_atomic(os.path.join(args.out, "eager.json"), json.dumps(meta, indent=1))


def _methods(args, device: torch.device) -> list[str]:
    chosen = set(args.methods)
    if device.type == "cpu" and not args.compile:
        chosen.discard("compile")  # minutes per model on the CPU; --compile runs them
    return [m for m in ("eager", "checkpoint", "compile", "ours") if m in chosen]


def _variants(bench: BenchModel, method: str, pristine, plans_dir: str | None,
              entries: list[dict]):
    """(name, module factory, context factory, plan entry) for each run of a method."""
    if method == "eager":
        yield "eager", lambda: copy.deepcopy(pristine), None, None
    elif method == "checkpoint":
        yield "checkpoint", lambda: checkpointed(bench, pristine), None, None
    elif method == "compile":
        for budget in (None, *COMPILE_BUDGETS):
            name = "compile default" if budget is None else f"compile amb={budget}"
            yield (name, lambda: torch.compile(copy.deepcopy(pristine)),
                   (lambda b=budget: compile_context(b)), None)
    elif method == "ours":
        for entry in entries:
            yield f"ours {entry['label']}", None, None, entry


def _run_one(bench, name, make, context, entry, pristine, inputs, device, args, plans_dir):
    from runtime import load_plan
    row = Row(model=bench.key, method=name)
    autocast = autocast_context(bench, device.type)
    if entry is not None:
        row.budget_bytes = entry["target_bytes"]
        if entry.get("file") is None:
            row.status = "infeasible"
            row.note = f"smallest feasible {entry.get('smallest')}"
            return row, None
        from planner.plan import Plan
        plan = Plan.load(os.path.join(plans_dir, entry["file"]))
        module = copy.deepcopy(pristine).to(device)
        with autocast:
            module = load_plan(module, plan)
        row.predicted_peak = plan.predicted_peak_bytes + entry["library_bytes"]
        row.note = (f"predicted overhead {plan.predicted_time_s / plan.baseline_time_s - 1:+.1%}"
                    f", solver {plan.solver.status}")
    else:
        module = make().to(device)
    with context() if context else contextlib.nullcontext():
        m = measure_step(module, inputs, device, autocast, warmup=args.warmup, steps=args.steps,
                         keep_grads=True)
    if entry is not None and device.type == "cuda":
        free_memory(device)
        library = resident_bytes(device) - _constant_bytes(module, inputs)
        row.note += (f", library bytes {library / 2**20:.1f} MiB now, "
                     f"{entry['library_bytes'] / 2**20:.1f} MiB when profiled")
    row.peak_allocated, row.peak_reserved = m.peak_allocated, m.peak_reserved
    row.step_s, row.loss = m.step_s, m.loss
    if row.predicted_peak:
        row.ratio = m.peak_allocated / row.predicted_peak
    if row.budget_bytes is not None:
        row.over_budget = m.peak_allocated > row.budget_bytes
    del module
    return row, m.grads


def run_phase(args, info: RunInfo) -> list[Row]:
    """Run every method on every model and write the results after each run."""
    device = _device(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    index = {}
    if args.plans and os.path.exists(os.path.join(args.plans, "plans.json")):
        index = json.load(open(os.path.join(args.plans, "plans.json")))
    rows: list[Row] = []
    for key in args.models:
        bench = MODELS[key]
        pristine, inputs = build(bench, args.small)
        inputs = tuple(x.to(device) for x in inputs)
        reference = eager_step = None
        for method in _methods(args, device):
            for name, make, context, entry in _variants(bench, method, pristine, args.plans,
                                                        index.get(key, [])):
                free_memory(device)
                try:
                    row, grads = _run_one(bench, name, make, context, entry, pristine, inputs,
                                          device, args, args.plans)
                except torch.cuda.OutOfMemoryError as e:
                    row, grads = Row(key, name, status="oom", note=str(e).split("\n")[0]), None
                except Exception as e:  # one failing method must not end the run
                    log.exception("%s %s failed", key, name)
                    row = Row(key, name, status="error", note=f"{type(e).__name__}: {e}"[:200])
                    grads = None
                if name == "eager" and row.status == "ok":
                    reference, eager_step = grads, row.step_s
                    row.grad_diff = 0.0
                elif grads is not None and reference is not None:
                    row.grad_diff = grad_difference(grads, reference)
                if eager_step and row.step_s:
                    row.overhead = row.step_s / eager_step - 1
                rows.append(row)
                log.info("%s", row)
                free_memory(device)
                write_results(args.out, info, rows)  # a timeout keeps every finished row
    return rows


def report_phase(args) -> None:
    """Merge the JSON of several partial runs into one table and plot."""
    info, rows, seen = None, [], set()
    for path in args.inputs:
        i, r = load_json(path)
        info = info or i
        if i.device_name != info.device_name:
            raise SystemExit(f"{path} was measured on {i.device_name}, not {info.device_name}")
        # A method measured in two runs (eager, run beside each group as its baseline) keeps
        # its first row; each row's overhead is against the eager step of its own run.
        rows += [row for row in r if (row.model, row.method) not in seen]
        seen.update((row.model, row.method) for row in r)
    write_results(args.out, info, rows)
    save_json(os.path.join(args.out, "compare.json"), info, rows,
              {"merged_from": [os.path.basename(p) for p in args.inputs]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["profile", "solve", "run", "all", "report"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--profiles", help="solve: the profile phase's directory")
    parser.add_argument("--plans", help="run: the solve phase's directory")
    parser.add_argument("--inputs", nargs="+", default=[], help="report: compare.json files")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--small", action="store_true", help="tiny models (a CPU check)")
    parser.add_argument("--methods", nargs="+", default=["eager", "checkpoint", "compile",
                                                         "ours"])
    parser.add_argument("--compile", action="store_true", help="run compile baselines on CPU")
    parser.add_argument("--repeats", type=int, default=5, help="profile: timed repeats")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--time-limit", type=float, default=60, help="solve: s per budget")
    parser.add_argument("--fractions", nargs="+", default=list(FRACTIONS),
                        help="solve: budgets as fractions of the eager peak (1/2 or 0.5), or "
                        f"{UNOPTIMISED!r} (no recomputation)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="solve: budgets solved at once, in separate processes")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="solve: fraction of each budget left free for the allocator")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.phase != "report"
                        else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("planner", "profiler", "runtime", "torch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.phase == "report":
        report_phase(args)
        return
    if args.phase == "solve":
        if not args.profiles:
            parser.error("solve needs --profiles DIR")
        solve_phase(args)
        return
    device = _device(args)
    if args.phase in ("profile", "all"):
        work = args.out if args.phase == "profile" else os.path.join(args.out, "work")
        profile_args = argparse.Namespace(**{**vars(args), "out": work})
        profile_phase(profile_args)
        if args.phase == "all":
            solve_phase(argparse.Namespace(**{**vars(args), "profiles": work, "out": work}))
            args.plans = work
    if args.phase in ("run", "all"):
        info = RunInfo.now(device.type, device_name(device), torch.__version__, args.small,
                           " ".join(sys.argv))
        rows = run_phase(args, info)
        print(open(os.path.join(args.out, "compare.md")).read() if rows else "no rows")


if __name__ == "__main__":
    main()
