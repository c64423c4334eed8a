"""Solve a profile under a memory budget into a verified Plan."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Sequence

from profiler.ir import Profile

from .backends import SolveOptions, tightest_bound
from .budget import format_bytes, parse_budget
from .candidates import (
    Evaluation,
    evaluate,
    heuristic_candidates,
    planner_graph,
    repaired_candidates,
    uses_only_variants,
)
from .floor import peak_floor
from .formulation import StageMILP, build_stage_milp
from .full_solve import FullSolveProcess, parallel_available
from .graph import PlannerGraph
from .heuristic import solve_relaxation
from .in_place import allowed_writes, in_place_summary
from .lowest import (
    InfeasibleBudgetError,
    floor_text,
    low_plans,
    lowest_plan,
    smallest_feasible_budget,
)
from .milp_search import milp_search, worker_outcome
from .plan import Plan, SolverInfo
from .schedule import Decisions, baseline_decisions, build_schedule
from .time_search import faster_within
from .time_shares import (
    estimated_build_s,
    lp_fits,
    milp_fits,
    phase_s,
    time_search_s,
    too_large,
)

log = logging.getLogger(__name__)
# The most of the time limit the near-miss repair may take; it stops at the first plan that
# fits. The GPT with its loss at 1/3 of its peak needs about 25 moves (8 s) from the
# per-block plans; with a tenth of 60 s it stopped at 5.80 GiB for a 5.57 GiB budget.
# Half the limit (2026-12-06, the ResNet-50 sweep of bench/sweep_bench.py, 0.66x against
# 1/3's run at 0.51x): at 0.3 the repair of the 0.35 plan reached the budget (22 moves in
# 16.9 s, where 12.8 s had stopped at 4.909 GiB for 4.488 GiB) but the plan was no faster
# (+31.74 % against +31.85 %), and 0.25 ended at +43.81 % against +31.85 %.
REPAIR_SHARE = 1 / 3
# The most of the time limit the time-directed search (planner.time_search) may take to make
# the fastest fitting heuristic plan faster before the MILP starts from it. Measured at 60 s
# (2026-12-02): ResNet-50 at 1/2 +10.31 % without it, +8.93 % with 0.15, +8.57 % with 0.3;
# the GPT with its loss at 1/2 +7.48 % with 0.15 and +7.28 % with 0.3 (+19.25 % before), at
# 1/3 +14.6 % with either (it stops when no single op more fits; with kicks, +14.56 %).
TIME_SEARCH_SHARE = 0.25
# The MILP and window improvement (planner.milp_search) get what the heuristics left, less
# FINISH_SIMULATIONS times the time one simulation of the unoptimised plan took, kept for
# making the plan: the GPT with its loss at 1/2 took 65 s for a 60 s limit when neither its
# MILP's build (3 s) nor that was accounted.
FINISH_SIMULATIONS = 3
# And this share of the limit on top: with the simulations alone, 9 of solve_bench's 15
# feasible solves ended 0.1-1.0 s past their 60 s (the search's last evaluations, a plan's
# own memory-claim MILP, reading the solver's solution back). 2 % left GoogLeNet at 1/3 at
# 60.1 s on 2026-12-02 (its last window step overran), hence 3 %.
FINISH_MARGIN_SHARE = 0.03
# Or, where more, this share of the MILP's estimated build: the returned plan's own
# memory-claim MILP (_plan_only_milp) takes 0.2-0.35 of it (the GPT's 1.05 s of 3.1 s), and
# is built after the search when the plan is a heuristic one, as at short limits. On a
# machine a third as fast (2026-12-05) a GPT plan's claim took 4.9 s of a 9.2 s build, and
# its 60 s solves took 62.6-64.6 s with 0.35.
FINISH_BUILD_SHARE = 0.55
# The least share of the time limit the lowest-peak search of an infeasible budget gets
# when the budgeted search took the rest.
LOW_MIN_SHARE = 0.1


def solve(profile: Profile, budget: str | int | float, backend: str = "highs",
          options: SolveOptions | None = None, hints: Sequence[Decisions] = ()) -> Plan:
    """The fastest plan for ``profile`` whose peak memory is at most ``budget``.

    Heuristic checkpoint plans come first; the MILP then searches the fastest plan within
    the budget, warm-started from the best heuristic plan that fits. If nothing fits, a
    lowest-memory search names the smallest feasible budget in InfeasibleBudgetError.
    ``hints`` are further plans to start from (e.g. a plan for a nearby budget).
    """
    plan = _solve(profile, budget, backend, options, hints, probe=False)
    assert isinstance(plan, Plan)
    return plan


def probe_budget(profile: Profile, budget: int, backend: str, options: SolveOptions
                 ) -> Evaluation:
    """The fastest plan ``solve`` finds within ``budget`` bytes, as an Evaluation, with no
    fallback search when nothing fits (InfeasibleBudgetError at once) and no Plan made:
    a probe of the bisection in ``planner.lowest`` reads the plan's decisions and peak
    only, and the Plan's memory claim of a low-memory GPT plan (26K recomputations) took
    6.5 s of a 10 s probe, past the time limit of the solve that probed."""
    found = _solve(profile, budget, backend, options, (), probe=True)
    assert isinstance(found, Evaluation)
    return found


def _solve(profile: Profile, budget: str | int | float, backend: str,
           options: SolveOptions | None, hints: Sequence[Decisions], probe: bool
           ) -> Plan | Evaluation:
    """``solve``, or with ``probe`` ``probe_budget``."""
    options = options or SolveOptions()
    t0 = time.perf_counter()
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    t_eval = time.perf_counter()
    base = evaluate(profile, graph, baseline_decisions(graph))
    # Time kept for what follows the search: simulating its last plan, the plan's schedule
    # (about three simulations' worth) and its memory claim.
    reserve = FINISH_SIMULATIONS * (time.perf_counter() - t_eval) + max(
        FINISH_MARGIN_SHARE * options.time_limit_s, FINISH_BUILD_SHARE * estimated_build_s(graph))
    budget_bytes = parse_budget(budget, base.result.peak_bytes)
    log.info("unoptimised peak %s, budget %s, %d stages", format_bytes(base.result.peak_bytes),
             format_bytes(budget_bytes), len(graph.stages))

    if budget_bytes >= base.result.peak_bytes:
        if probe:
            return base
        info = SolverInfo(name="none", status="optimal", time_limit_s=options.time_limit_s,
                          solve_time_s=0.0, objective=0.0, bound=0.0, gap=0.0)
        claimed = _plan_only_milp(graph, times, budget_bytes, base.decisions,
                                  options.variants).evaluate_peak(base.decisions)
        return _make_plan(profile, graph, base, base, budget_bytes, str(budget), info, claimed)

    floor = peak_floor(profile, graph, options.variants, options.variants)
    log.info("floor %s, set by %s", format_bytes(floor.peak_bytes), floor.node or "the inputs")
    if budget_bytes < floor.peak_bytes:
        # Nothing can fit: all the time goes to naming the smallest feasible budget.
        log.info("budget below the floor: %s", floor.describe())
        left = t0 + options.time_limit_s - reserve - time.perf_counter()
        smallest, _ = smallest_feasible_budget(
            profile, backend, replace(options, time_limit_s=max(left, 1.0)))
        raise InfeasibleBudgetError(budget_bytes, smallest, floor_text(profile, graph),
                                    proven=False, floor=floor)
    heuristic_only = too_large(graph, options.time_limit_s)
    deadline = t0 + options.time_limit_s - reserve
    full = None
    if not heuristic_only and parallel_available(options, backend):
        # The full MILP solves in a second process from now on: its bound and plans gain
        # the time the heuristics take here (planner.full_solve).
        full = FullSolveProcess(profile, budget_bytes, deadline - time.perf_counter(), options)
    try:
        fitting, candidates, lp_bound, milp, outcome, from_milp, objective_of_milp = \
            _budgeted_search(profile, graph, budget_bytes, backend, options, hints,
                             heuristic_only, deadline, full)
    finally:
        if full is not None:
            full.stop()
    if not fitting and probe:
        raise InfeasibleBudgetError(budget_bytes, None, "no plan found", proven=False)
    if not fitting:
        # No plan found: the lowest-memory search names the smallest feasible budget (or,
        # if the solver merely ran out of time, may still find a plan that fits), in the
        # time left (half the limit made the GPT's infeasible budgets take 75 s of 60).
        # Its last window step and simulations run past its limit by a second or so.
        left = 0.95 * (t0 + options.time_limit_s - reserve - time.perf_counter())
        low_options = replace(options, time_limit_s=max(left, LOW_MIN_SHARE *
                                                        options.time_limit_s))
        lowest, _ = lowest_plan(profile, graph, backend, low_options, candidates,
                                floor.peak_bytes, above=budget_bytes)
        if lowest.result.peak_bytes > budget_bytes:
            raise InfeasibleBudgetError(budget_bytes, lowest.result.peak_bytes,
                                        floor_text(profile, graph), proven=False, floor=floor)
        # It stopped at the first plan that fits: the time left makes it faster, in this
        # process, with recomputation chains of any depth. The budgeted search, with chains
        # of at most 12 ops, found nothing (U-Net's measured profile at 1/3: its MILP is
        # infeasible); from this plan, windows reach +41.2 % with any depth, +51.1 % with 12.
        fitting.append(lowest)
        # The LP bound so far is of the problem with chains of at most 12 ops, which
        # recomputes less than the plans from here may: no bound on them (U-Net at 1/3:
        # 0.01496 s, the LP with chains of any depth 0.01468 s). That of any depth is, and
        # the MILP below, time-limited, often stops before its own (U-Net: 0).
        any_depth, lp_bound = _any_depth_milp(graph, times, budget_bytes, options, deadline,
                                              lowest.decisions)
        milp, outcome, from_milp, objective_of_milp = _faster_from(
            profile, graph, lowest, budget_bytes, backend, options, fitting, heuristic_only,
            deadline, max_recompute_depth=None, milp=any_depth)
    best = min(fitting, key=lambda e: e.result.time_s)
    if probe:
        return best
    # A checkpoint plan may recompute deeper than the MILP's window: its memory claim then
    # comes from the same formulation with the plan's own recomputations as candidates.
    claim = milp if milp is not None and milp.represents(best.decisions) and \
        milp.in_place == best.decisions.in_place else \
        _plan_only_milp(graph, times, budget_bytes, best.decisions, options.variants)
    solver_peak = claim.evaluate_peak(best.decisions)
    # The solver's own objective (recompute seconds) when its plan is the one returned;
    # the tests check it equals the simulator's extra time.
    from_solver = best is from_milp
    objective = objective_of_milp if from_solver and objective_of_milp is not None else \
        best.result.time_s - base.result.time_s
    # The better of the solver's bound and the LP relaxation's (same problem).
    bound = tightest_bound(outcome.bound if outcome else None, lp_bound)
    if bound is not None and bound > objective + 1e-9 * max(1.0, abs(objective)):
        # No plan is cheaper than a lower bound: the plan lies outside the problem the bound
        # is for (it recomputes deeper than its candidates) or the solver misreported.
        log.warning("bound %.6g above the plan's objective %.6g: not reported", bound, objective)
        bound = lp_bound if lp_bound is not None and lp_bound <= objective else None
    gap = None
    if bound is not None:
        gap = 0.0 if objective <= 1e-12 else max(0.0, (objective - bound) / objective)
    status = outcome.status if from_solver and outcome else "heuristic"
    if outcome and outcome.status == "optimal" and outcome.objective is not None and \
            objective <= outcome.objective + 1e-9 * max(1.0, abs(objective)):
        # The solver proved optimal the plan it was started from (a heuristic plan, or the
        # window search's): it is that optimum.
        status = "optimal"
    info = SolverInfo(name=backend, status=status, time_limit_s=options.time_limit_s,
                      solve_time_s=time.perf_counter() - t0, objective=objective,
                      bound=bound, gap=gap,
                      variables=len(milp.problem.variables()) if milp else 0,
                      constraints=len(milp.problem.constraints) if milp else 0)
    return _make_plan(profile, graph, best, base, budget_bytes, str(budget), info, solver_peak)


def _budgeted_search(profile: Profile, graph: PlannerGraph, budget_bytes: int, backend: str,
                     options: SolveOptions, hints: Sequence[Decisions], heuristic_only: bool,
                     deadline: float, full: FullSolveProcess | None):
    """Heuristic plans, their repair and the time-directed search, then the MILP search
    (``planner.milp_search``) until ``deadline``. Returns the plans that fit, the heuristic
    candidates, the LP bound, and the MILP search's problem, outcome, plan and objective."""
    candidates, lp_bound = heuristic_candidates(
        profile, graph, budget_bytes, options.time_limit_s / 4, options.variants,
        lp=not heuristic_only and lp_fits(graph, deadline), deadline=deadline, full=full)
    hints = [*hints, *low_plans(profile.graph_hash)]
    candidates += [evaluate(profile, graph, d) for d in hints
                   if uses_only_variants(graph, options.variants, d)]
    log.info("%d heuristic plans", len(candidates))
    fitting = [e for e in candidates if e.result.peak_bytes <= budget_bytes]
    repaired, missed = repaired_candidates(profile, graph, candidates, budget_bytes,
                                           options.variants,
                                           phase_s(REPAIR_SHARE, options, deadline))
    fitting += repaired
    candidates += missed  # if nothing fits, the lowest-plan search goes on from them
    log.info("%d plans fit", len(fitting))
    start = min(fitting, key=lambda e: e.result.time_s) if fitting else None
    if start is not None and full is not None:
        full.offer(start.decisions)
    milp, outcome, from_milp, objective_of_milp = _faster_from(
        profile, graph, start, budget_bytes, backend, options, fitting, heuristic_only,
        deadline, full)
    return fitting, candidates, lp_bound, milp, outcome, from_milp, objective_of_milp


