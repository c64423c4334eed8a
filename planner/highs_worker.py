"""The full stage MILP in its own process, beside the window search (``planner.full_solve``).

Reads the model file the planner wrote (MPS), solves it with HiGHS from a MIP start, and
reports on stderr, one line each:

* ``PROGRESS <seconds> <incumbent> <bound>`` (at most every ``--every`` seconds, and on a
  new incumbent; ``nan`` where there is none yet);
* ``SOLUTION <objective> <path>``: an improving solution, saved as a ``.npy`` vector of the
  model's columns (the path is the rest of the line);
* ``DONE <status> <objective> <bound> <seconds>`` at the end.

Plans the planner finds meanwhile, written to ``<dir>/offer.npy`` (replaced atomically), are
given to HiGHS as user solutions, so its tree search prunes with the best plan either side
has. A separate process because the window search keeps the planner's process busy, and a
second core is otherwise idle. Imports nothing of the planner (and not torch): it starts
in a fraction of a second.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


def _emit(*fields: object) -> None:
    print(*fields, file=sys.stderr, flush=True)


def _number(x: float) -> str:
    return repr(float(x)) if x is not None and math.isfinite(x) else "nan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--dir", required=True, help="where solutions are exchanged")
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--gap", type=float, default=1e-4)
    parser.add_argument("--start", help=".npy MIP start")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    import highspy
    import numpy as np

    t0 = time.perf_counter()
    h = highspy.Highs()
    h.setOptionValue("output_flag", bool(args.verbose))
    if args.threads:
        h.setOptionValue("threads", int(args.threads))
    if h.readModel(args.model) != highspy.HighsStatus.kOk:
        raise SystemExit(f"cannot read the model {args.model}")
    h.setOptionValue("time_limit", max(args.time_limit - (time.perf_counter() - t0), 0.1))
    h.setOptionValue("mip_rel_gap", float(args.gap))
    if args.start:
        solution = highspy.HighsSolution()
        solution.col_value = np.load(args.start).tolist()
        solution.value_valid = True
        h.setSolution(solution)

    offer = os.path.join(args.dir, "offer.npy")
    state = {"report": -math.inf, "found": 0, "offer": 0, "best": math.inf}

    def elapsed() -> float:
        return time.perf_counter() - t0

    def progress(event) -> None:
        d = event.data_out
        if elapsed() - state["report"] >= args.every:
            state["report"] = elapsed()
            _emit("PROGRESS", _number(elapsed()), _number(d.mip_primal_bound),
                  _number(d.mip_dual_bound))

    def improving(event) -> None:
        d = event.data_out
        state["found"] += 1
        state["best"] = d.mip_primal_bound
        path = os.path.join(args.dir, f"found_{state['found']}.npy")
        np.save(path + ".tmp.npy", np.asarray(d.mip_solution, dtype=np.float64))
        os.replace(path + ".tmp.npy", path)
        _emit("SOLUTION", _number(d.mip_primal_bound), path)
        state["report"] = -math.inf
        progress(event)

    def user_solution(event) -> None:
        try:
            changed = os.stat(offer).st_mtime_ns
        except FileNotFoundError:
            return
        if changed == state["offer"]:
            return
        state["offer"] = changed
        values = np.load(offer)
        event.data_in.setSolution(values)
        event.data_in.user_has_solution = True

    h.cbMipInterrupt.subscribe(progress)
    h.cbMipImprovingSolution.subscribe(improving)
    h.cbMipUserSolution.subscribe(user_solution)
    h.run()
    model_status = h.getModelStatus()
    info = h.getInfo()
    found = info.primal_solution_status >= 2
    if model_status == highspy.HighsModelStatus.kOptimal:
        status = "optimal"
    elif model_status == highspy.HighsModelStatus.kInfeasible:
        status = "infeasible"
    else:
        status = "feasible" if found else "no_solution"
    if found and info.objective_function_value < state["best"] - 1e-12:
        # The final solution is reported even if no callback saw it (e.g. the MIP start).
        path = os.path.join(args.dir, "final.npy")
        np.save(path + ".tmp.npy", np.asarray(h.getSolution().col_value, dtype=np.float64))
        os.replace(path + ".tmp.npy", path)
        _emit("SOLUTION", _number(info.objective_function_value), path)
    _emit("DONE", status, _number(info.objective_function_value if found else math.nan),
          _number(info.mip_dual_bound), _number(elapsed()))


if __name__ == "__main__":
    main()
