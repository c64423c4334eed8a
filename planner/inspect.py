"""Human-readable summaries of a plan (``monet inspect``)."""
from __future__ import annotations

from .budget import format_bytes
from .plan import Plan


def describe_plan(plan: Plan, top: int = 15) -> str:
    """Budget, predicted peak, time overhead, solver status and what is recomputed where."""
    overhead = plan.predicted_time_s / plan.baseline_time_s - 1 if plan.baseline_time_s else 0.0
    s = plan.solver
    lines = [
        f"model          {plan.model}  ({plan.device_name}, {plan.dtype}, inputs "
        f"{' '.join('x'.join(map(str, sh)) for sh in plan.input_shapes)})",
        f"graph hash     {plan.graph_hash[:16]}  (torch {plan.torch_version})",
        f"budget         {format_bytes(plan.budget_bytes)}  (given as {plan.budget_spec})",
        f"peak           {format_bytes(plan.predicted_peak_bytes)} predicted, "
        f"{format_bytes(plan.baseline_peak_bytes)} unoptimised "
        f"({plan.predicted_peak_bytes / plan.baseline_peak_bytes:.1%})",
        f"step time      {plan.predicted_time_s * 1e3:.3f} ms predicted, "
        f"{plan.baseline_time_s * 1e3:.3f} ms unoptimised ({overhead:+.2%})",
        f"solver         {s.name}: {s.status} in {s.solve_time_s:.2f} s"
        + (f", {plan.gap_text()}" if plan.gap_text() else "")
        + (f", {s.variables} variables, {s.constraints} constraints" if s.variables else ""),
        f"stages         {len(plan.keep)} backward stages",
    ]
    recomputed = [n for n in plan.nodes if n["recomputed_in_stages"]]
    kept = [n for n in plan.nodes if n["kept_in_stages"] and not n["recomputed_in_stages"]]
    lines.append(f"forward ops    {len(plan.nodes)}: {len(kept)} kept only, {len(recomputed)} "
                 f"recomputed ({sum(len(n['recomputed_in_stages']) for n in recomputed)} "
                 "recomputations)")
    if recomputed:
        lines.append("")
        lines.append(f"{'recomputed op':<40} {'module':<28} {'bytes':>11} {'stages'}")
        recomputed.sort(key=lambda n: -n["bytes"])
        for n in recomputed[:top]:
            stages = ",".join(map(str, n["recomputed_in_stages"]))
            lines.append(f"{n['name'][:40]:<40} {n['module'][:28]:<28} "
                         f"{format_bytes(n['bytes']):>11} {stages}")
        if len(recomputed) > top:
            lines.append(f"... and {len(recomputed) - top} more")
    lines += _variant_lines(plan)
    lines += _in_place_lines(plan)
    lines += _rewrite_lines(plan)
    return "\n".join(lines)


# Capture-time rewrites (``profiler.capture``), by the target of the node each one makes.
REWRITES = {
    "profiler.variant_ops.convolution_backward_input":
        "convolution backward split (input gradient after the weight gradient)",
    "profiler.variant_ops.add_into": "gradient sums written into a dead summand",
    "profiler.variant_ops.softmax_backward_into":
        "softmax backward written into its dead incoming gradient",
    "profiler.variant_ops.cross_entropy_backward_into":
        "cross-entropy backward written into its dead log-softmax",
    "profiler.variant_ops.pointwise_value_and_derivative":
        "element-wise chains fused with their derivative (forward-mode AD)",
}


def _rewrite_lines(plan: Plan) -> list[str]:
    """How many nodes of the plan's graph each capture-time rewrite made."""
    counts = {t: plan.graph_targets.count(t) for t in REWRITES}
    if not any(counts.values()):
        return []
    return ["", "graph rewrites (every plan of this graph):"] + \
        [f"  {counts[t]:>5}  {text}" for t, text in REWRITES.items() if counts[t]]


def _in_place_lines(plan: Plan) -> list[str]:
    """Which forward ops wrote over a dead input (``planner.in_place``), how often, and the
    bytes they did not allocate."""
    if plan.in_place == "none":
        return ["", "writes in place: none (the plan was solved without variants)"]
    rows = plan.in_place_summary
    runs = sum(e["forward_runs"] + e["recompute_runs"] for e in rows)
    lines = ["", f"writes in place ({plan.in_place}): {runs} runs wrote over a dead input, "
                 f"{format_bytes(sum(e['bytes'] for e in rows))} of allocations avoided "
                 "(summed over the runs)"]
    if rows:
        lines.append(f"  {'op':<40} {'ops':>5} {'forward':>8} {'recompute':>10} {'bytes':>11}")
        lines += [f"  {e['op'][:40]:<40} {e['ops']:>5} {e['forward_runs']:>8} "
                  f"{e['recompute_runs']:>10} {format_bytes(e['bytes']):>11}" for e in rows]
    return lines


def _variant_lines(plan: Plan) -> list[str]:
    """How many sites run each variant and what the choice saved: the bytes of forward
    tensors the sites no longer read, and the bytes their packs keep instead."""
    if not plan.variant_summary:
        return ["", "operator variants: none chosen (every op runs its original implementation)"]
    by_name: dict[str, list[int]] = {}
    for v in plan.variant_summary:
        entry = by_name.setdefault(v["variant"], [0, 0, 0])
        entry[0] += 1
        entry[1] += v["unneeded_bytes"]
        entry[2] += v["kept_bytes"]
    lines = ["", f"{'operator variant':<28} {'sites':>5} {'no longer read':>15} "
                 f"{'kept instead':>13}"]
    for name, (count, unneeded, kept) in sorted(by_name.items()):
        lines.append(f"{name:<28} {count:>5} {format_bytes(unneeded):>15} "
                     f"{format_bytes(kept):>13}")
    return lines