def _faster_from(profile: Profile, graph: PlannerGraph, start: Evaluation | None,
                 budget_bytes: int, backend: str, options: SolveOptions,
                 fitting: list[Evaluation], heuristic_only: bool, deadline: float,
                 full: FullSolveProcess | None = None, max_recompute_depth: int | None = 12,
                 milp: StageMILP | None = None):
    """Make ``start`` (the fastest plan that fits, if any) faster until ``deadline``: the
    time-directed search, then the MILP search (``planner.milp_search``, recomputation
    chains of at most ``max_recompute_depth`` ops beside the start's, on ``milp`` if it is
    already built) from its plan, beside ``full`` if given. Plans that fit are appended to
    ``fitting``; returns what ``milp_search`` does (Nones where the MILP does not run)."""
    if start is not None:
        found = faster_within(profile, graph, start.decisions, budget_bytes,
                              time_search_s(graph, options, deadline, heuristic_only,
                                            TIME_SEARCH_SHARE),
                              graph.variant_sites(options.variants))
        if found is not None and found.result.time_s < start.result.time_s:
            start = found
            fitting.append(start)
    if heuristic_only:
        return None, None, None, None
    if not milp_fits(graph, options, deadline, "MILP search"):
        return (None, None, None, None) if full is None else \
            worker_outcome(profile, graph, budget_bytes, fitting, deadline, full)
    return milp_search(profile, graph, budget_bytes, backend, options, start, fitting,
                       deadline, full, max_recompute_depth, milp)


