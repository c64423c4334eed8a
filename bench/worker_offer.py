"""Whether the full-MILP worker (``planner.full_worker``) returns a plan offered to it under
a short time limit, and what it reaches: the check behind its MIP start from an early offer
and its torch-free start (2026-12-04).

    python bench/worker_offer.py --limit 4 --runs 3

For each run: the worker's status, objective and bound (extra seconds of the step), its
wall time, and the objective of the plan offered (the best structural plan within the
budget). Figures go to the log only: the outcome depends on this machine's load.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from planner.backends import SolveOptions  # noqa: E402
from planner.formulation import build_stage_milp  # noqa: E402
from planner.full_solve import FullSolveProcess  # noqa: E402
from planner.heuristic import structural_candidates  # noqa: E402
from planner.schedule import baseline_decisions, build_schedule  # noqa: E402
from planner.simulator import simulate  # noqa: E402
from planner.solve import planner_graph  # noqa: E402
from profiler import load_model, profile_model  # noqa: E402

log = logging.getLogger("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=4.0, help="the worker's seconds")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.75,
                        help="budget as a fraction of the unoptimised peak")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("planner").setLevel(logging.WARNING)
    # The test suite's resnet18 (tests/conftest.py), FLOP-estimated.
    model, inputs = load_model("torchvision:resnet18", batch=32, image_size=160)
    profile = profile_model(model, inputs, name="torchvision:resnet18", estimate=True)
    graph = planner_graph(profile)
    times = [n.time_s for n in profile.nodes]
    peak = simulate(profile, build_schedule(graph, baseline_decisions(graph))).peak_bytes
    milp = build_stage_milp(graph, times, int(args.fraction * peak))
    fitting = [d for d in (replace(d, in_place=milp.in_place)
                           for d in structural_candidates(graph, times))
               if milp.represents(d) and milp.evaluate_peak(d) <= milp.budget]
    if not fitting:
        raise SystemExit(f"no structural plan fits {args.fraction} of the peak")
    offered = min(fitting, key=milp.objective_of)
    for run in range(args.runs):
        t0 = time.perf_counter()
        full = FullSolveProcess(profile, milp.budget, args.limit, SolveOptions())
        try:
            full.offer(offered)
            outcome, _ = full.close(args.limit + 4.0)
        finally:
            full.stop()
        log.info("run %d: %s, objective %s, bound %s, %.1f s; offered %.6g", run,
                 outcome.status, outcome.objective, outcome.bound,
                 time.perf_counter() - t0, milp.objective_of(offered))


if __name__ == "__main__":
    main()
