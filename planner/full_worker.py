"""The full stage MILP in its own process, beside the window search (``planner.full_solve``).

Loads the profile the planner saved, builds the stage MILP for ``--budget`` (or the
lowest-peak problem with ``--lowest``) on its own core, solves it with HiGHS, and reports
on stderr, one line each:

* ``PROGRESS <seconds> <incumbent> <bound>`` (at most every ``--every`` seconds; ``nan``
  where there is none yet);
* ``CUTS <added> <candidates> <seconds>``: the recomputation cuts its LP relaxation
  violated (``planner.recompute_cuts.separate``), added before the branch and bound;
* ``LP <objective> <path>``: the plain LP relaxation's optimum, saved for rounding
  (``planner.heuristic.LPRounding``, JSON), so that the planner need not solve the same LP
  on its own core;
* ``SOLUTION <objective> <path>``: an improving plan, saved as decisions (JSON); the path
  is the rest of the line. Plans of its window search (below) carry their base, the plan
  their changes started from (``planner.merge``);
* ``DONE <status> <objective> <bound> <seconds>`` at the end.

Plans the planner finds meanwhile, written as decisions to ``<dir>/offer.json`` (replaced
atomically), are given to HiGHS as user solutions when they are points of this problem, so
its tree search prunes with the best plan either side has. Plans travel as decisions, not
column vectors, so the planner never builds this problem itself.

With ``--windows-after`` (budgeted problems), a tree search that has not closed its gap by
then stops and this process searches windows (``planner.lns``) beside the planner's,
merging the changes of the planner's plans, which come with their base, into its own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace

# The longest the recomputation cuts may take, as a share of the time limit.
CUT_SHARE = 0.25
# The plain LP relaxation, solved first, may take longer: the planner rounds it and reports
# it as a bound. On a machine a third of the reference speed GoogLeNet's (47K columns, 4 s
# alone) ended 14-15 s after this process started: at CUT_SHARE of 60 s, one run of three
# had none. The GPT with its loss's takes 11.4 s alone and 8 s to build and load: at 0.4
# of 55 s, its three solve_bench budgets had no bound (the planner's own LP had given them
# one, in 15 s).
FIRST_LP_SHARE = 0.6
# One round of separation: the cuts the first LP relaxation violates. A second round fit in
# that time or not depending on how fast this process started, and when it did (GoogLeNet at
# 1/2: 1130 cuts instead of 845) HiGHS found no plan better than +19.3 % in 60 s, against
# +7.2 % with one round. With one round, on this machine at 60 s
# (bench/results/solve_bench_cut_rounds.md): GoogLeNet 1/2 gap 10.5 % (66.2 %), MobileNet-V2
# 1/4 proven optimal (0.2 %), U-Net 1/2 7.5 % (8.4 %); ResNet-50 1/2 25.0 % (22.3 %).
CUT_ROUNDS = 1
# A separation stopped at that time adds the cuts it did not find violated only when it
# solved no LP in time (then it knows nothing of them, and they count as violated). Until
# 2026-12-05 it also added them when more than 5 % of those it checked were violated (on
# ad5fc22's machine: better bounds on ResNet-50, GoogLeNet and the GPT at 1/2, with 7-13 %
# violated). On a machine at 1.44x the reference speed, 60 s solves
# (bench/results/solve_bench_cuts_fast_machine.md): that rule added all 13975 cuts on the
# GPT at 1/3, whose bound then reached +11.10 % against +16.06 % with the violated ones only
# (gap 47.0 % -> 23.3 %); on the other nine budgets of GoogLeNet, the GPT, ResNet-50 and
# U-Net the bounds moved by -0.32 to +0.36 points of the step, both ways.
ADD_REST_ABOVE = 1.0
# With --windows-after, the branch and bound stops at that share of the limit if its gap is
# still above WINDOWS_GAP, and this process searches windows too (forward-op windows
# first, the planner's search starting with stage windows), exchanging plans with the
# planner's search and merging each other's changes (planner.merge).
WINDOWS_GAP = 0.05
# It switches once HiGHS has both bounds (its dual bound is -inf while it presolves) and,
# where less than EARLY_SWITCH_LEFT_S would be left after the switch, once its root node
# is done (its cuts raise the bound: the GPT with its loss from 0.034 to 0.067 s at 1/3) or
# at ROOT_WAIT of the limit. Waiting for the root in 60 s solves cost the windows 11-14 s at
# ResNet-50's 1/3 and 1/4, whose root never finished on a machine at 0.5-0.9x, for 6 % of
# bound (1/3: 0.01669 to 0.01775 s, from 13.4 to 33.9 s). Not waiting (2026-12-06, paired
# 60 s solves alternating which ran first, machine at 0.5-0.9x): ResNet-50 at 1/3 +19.06
# and +20.14 % against +21.65 and +20.48 %, at 1/4 +29.76 and +28.99 % against +30.19 and
# +30.18 %, GoogLeNet at 1/3 and 1/4 (one pair each) the same plans; bounds 0.4-1.9 %
# lower. Not waiting at the 10-budget ResNet-50 sweep's limits (bench/sweep_bench.py,
# 0.48-0.53x against 0.51x): at 16-21 s (0.7-0.55) the same plans (or 0.08-0.18 point
# slower) with gaps of 22.6-38.7 % against 13.2-21.0 %; at 37-46 s (0.3, 0.25; the
# worker's 22-27 s after the switch) the tight end at +34.27 and +40.44 % against +31.85 %
# (0.3 from its own plan: +37.7 % waiting, +55.6 % not). Hence 30 s: the 60 s solves'
# 34.7 s after the switch, not the sweep's.
EARLY_SWITCH_LEFT_S = 30.0
ROOT_WAIT = 0.6


def searches_windows_now(elapsed: float, time_limit: float, switch_at: float,
                         incumbent: float, bound: float, nodes: int) -> bool:
    """Whether the branch and bound, ``elapsed`` seconds into its ``time_limit``, with its
    ``incumbent``, its ``bound`` and ``nodes`` explored, stops for the window search: from
    ``switch_at`` on, with both bounds known and its gap over WINDOWS_GAP; and where less
    than EARLY_SWITCH_LEFT_S would be left, only once its root node is done or at
    ROOT_WAIT of the limit."""
    if elapsed < switch_at or not (math.isfinite(incumbent) and math.isfinite(bound)):
        return False
    if incumbent - bound <= WINDOWS_GAP * abs(incumbent):
        return False
    return time_limit - switch_at >= EARLY_SWITCH_LEFT_S or nodes > 0 or \
        elapsed >= ROOT_WAIT * time_limit


def _emit(*fields: object) -> None:
    print(*fields, file=sys.stderr, flush=True)


def _number(x: float | None) -> str:
    return repr(float(x)) if x is not None and math.isfinite(x) else "nan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--dir", required=True, help="where plans are exchanged")
    parser.add_argument("--time-limit", type=float, required=True,
                        help="seconds from the start of this process")
    parser.add_argument("--budget", type=int, help="bytes (else --lowest)")
    parser.add_argument("--lowest", action="store_true", help="minimise the peak")
    parser.add_argument("--variants", default="all")
    parser.add_argument("--gap", type=float, default=1e-4)
    parser.add_argument("--start", help="decisions (JSON) to start from")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--windows-after", type=float,
                        help="share of the limit after which to search windows instead")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()

    import highspy
    import numpy as np

    from planner.candidates import planner_graph
    from planner.formulation import build_stage_milp
    from planner.full_solve import read_plan, write_decisions
    from planner.heuristic import LPRounding
    from planner.recompute_cuts import recomputation_cuts, separate
    from planner.window_highs import PersistentHiGHS, highs_status
    from profiler.ir import Profile

    profile = Profile.load(args.profile)
    graph = planner_graph(profile)
    stages = len(graph.stages)
    milp = build_stage_milp(graph, [n.time_s for n in profile.nodes], args.budget,
                            minimize_peak=args.lowest, variants=args.variants)
    model = PersistentHiGHS(milp.problem, args.gap, args.threads, args.verbose)
    h = model.highs
    columns = milp.vectors.columns
    # The recomputation cuts its LP relaxation violates, in a quarter of the time at most;
    # made after the first LP, which the planner waits for.
    made: list = []

    def cuts() -> list:
        made.extend(recomputation_cuts(graph, milp.keep, milp.recompute,
                                       graph.variant_sites(args.variants)))
        return made
    lp_sent = []

    def solved_lp(round_: int, x, objective: float) -> None:
        """Every LP solved is a bound; the first, the plain relaxation, is rounded."""
        _emit("PROGRESS", _number(time.perf_counter() - t0), "nan", _number(objective))
        if round_ == 0:
            lp_sent.append(True)
            model.set_values(x)
            path = os.path.join(args.dir, "lp.json")
            with open(path + ".tmp", "w") as f:
                json.dump(LPRounding.of(milp, graph).to_json(), f)
            os.replace(path + ".tmp", path)
            _emit("LP", _number(objective), path)

    added = separate(h, cuts, deadline=t0 + CUT_SHARE * args.time_limit,
                     rounds=CUT_ROUNDS, add_rest_above=ADD_REST_ABOVE, on_lp=solved_lp,
                     first_deadline=t0 + FIRST_LP_SHARE * args.time_limit)
    if not lp_sent:
        _emit("LP", "nan", "none")  # none is coming: the planner need not wait
    _emit("CUTS", added, len(made), _number(time.perf_counter() - t0))

    def offered(path: str):
        """The decisions in ``path`` and their base, or None if they are no point. Writes
        in place only lower the memory rows, so a plan without them is a point of a
        problem with them."""
        try:
            decisions, base = read_plan(path)
        except (OSError, ValueError, KeyError):  # replaced as it was read: the next one
            return None
        decisions = replace(decisions, in_place=milp.in_place)
        if not milp.represents(decisions):
            return None
        return decisions, base

    def point(path: str):
        """The column values of the decisions in ``path``, or None if they are no point."""
        found = offered(path)
        return None if found is None else milp.vectors.values(found[0])[:columns]

    def elapsed() -> float:
        return time.perf_counter() - t0

    h.setOptionValue("time_limit", max(args.time_limit - elapsed(), 0.1))
    offer = os.path.join(args.dir, "offer.json")
    state = {"report": -math.inf, "found": 0, "offer": 0, "best": math.inf}
    # The MIP start: the better of --start and a plan offered while this process was
    # building its problem (HiGHS may spend the rest of a short limit in presolve, before
    # any user-solution callback reads the offer).
    starts = [args.start] if args.start else []
    if os.path.exists(offer):
        state["offer"] = os.stat(offer).st_mtime_ns
        starts.append(offer)
    points = [v for v in map(point, starts) if v is not None]
    if points:
        values = min(points, key=lambda v: float(milp.vectors.objective[:columns] @ v))
        solution = highspy.HighsSolution()
        solution.col_value = values.tolist()
        solution.value_valid = True
        h.setSolution(solution)

    switch_at = math.inf if args.windows_after is None else args.windows_after * args.time_limit

    def progress(event) -> None:
        d = event.data_out
        if searches_windows_now(elapsed(), args.time_limit, switch_at, d.mip_primal_bound,
                                d.mip_dual_bound, d.mip_node_count):
            event.data_in.user_interrupt = True  # windows from here (below)
        if elapsed() - state["report"] >= args.every:
            state["report"] = elapsed()
            _emit("PROGRESS", _number(elapsed()), _number(d.mip_primal_bound),
                  _number(d.mip_dual_bound))

    def report(decisions, objective: float, base=None) -> None:
        """An improving plan, as a SOLUTION line and its file (with ``base``, if any)."""
        state["found"] += 1
        state["best"] = objective
        path = os.path.join(args.dir, f"found_{state['found']}.json")
        write_decisions(path, decisions, base)
        _emit("SOLUTION", _number(objective), path)

    def save(values, objective: float) -> None:
        model.set_values(values)
        report(milp.decisions(stages), objective)

    def improving(event) -> None:
        save(np.asarray(event.data_out.mip_solution), event.data_out.mip_primal_bound)
        state["report"] = -math.inf
        progress(event)

    def newer_offer(seen: int):
        """The offer's modification time and, if it changed since ``seen``, its decisions
        and base (``offered``); None if it did not, is gone or is no point."""
        try:
            changed = os.stat(offer).st_mtime_ns
        except FileNotFoundError:
            return seen, None
        return changed, None if changed == seen else offered(offer)

    def user_solution(event) -> None:
        state["offer"], found = newer_offer(state["offer"])
        if found is not None:
            event.data_in.setSolution(milp.vectors.values(found[0])[:columns])
            event.data_in.user_has_solution = True

    h.cbMipInterrupt.subscribe(progress)
    h.cbMipImprovingSolution.subscribe(improving)
    h.cbMipUserSolution.subscribe(user_solution)
    h.run()
    info = h.getInfo()
    found = info.primal_solution_status >= 2
    status = highs_status(h)
    if found and info.objective_function_value < state["best"] - 1e-12:
        # The final plan is reported even if no callback saw it (e.g. the MIP start).
        save(h.getSolution().col_value, info.objective_function_value)
    objective = info.objective_function_value if found else math.nan
    if status == "feasible" and elapsed() >= switch_at and \
            args.time_limit - elapsed() > 2.0:
        model.set_values(h.getSolution().col_value)
        objective = _search_windows(milp, graph, model, milp.decisions(stages), newer_offer,
                                    report, args, args.time_limit - elapsed(),
                                    float(info.mip_dual_bound))
    _emit("DONE", status, _number(objective), _number(info.mip_dual_bound),
          _number(elapsed()))


def _search_windows(milp, graph, model, start, newer_offer, report, args, seconds: float,
                    bound: float) -> float:
    """The window search (``planner.lns``) in this process for ``seconds``, from the better
    of ``start`` (the branch and bound's plan) and the planner's newest offer
    (``newer_offer``); its plans are reported (``report``) with the base their changes
    started from. Returns the best objective."""
    from planner.backends import SolveOptions
    from planner.lns import improve_by_windows

    class Exchange:
        """The planner's search as ``improve_by_windows`` sees a full-MILP worker."""

        proved_optimal = False

        def __init__(self) -> None:
            self.bound = bound
            self.seen = 0  # the offer's time: the newest is read at once

        def take_plan(self):
            self.seen, found = newer_offer(self.seen)
            return None if found is None else (milp.objective_of(found[0]), *found)

        def offer(self, decisions, base=None) -> None:
            report(decisions, milp.objective_of(decisions), base)

    exchange = Exchange()
    newest = exchange.take_plan()
    if newest is not None and newest[0] < milp.objective_of(start):
        start = newest[1]
    best, _ = improve_by_windows(
        milp, graph, start, "highs", SolveOptions(gap=args.gap, threads=args.threads),
        seconds, full=exchange, persistent=model, neighbourhoods=("forward ops", "stages"))
    return milp.objective_of(best)


if __name__ == "__main__":
    main()