# The most of the time left the LP bound of a near-miss plan may take (U-Net's at 1/3: a
# 0.9 s build and about a second of LP on a machine a third of the reference speed).
ANY_DEPTH_LP_SHARE = 0.15


def _any_depth_milp(graph: PlannerGraph, times: list[float], budget_bytes: int,
                    options: SolveOptions, deadline: float, include: Decisions
                    ) -> tuple[StageMILP | None, float | None]:
    """The stage MILP with recomputation chains of any depth (``include``'s among them) and
    its LP relaxation's optimum (a bound on every plan), where its build and a share of the
    time left fit; (None, None) otherwise. Built once: the MILP search goes on with it (it
    was built a second time there: 1.0 s of U-Net's at 1/3, 8.9 s of ResNet-50's, on a
    machine a third of the reference speed)."""
    if too_large(graph, options.time_limit_s) or not lp_fits(
            graph, deadline, ANY_DEPTH_LP_SHARE, "LP bound with chains of any depth"):
        return None, None
    milp = build_stage_milp(graph, times, budget_bytes, variants=options.variants,
                            include=include, max_recompute_depth=None)
    bound = solve_relaxation(milp, ANY_DEPTH_LP_SHARE * (deadline - time.perf_counter()))
    log.info("LP bound with chains of any depth: %s", bound)
    return milp, bound


