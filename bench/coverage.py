"""Coverage: does every model a user may bring capture, plan and train exactly?

    python bench/coverage.py [--models NAME|FAMILY ...] [--out bench/results/coverage.md]

For every torchvision classification model, torchvision's segmentation models and detection
backbones, and small Hugging Face models (``bench/coverage_models.py``): capture, profile
(estimated times), plan at 1/2 of the unoptimised peak with exact variants only (or at the
smallest feasible budget + 5 % where parameters make 1/2 infeasible; where that plan
recomputes nothing, a plan checkpointing every second op instead), run one planned and
one eager step from the same RNG state and compare loss and gradients
(``bench/coverage_check.py``). Each model runs in its own process with a time limit, so one
crash or hang is recorded and the run goes on. Results are also kept as JSON lines next to
the table (``--resume`` skips models already there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.coverage_check import CoverageResult, check_case  # noqa: E402
from bench.coverage_models import all_cases, case_by_name  # noqa: E402

# The smallest model of each torchvision architecture.
REPRESENTATIVES = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
    "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
    "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "squeezenet1_0", "swin_t", "swin_v2_t", "vgg11", "vgg11_bn",
    "vit_b_32", "wide_resnet50_2"}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}" if n else ""


def render(results: list[CoverageResult], note: str) -> str:
    """The markdown table of ``results``, with a summary line."""
    exact = sum(r.status == "exact" for r in results)
    tol = sum(r.status.startswith("within") for r in results)
    failed = [r for r in results if not r.ok]
    not_run = sum(r.status.startswith("not run") for r in results)
    forced = sum("every 2nd op" in r.budget_note for r in results)
    lines = ["# Coverage", "", note, "",
             f"**{len(results)} models: {exact} exact, {tol} within tolerance, "
             f"{len(failed)} failed, {not_run} not run.** Every plan run recomputes: "
             f"{forced} of them checkpoint every second op because the solved plan "
             "recomputed nothing.", "",
             "| model | family | input | params (M) | nodes | unoptimised peak (MiB) | "
             "budget (MiB) | budget is | predicted peak (MiB) | executor peak (MiB) | "
             "status | seconds |", "|" + "---|" * 12]
    for r in results:
        status = r.status.replace("|", "\\|")
        lines.append(f"| {r.name} | {r.family} | {r.input} | {r.params / 1e6:.1f} | "
                     f"{r.nodes or ''} | {_mib(r.baseline_peak)} | {_mib(r.budget)} | "
                     f"{r.budget_note} | {_mib(r.predicted_peak)} | {_mib(r.executor_peak)} | "
                     f"{status} | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def _run_one(name: str, args: argparse.Namespace) -> CoverageResult:
    """Check one model in a child process (a crash or a hang is a FAILED row)."""
    case = case_by_name(name)
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name,
           "--time-limit", str(args.time_limit), "--fraction", str(args.fraction)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        stages = [ln[7:] for ln in err.splitlines() if ln.startswith("stage: ")]
        where = f" (still in {stages[-1]})" if stages else ""
        return CoverageResult(name, case.family, case.describe(), seconds=args.timeout,
                              status=f"FAILED: not done within {args.timeout} s{where}")
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.returncode != 0 or not last:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return CoverageResult(name, case.family, case.describe(),
                              seconds=time.perf_counter() - t0,
                              status=f"FAILED: process exited {done.returncode}: {tail[:300]}")
    return CoverageResult(**json.loads(last[0]))


def _write_table(args: argparse.Namespace, cases: list,
                 done: dict[str, CoverageResult]) -> list[CoverageResult]:
    """Write the table of everything done so far (cases not reached: "not run")."""
    order = {c.name: i for i, c in enumerate(all_cases())}
    rows = dict(done)
    described = {c.name: c.describe() for c in all_cases()}
    for r in rows.values():
        r.input = described.get(r.name, r.input)
    for c in cases:
        rows.setdefault(c.name, CoverageResult(c.name, c.family, c.describe(),
                                               status="not run"))
    results = sorted(rows.values(), key=lambda r: order.get(r.name, len(order)))
    note = (f"`python bench/coverage.py` on {os.cpu_count()} CPU cores (shared), torch "
            f"{__import__('torch').__version__}: batch 2 at the inputs shown, estimated "
            f"times, plans with exact variants only at {args.fraction:g} of the unoptimised "
            f"peak (solver limit {args.time_limit:g} s per solve; where that plan recomputes "
            "nothing, every second op checkpointed and the rest recomputed), one planned and "
            "one eager "
            "step from the same RNG state, each model in its own process with a "
            f"{args.timeout} s limit. *exact*: loss and every gradient `torch.equal` to "
            "eager; *within tolerance r*: largest gradient difference relative to the "
            "gradient's largest entry.")
    with open(args.out, "w") as f:
        f.write(render(results, note))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", help="model names or families (torchvision, "
                   "segmentation, detection-backbone, huggingface); default: all")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "coverage.md"))
    p.add_argument("--fraction", type=float, default=0.5, help="budget, of the unoptimised peak")
    p.add_argument("--time-limit", type=float, default=10.0, help="solver seconds per solve")
    p.add_argument("--timeout", type=int, default=900, help="seconds per model")
    p.add_argument("--max-params", type=float, default=200.0,
                   help="skip models with more parameters (millions; 0: no limit): two "
                        "copies, their gradients and the step must fit in memory")
    p.add_argument("--resume", action="store_true", help="keep results already in the .jsonl")
    p.add_argument("--render", action="store_true",
                   help="only rewrite the table from the .jsonl (models not in it: not run)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:  # child process: print one JSON result
        def stage(name: str) -> None:
            print(f"stage: {name}", file=sys.stderr, flush=True)
        result = check_case(case_by_name(args.one), args.fraction, args.time_limit,
                            on_stage=stage)
        print(json.dumps(asdict(result)))
        return 0

    cases = all_cases()
    if args.models:
        cases = [c for c in cases if c.name in args.models or c.family in args.models]
    jsonl = os.path.splitext(args.out)[0] + ".jsonl"
    done: dict[str, CoverageResult] = {}
    if (args.resume or args.render) and os.path.exists(jsonl):
        with open(jsonl) as f:
            for line in f:
                r = CoverageResult(**json.loads(line))
                done[r.name] = r
    if args.render:
        results = _write_table(args, cases, done)
        return 0 if all(r.ok for r in results) else 1
    os.makedirs(os.path.dirname(os.path.abspath(jsonl)), exist_ok=True)
    names = {f.name for f in fields(CoverageResult)}
    # Quick families first, then one small model of every torchvision architecture, so that
    # a run cut short has covered every kind of model.
    first = {"huggingface": 0, "detection-backbone": 1, "segmentation": 2}
    with open(jsonl, "a" if args.resume else "w") as log_file:
        for case in sorted(cases, key=lambda c: (first.get(c.family, 3),
                                                 c.name not in REPRESENTATIVES)):
            if case.name in done:
                continue
            model, _ = case.make() if args.max_params else (None, None)
            n_params = sum(q.numel() for q in model.parameters()) if model is not None else 0
            del model
            if args.max_params and n_params > args.max_params * 1e6:
                r = CoverageResult(case.name, case.family, case.describe(), params=n_params,
                                   status=f"not run: {n_params / 1e6:.0f}M parameters > "
                                          f"--max-params {args.max_params:g}M")
            else:
                r = _run_one(case.name, args)
            done[r.name] = r
            log_file.write(json.dumps({k: v for k, v in asdict(r).items() if k in names}) + "\n")
            log_file.flush()
            print(f"{r.name}: {r.status} ({r.seconds:.0f} s)", flush=True)
            results = _write_table(args, cases, done)
    results = _write_table(args, cases, done)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
