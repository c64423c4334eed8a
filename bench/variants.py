"""What operator variants buy: checkpointing only against checkpointing with variants.

For ResNet-50 (batch 184, 224x224) and the GPT of DESIGN.md (8 x 1024 tokens, with its
cross-entropy loss in the graph as DESIGN.md's step has it): one
profile each (FLOP-estimated unless run on a GPU), then for budgets of 1/2, 1/3 and 1/4 of
the unoptimised peak the predicted step time with checkpointing only and with variants,
and the smallest feasible budget with and without variants. The variant solve is also
given the checkpoint-only plan as a starting point where the forward passes are the same,
so it can only be better or equal there.
Checkpointing only is solved on the graph eager autograd runs (``rewrite_backward=False``);
with variants, on the planner's graph, whose convolution backward is split into weight and
input gradients (``profiler.split_backward``) and whose gradient sums are written into a
dead summand and whose softmax backward writes into its dead incoming gradient
(``profiler.inplace_backward``), and whose forward ops write over inputs the plan leaves
dead (``planner.in_place``; counted as runs in place). Forward
nodes and stages are the same in both, so a plan of one is a starting point in the other;
overheads are against the fused graph's unoptimised step.

    python bench/variants.py                 # writes bench/results/variants.md
    python bench/variants.py --models gpt --time-limit 30
    python bench/variants.py --models hf_gpt2 -o bench/results/variants_hf_gpt2.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_atomic  # noqa: E402
from planner import InfeasibleBudgetError, smallest_feasible_budget, solve  # noqa: E402
from planner.backends import SolveOptions  # noqa: E402
from planner.budget import format_bytes  # noqa: E402
from planner.candidates import planner_graph  # noqa: E402
from planner.schedule import Decisions  # noqa: E402
from profiler import Profile, load_model, profile_model  # noqa: E402

MODELS = {
    "resnet50": ("torchvision:resnet50", {"batch": 184, "image_size": 224},
                 "resnet50_184x3x224x224"),
    # DESIGN.md's step includes the cross-entropy: the GPT with its loss in the graph.
    "gpt": ("examples.gpt:GPTWithLoss",
            {"inputs": ["8x1024:int64:50257", "8x1024:int64:50257"]}, "gpt_loss_8x1024_8x1024"),
    # GPT-2 small from Hugging Face with its loss: its tanh GELU is a chain of element-wise
    # ops (profiler.pointwise_chains). Not in the default run; results in
    # bench/results/variants_hf_gpt2.md.
    "hf_gpt2": ("examples.hf_gpt2:GPT2WithLoss",
                {"inputs": ["8x1024:int64:50257", "8x1024:int64:50257"]},
                "hf_gpt2_loss_8x1024_8x1024"),
}
DEFAULT_MODELS = ("resnet50", "gpt")
FRACTIONS = (1 / 2, 1 / 3, 1 / 4)
log = logging.getLogger("bench")


def get_profile(name: str, profile_dir: str, rewrite_backward: bool = True) -> Profile:
    """The model's profile from ``profile_dir``, made (FLOP-estimated on the CPU) if absent;
    with ``rewrite_backward=False`` always made, as the graph eager autograd runs."""
    spec, kwargs, stem = MODELS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = os.path.join(profile_dir, f"{stem}.{'measured' if device == 'cuda' else 'estimated'}"
                        ".json")
    if rewrite_backward and os.path.exists(path):
        return Profile.load(path)
    model, inputs = load_model(spec, device=device, **kwargs)
    profile = profile_model(model, inputs, name=spec, estimate=device == "cpu",
                            rewrite_backward=rewrite_backward)
    if rewrite_backward:
        profile.save(path)
    return profile


def _forward_targets(profile: Profile) -> list[str]:
    return [n.target for n in profile.nodes if n.role == "forward"]


def translate_stages(decisions: Decisions, source: Profile, target: Profile
                     ) -> Decisions | None:
    """``decisions`` for ``source``'s graph, carried over to ``target``'s graph with the
    same forward pass but rewritten backward stages (the cross-entropy backward fused into
    one stage): stages are matched by the name of their last executed node, and a target
    stage takes the union of what the source stages merged into it keep and recompute.
    None when no stage structure matches."""
    src, dst = planner_graph(source), planner_graph(target)
    if len(src.stages) == len(dst.stages):
        return decisions
    last_src = [source.nodes[st[-1]].name for st in src.stages]
    last_dst = [target.nodes[st[-1]].name for st in dst.stages]
    keep, recompute, j = [], [], 0
    for name in last_dst:
        if name not in last_src[j:]:
            return None
        end = last_src.index(name, j) + 1
        merged = range(j, end)
        rec = set().union(*(decisions.recompute[i] for i in merged))
        made = {s for o in rec for s in src.planned_storages(o)}
        keep.append(set().union(*(decisions.keep[i] for i in merged)) - made)
        recompute.append(rec)
        j = end
    return replace(decisions, keep=keep, recompute=recompute)


def solve_row(profile: Profile, budget: int, options: SolveOptions, hints=()):
    t0 = time.perf_counter()
    try:
        plan = solve(profile, budget, options=options, hints=hints)
    except InfeasibleBudgetError:
        return None, time.perf_counter() - t0
    return plan, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        choices=list(MODELS))
    parser.add_argument("--time-limit", type=float, default=60)
    parser.add_argument("--profiles", default=os.path.join(ROOT, "configs", "profiles"))
    parser.add_argument("-o", "--output", default=os.path.join(ROOT, "bench/results/variants.md"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plain = SolveOptions(time_limit_s=args.time_limit, variants="none")
    with_variants = replace(plain, variants="all")
    rows, records = [], []
    for name in args.models:
        profile = get_profile(name, args.profiles)
        fused = get_profile(name, args.profiles, rewrite_backward=False)
        base = solve(fused, 1.0, options=plain)
        peak, t_base = base.baseline_peak_bytes, base.baseline_time_s
        # The planner's graph keeps less before any plan: its backward rewrites and fused
        # element-wise chains.
        rewritten_peak = solve(profile, 1.0, options=plain).baseline_peak_bytes
        # A checkpoint plan is a start for the variant solve where both graphs have the same
        # forward pass; fused element-wise chains (GPT-2's GELU) change it.
        same_forward = _forward_targets(fused) == _forward_targets(profile)
        log.info("%s: unoptimised peak %s, %d nodes", name, format_bytes(peak),
                 len(profile.nodes))
        for frac in FRACTIONS:
            budget = int(peak * frac)
            ck, ck_s = solve_row(fused, budget, plain)
            hint = translate_stages(ck.decisions(), fused, profile) \
                if ck is not None and same_forward else None
            hints = [hint] if hint is not None else []
            va, va_s = solve_row(profile, budget, with_variants, hints)
            rec = {"model": name, "fraction": frac, "budget": budget}
            for tag, plan, secs in (("checkpoint", ck, ck_s), ("variants", va, va_s)):
                rec[tag] = None if plan is None else {
                    "overhead": plan.predicted_time_s / t_base - 1,
                    "peak": plan.predicted_peak_bytes, "gap": plan.solver.gap,
                    "status": plan.solver.status, "seconds": secs,
                    "variants": dict(Counter(plan.variants.values())),
                    "in_place_runs": sum(e["forward_runs"] + e["recompute_runs"]
                                         for e in plan.in_place_summary)}
            records.append(rec)
            log.info("%s", json.dumps(rec))
        # The smallest budget with a plan: the planner's search, or any plan above.
        found = {tag: [r[tag]["peak"] for r in records if r.get("model") == name
                       and r.get(tag)] for tag in ("checkpoint", "variants")}
        low_ck, _ = smallest_feasible_budget(fused, options=plain)
        low_ck = min([low_ck] + found["checkpoint"])
        low_va, _ = smallest_feasible_budget(profile, options=with_variants)
        low_va = min([low_va] + found["variants"])
        records.append({"model": name, "smallest_checkpoint": low_ck, "smallest_variants": low_va,
                        "peak": peak, "rewritten_peak": rewritten_peak})
        rows.append((name, profile, peak, t_base, low_ck, low_va, rewritten_peak))
    write_report(args.output, rows, records, args.time_limit)


def _cell(r, frac_peak):
    if r is None:
        return "infeasible"
    return f"{r['overhead']:+.2%} (gap {r['gap']:.0%})" if r["gap"] is not None else \
        f"{r['overhead']:+.2%}"


def write_report(path: str, rows, records, time_limit: float) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        "# Operator variants against checkpointing alone",
        "",
        f"Generated by `python bench/variants.py` on {datetime.date.today()}, torch "
        f"{torch.__version__}, device {device}, time limit {time_limit:.0f} s per solve, HiGHS. "
        "Times are predicted by the planner from the profile "
        f"({'measured' if device == 'cuda' else 'FLOP-estimated'}), as overhead over the "
        "unoptimised step; gaps are the solver's.",
        "",
        "| model | unoptimised peak | budget | checkpointing only | with variants | "
        "variants chosen |",
        "|---|---|---|---|---|---|",
    ]
    for name, profile, peak, _t, _lc, _lv, _rp in rows:
        for rec in records:
            if rec.get("model") != name or "fraction" not in rec:
                continue
            va = rec["variants"]
            chosen = ", ".join(f"{k} {v}" for k, v in sorted(va["variants"].items())) \
                if va else ""
            if va and va.get("in_place_runs"):
                chosen += f"{', ' if chosen else ''}{va['in_place_runs']} runs in place"
            lines.append(f"| {name} | {format_bytes(peak)} | 1/{round(1 / rec['fraction'])} "
                         f"({format_bytes(rec['budget'])}) | {_cell(rec['checkpoint'], peak)} | "
                         f"{_cell(va, peak)} | {chosen} |")
    lines += ["", "| model | smallest feasible, checkpointing only | with variants | "
              "unoptimised peak, eager's graph | planner's graph |", "|---|---|---|---|---|"]
    for name, _p, peak, _t, low_ck, low_va, rewritten in rows:
        lines.append(f"| {name} | {format_bytes(low_ck)} ({low_ck / peak:.1%}) | "
                     f"{format_bytes(low_va)} ({low_va / peak:.1%}) | {format_bytes(peak)} | "
                     f"{format_bytes(rewritten)} |")
    lines += ["", "```json", json.dumps(records, indent=1), "```", ""]
    write_atomic(path, "\n".join(lines))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