def plan_for(profile: Profile, decisions: Decisions, budget: str | int | float | None = None
             ) -> Plan:
    """A Plan that carries out the given ``decisions`` (a hand-made or modified schedule):
    simulated, its memory claimed by the formulation, and checked against ``budget`` (by
    default the plan's own peak)."""
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    base = evaluate(profile, graph, baseline_decisions(graph))
    ev = evaluate(profile, graph, decisions)
    budget_bytes = ev.result.peak_bytes if budget is None else \
        parse_budget(budget, base.result.peak_bytes)
    if ev.result.peak_bytes > budget_bytes:
        raise InfeasibleBudgetError(budget_bytes, None, f"these decisions peak at "
                                    f"{format_bytes(ev.result.peak_bytes)}")
    claim = _plan_only_milp(graph, times, budget_bytes, decisions, "all")
    extra = ev.result.time_s - base.result.time_s
    info = SolverInfo(name="given", status="given", time_limit_s=0.0, solve_time_s=0.0,
                      objective=extra)
    return _make_plan(profile, graph, ev, base, budget_bytes, str(budget), info,
                      claim.evaluate_peak(decisions))


def _plan_only_milp(graph: PlannerGraph, times: list[float], budget: int,
                    decisions: Decisions, variants: str) -> StageMILP:
    """The formulation whose only recomputation candidates are those of ``decisions``: it
    states their memory claim as the full formulation would, and stays small on graphs
    (EfficientNet-B7's 814 stages) where unlimited-depth candidates take tens of GiB."""
    return build_stage_milp(graph, times, budget, max_recompute_depth=0, variants=variants,
                            include=decisions, in_place=decisions.in_place, rows_only=True)


