"""CP-SAT in its own process: reads an integer model as JSON on stdin, writes the answer.

Run by ``planner.backend_cpsat``; a separate process because OR-Tools' native library and
highspy (loaded by PuLP) carry clashing copies of HiGHS and cannot share one process. This
file imports nothing of the planner. Progress goes to stderr as
``PROGRESS <seconds> <incumbent> <bound>`` lines (scaled objective units).
"""
from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from ortools.sat.python import cp_model

    data = json.load(sys.stdin)
    model = cp_model.CpModel()
    xs = [model.new_int_var(lo, hi, f"x{i}") for i, (lo, hi) in enumerate(data["bounds"])]
    for terms, lo, hi in data["rows"]:
        expr = sum(c * xs[i] for i, c in terms)
        if lo is not None and lo == hi:
            model.add(expr == lo)
            continue
        if lo is not None:
            model.add(expr >= lo)
        if hi is not None:
            model.add(expr <= hi)
    model.minimize(sum(c * xs[i] for i, c in data["objective"]))
    if data.get("hint"):
        for x, v in zip(xs, data["hint"]):
            model.add_hint(x, v)

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(data["time_limit"])
    solver.parameters.num_workers = int(data["workers"])
    solver.parameters.relative_gap_limit = float(data["gap"])
    solver.parameters.log_search_progress = bool(data.get("verbose"))
    solver.parameters.log_to_stdout = False

    class Progress(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            print(f"PROGRESS {self.wall_time} {self.objective_value} "
                  f"{self.best_objective_bound}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    status = solver.solve(model, Progress())
    names = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible",
             cp_model.INFEASIBLE: "infeasible"}
    state = names.get(status, "no_solution")
    found = state in ("optimal", "feasible")
    json.dump({"status": state, "seconds": time.perf_counter() - t0,
               "values": [solver.value(x) for x in xs] if found else None,
               "bound": solver.best_objective_bound if found else None}, sys.stdout)


if __name__ == "__main__":
    main()
