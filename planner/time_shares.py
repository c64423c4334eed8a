"""How a solve's time limit is divided among its phases, from the stage MILP's estimated
build time: whether the LP and the MILP are built at all, whether LP rounding and the MILP
search fit in the time left, and how long the search phases may run. These bind at short
limits (a 5 s solve of the GPT took 17 s before); at the default 60 s every phase runs.
"""
from __future__ import annotations

import functools
import logging
import time

import pulp

from .backends import SolveOptions
from .graph import PlannerGraph
from .milp_search import MILP_MIN_SHARE

log = logging.getLogger(__name__)
# PuLP builds the stage MILP at about this many stages x forward ops a second on this
# project's 2-core machine, scaled to its reference speed. Since the build makes one
# expression per row (``planner.lp_terms``; 2026-12-05, on a machine at 0.33x): GoogLeNet's
# 54.1K in 3.8 s (6.6 s before), the GPT's 62.1K in 3.8-3.9 s (10.7 s), ResNet-50's 35.5K
# in 1.9-2.2 s (3.7 s), MobileNet-V2's 28.6K in 1.4 s, U-Net's in 0.4-0.5 s: 44-170K a
# second at the reference speed; 40K keeps every estimate above its build. (Before,
# 2026-12-03 at the reference speed: 20K; DenseNet-201's 880K-binary problem took two
# minutes.)
BUILD_SIZE_PER_SECOND = 40_000
# PuLP's rate of adding terms to expressions on the machine BUILD_SIZE_PER_SECOND was
# measured on. Machines of the same kind differ: on 2026-12-05 one built the GPT's MILP in
# 9.2 s (3.1x) and ResNet-50's in 4.5 s, and added 86K terms a second; so the estimate
# scales by the rate measured where the solve runs (``machine_speed``).
REFERENCE_TERMS_PER_SECOND = 265_000
# Where one build would take more than this share of the time limit, the LP and the MILP
# are not built: heuristic plans and the peak search answer alone.
BUILD_MAX_SHARE = 0.5
# LP rounding (planner.heuristic) takes about this many times the MILP's estimated build
# (its build, the LP and the rounded plans' simulations), and runs only where that is at
# most this share of the time left: at 5 s, ResNet-50's 3.5 s of LP took the time its
# time-directed search needed (+174 % against +38 % with the search). Measured at 1/3 with
# a 30 s LP limit (2026-12-05, the faster build): GoogLeNet 2.64, the GPT 2.65, ResNet-50
# 2.07, MobileNet-V2 1.55, U-Net 3.2 estimated builds. (Before, 2.0 of the slower build's:
# 1.4-2.9x measured; 2.5 left MobileNet-V2 without a bound at 5 s.)
LP_COST = 3.0
LP_MAX_SHARE = 0.75


@functools.cache
def machine_speed() -> float:
    """How fast this machine builds PuLP expressions, relative to the machine the time
    shares were measured on (1.0; 0.33 is three times slower). Measured once per process,
    the better of two 12,000-term builds (about 0.1 s each at the reference speed), and
    clamped to [0.1, 4]."""
    variables = [pulp.LpVariable(f"x{i}") for i in range(400)]
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for row in range(300):
            expression = pulp.LpAffineExpression()
            for i in range(40):
                expression += (i + 1.5) * variables[(7 * row + i) % 400]
        best = min(best, time.perf_counter() - t0)
    speed = 12_000 / best / REFERENCE_TERMS_PER_SECOND
    if speed < 0.8:
        log.info("this machine builds MILPs at %.2fx the reference speed; phases are sized "
                 "to it", speed)
    return min(4.0, max(0.1, speed))


def estimated_build_s(graph: PlannerGraph) -> float:
    """Seconds PuLP takes to build the stage MILP of ``graph`` here
    (BUILD_SIZE_PER_SECOND, scaled by ``machine_speed``)."""
    return len(graph.stages) * len(graph.ops()) / (BUILD_SIZE_PER_SECOND * machine_speed())


def too_large(graph: PlannerGraph, time_limit_s: float) -> bool:
    """Whether the stage MILP would take most of ``time_limit_s`` just to build; logs it."""
    build_s = estimated_build_s(graph)
    if build_s > BUILD_MAX_SHARE * time_limit_s:
        log.warning("%d stages x %d ops: the MILP would take about %.1f s to build, too long "
                    "for a %.0f s limit; using heuristic plans and the peak search (a longer "
                    "--time-limit lets the solver in)", len(graph.stages), len(graph.ops()),
                    build_s, time_limit_s)
        return True
    return False


def lp_fits(graph: PlannerGraph, deadline: float, share: float = LP_MAX_SHARE,
            what: str = "LP rounding") -> bool:
    """Whether an LP relaxation (LP_COST builds' time) fits in ``share`` of the time left
    before ``deadline`` (``time.perf_counter()``); logs why not (``what``: what it is for)."""
    left, lp_s = deadline - time.perf_counter(), LP_COST * estimated_build_s(graph)
    if lp_s <= share * left:
        return True
    log.info("no %s: it would take about %.1f s of the %.1f s left", what, lp_s, left)
    return False


def phase_s(share: float, options: SolveOptions, deadline: float) -> float:
    """Seconds for a search phase: ``share`` of the time limit, and at most half the time
    left before ``deadline`` (which binds at short limits only)."""
    return max(0.0, min(share * options.time_limit_s, 0.5 * (deadline - time.perf_counter())))


# What the MILP search costs after its build, whatever its time limit, in builds: PuLP
# loading the problem into HiGHS and HiGHS's presolve, which does not look at the clock.
# GoogLeNet's FLOP-estimated profile at 5 s (2026-12-06, a machine at 1.05x): a 1.8 s build
# (1.28 s estimated), then 1.1 s of loading and 1.5 s of HiGHS for a 0.1 s limit, and the
# solve took 6.3-7.0 s; without this the MILP search started with 0.9 s left.
SOLVE_AFTER_BUILD = 2.0


def _milp_s(graph: PlannerGraph, options: SolveOptions) -> float:
    """The least time the MILP search takes: its build, loading and presolving it
    (SOLVE_AFTER_BUILD builds), and its least share of the limit."""
    return (1 + SOLVE_AFTER_BUILD) * estimated_build_s(graph) + \
        MILP_MIN_SHARE * options.time_limit_s


def time_search_s(graph: PlannerGraph, options: SolveOptions, deadline: float,
                  heuristic_only: bool, share: float) -> float:
    """Seconds for the time-directed search: ``share`` of the limit (``phase_s``), or all
    the time left where the MILP search could not follow it (the GPT at 10 s stopped its
    search after 0.5 s, +59.0 % against +49.8 % at 5 s)."""
    left = max(0.0, deadline - time.perf_counter())
    search_s = phase_s(share, options, deadline)
    return left if heuristic_only or left - search_s < _milp_s(graph, options) else search_s


def milp_fits(graph: PlannerGraph, options: SolveOptions, deadline: float, what: str) -> bool:
    """Whether the time left before ``deadline`` holds building the stage MILP and solving
    it for the least share of the limit it is given; logs why not (``what``: the search)."""
    left = deadline - time.perf_counter()
    if left >= _milp_s(graph, options):
        return True
    log.info("no %s: %.1f s left, the MILP takes about %.1f s to build", what, max(left, 0),
             estimated_build_s(graph))
    return False