def _make_plan(profile: Profile, graph: PlannerGraph, ev: Evaluation, base: Evaluation,
               budget_bytes: int, budget_spec: str, info: SolverInfo, solver_peak: int) -> Plan:
    d = ev.decisions
    if not allowed_writes(graph, d.in_place):
        # None to make (a profile from before strides were recorded): the runtime, which
        # captures the graph again with strides, must not find some.
        d = replace(d, in_place="none")
    schedule = build_schedule(graph, d)
    summary = []
    for o in graph.ops():
        n = profile.nodes[o]
        kept = [k for k in range(len(graph.stages))
                if any(s in d.keep[k] for s in n.new_storages)]
        recomputed = [k for k in range(len(graph.stages)) if o in d.recompute[k]]
        summary.append({"index": o, "name": n.name, "target": n.target, "module": n.module,
                        "bytes": graph.new_bytes(o), "time_s": n.time_s,
                        "kept_in_stages": kept, "recomputed_in_stages": recomputed})
    return Plan(
        graph_hash=profile.graph_hash, model=profile.model, device=profile.device,
        device_name=profile.device_name, dtype=profile.dtype,
        torch_version=profile.torch_version, input_shapes=profile.input_shapes,
        input_dtypes=profile.input_dtypes, graph_targets=[n.target for n in profile.nodes],
        workspace_bytes={str(n.index): n.workspace_bytes for n in profile.nodes
                         if n.workspace_bytes},
        budget_bytes=budget_bytes, budget_spec=budget_spec,
        predicted_peak_bytes=ev.result.peak_bytes, predicted_time_s=ev.result.time_s,
        solver_peak_bytes=solver_peak, baseline_peak_bytes=base.result.peak_bytes,
        baseline_time_s=base.result.time_s, solver=info,
        keep=[sorted(k) for k in d.keep], recompute=[sorted(r) for r in d.recompute],
        variants={str(e): name for e, name in sorted(d.variants.items())},
        in_place=d.in_place, in_place_summary=in_place_summary(
            graph, d.in_place, [*schedule.forward, *schedule.backward]),
        nodes=summary, variant_summary=variant_summary(profile, graph, d),
        autocast=profile.autocast)


def variant_summary(profile: Profile, graph: PlannerGraph, d: Decisions) -> list[dict]:
    """Per chosen variant: its site, the bytes of forward tensors its site no longer reads,
    and the bytes its pack keeps instead."""
    out = []
    for e, name in sorted(d.variants.items()):
        v = graph.variant(e, name)
        original = graph.stage_need_storages(graph.site_stage[e], {})
        chosen = graph.stage_need_storages(graph.site_stage[e], {e: name})
        packed = set(profile.nodes[v.pack].new_storages) if v.pack is not None else set()
        out.append({"site": e, "name": profile.nodes[e].name, "variant": name,
                    "module": profile.nodes[e].module,
                    "unneeded_bytes": sum(profile.storage_bytes[s] for s in original - chosen),
                    "kept_bytes": sum(profile.storage_bytes[s] for s in packed)})
    return out
