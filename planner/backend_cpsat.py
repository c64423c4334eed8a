"""OR-Tools CP-SAT behind the same interface as HiGHS and CBC.

The planner builds its problems in PuLP; this backend turns one into an integer model and
solves it with CP-SAT in a child process (``planner/cpsat_worker.py``: OR-Tools and
highspy cannot be loaded into one process). CP-SAT needs integer coefficients: a row with
fractional coefficients (the memory rows, in MiB) is multiplied by ``ROW_SCALE`` and
rounded *conservatively* (coefficients of binaries up, the right-hand side down), so every
CP-SAT solution is feasible for the original rows; continuous variables (the peak) become
integers in units of ``1 / ROW_SCALE``, except those some optimum holds at integers anyway
(``implied_integers``: the stage MILP's 0/1 auxiliaries, whose memory coefficients scaled
to units of 1/1024 rounded to 0 before, so that CP-SAT's plans broke the budget). The
objective is scaled so that its smallest
coefficient is ``OBJECTIVE_RESOLUTION`` units and rounded; the reported objective is
recomputed exactly from the solution, the bound is scaled back.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading

import pulp

from .backends import SolveOptions, SolveOutcome, outcome_of
from .progress import ProgressLog

log = logging.getLogger(__name__)

ROW_SCALE = 1024  # MiB rows -> KiB
OBJECTIVE_RESOLUTION = 1e4
BIG = 2**40
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpsat_worker.py")


def _integral(x: float) -> bool:
    return abs(x - round(x)) <= 1e-9


def implied_integers(problem: pulp.LpProblem) -> set[str]:
    """Names of the continuous variables of ``problem`` (minimised) that can be made integer
    without losing an optimum: rounding every one of them down keeps any solution feasible
    and no worse. A variable qualifies when its objective coefficient is >= 0, its lower
    bound a nonnegative integer (the rounding of rows below is conservative only for
    nonnegative variables), it is in no equality, and in each row (as ``a x >= b``)
    either its coefficient is <= 0 (larger values only hurt), or it is 1 and the row is
    otherwise integral (integer coefficients and right-hand side, integer or qualifying
    variables) with no other variable of positive coefficient among the qualifying ones:
    then ``v >= b - (the rest)``, an integer that rounding the others down only lowers.
    The stage MILP's auxiliaries that say a copy lives on (``planner.memory_rows``) are of
    this kind; those in MiB (a stage's largest memory) are not."""
    variables = problem.variables()
    return {variables[i].name for i in _implied(problem, variables,
                                                 _indexed_rows(problem, variables))}


Rows = list[tuple[pulp.LpConstraint, list[tuple[int, float]]]]


def _indexed_rows(problem: pulp.LpProblem, variables: list[pulp.LpVariable]) -> Rows:
    """Each row of ``problem`` with its nonzero terms as (index in ``variables``,
    coefficient): read once, for both ``_implied`` and the integer rows (reading them is
    most of the time either takes: 0.9 s of GoogLeNet's, 2026-12-06)."""
    index = {v.name: i for i, v in enumerate(variables)}
    return [(c, [(index[v.name], a) for v, a in c.items() if a])
            for c in problem.constraints.values()]


def _implied(problem: pulp.LpProblem, variables: list[pulp.LpVariable], rows: Rows
             ) -> set[int]:
    """``implied_integers``, as indices into ``variables``."""
    if problem.sense != pulp.LpMinimize:
        return set()
    objective = {v.name: a for v, a in problem.objective.items()}
    integer = {i for i, v in enumerate(variables) if v.cat in (pulp.LpBinary, pulp.LpInteger)}
    candidates = {i for i, v in enumerate(variables)
                  if i not in integer and objective.get(v.name, 0) >= 0
                  and v.lowBound is not None and v.lowBound >= 0 and _integral(v.lowBound)}
    at_least = []  # the rows as a x >= b
    for c, terms in rows:
        if c.sense == pulp.LpConstraintEQ:
            candidates -= {i for i, _ in terms}
            continue
        sign = 1 if c.sense == pulp.LpConstraintGE else -1
        at_least.append(([(i, sign * a) for i, a in terms], -sign * c.constant))
    changed = True
    while changed:  # drop the variables that fail, until none does
        changed = False
        for terms, rhs in at_least:
            helping = [(i, a) for i, a in terms if i in candidates and a > 0]
            if not helping:
                continue
            integral_row = len(helping) == 1 and helping[0][1] == 1 and _integral(rhs) and all(
                _integral(a) and (i in integer or i in candidates) for i, a in terms)
            if not integral_row:
                candidates -= {i for i, _ in helping}
                changed = True
    return candidates


def integer_model(problem: pulp.LpProblem) -> tuple[dict, list[pulp.LpVariable], list[int],
                                                     float]:
    """The CP-SAT worker's input for ``problem``: bounds, rows and objective in integers.
    Also returns the variables in order, their scales and the objective's scale."""
    variables = problem.variables()
    index = {v.name: i for i, v in enumerate(variables)}
    indexed = _indexed_rows(problem, variables)
    implied = _implied(problem, variables, indexed)
    bounds, scale = [], []
    for i, v in enumerate(variables):
        lo = v.lowBound if v.lowBound is not None else -BIG
        hi = v.upBound if v.upBound is not None else BIG
        if v.cat in (pulp.LpBinary, pulp.LpInteger) or i in implied:
            bounds.append([int(math.ceil(lo)), int(math.floor(hi))])
            scale.append(1)
        else:
            bounds.append([max(-BIG, math.floor(lo * ROW_SCALE)),
                           min(BIG, math.ceil(hi * ROW_SCALE))])
            scale.append(ROW_SCALE)
    rows = []
    for c, terms in indexed:
        unit = [(i, a / scale[i]) for i, a in terms]
        rhs = -c.constant
        if c.sense == pulp.LpConstraintGE:  # a x >= r  ->  -a x <= -r
            unit, rhs, sense = [(i, -a) for i, a in unit], -rhs, pulp.LpConstraintLE
        else:
            sense = c.sense
        if all(_integral(a) for _, a in unit) and _integral(rhs):
            terms = [[i, int(round(a))] for i, a in unit]
            r = int(round(rhs))
            rows.append([terms, r if sense == pulp.LpConstraintEQ else None, r])
            continue
        if sense == pulp.LpConstraintEQ:
            raise ValueError(f"CP-SAT backend: equality {c.name} has fractional coefficients")
        # Scaled and rounded so that the integer row implies the original one.
        terms = [[i, math.ceil(a * ROW_SCALE - 1e-9) if scale[i] == 1 else
                  int(round(a * ROW_SCALE))] for i, a in unit]
        rows.append([terms, None, math.floor(rhs * ROW_SCALE + 1e-9)])
    unit = [(index[v.name], coef / scale[index[v.name]])
            for v, coef in problem.objective.items() if coef]
    smallest = min((abs(a) for _, a in unit), default=1.0)
    largest = max((abs(a) for _, a in unit), default=1.0)
    obj_scale = min(OBJECTIVE_RESOLUTION / smallest, 2.0**50 / max(largest * len(unit), 1.0))
    objective = [[i, int(round(a * obj_scale))] for i, a in unit]
    return ({"bounds": bounds, "rows": rows, "objective": objective}, variables, scale,
            obj_scale)


def solve_cpsat(problem: pulp.LpProblem, options: SolveOptions) -> SolveOutcome:
    """Solve ``problem`` with CP-SAT in a child process, with progress through logging."""
    data, variables, scale, obj_scale = integer_model(problem)
    constant = problem.objective.constant
    if options.warm_start and all(v.varValue is not None for v in variables):
        data["hint"] = [int(round(v.varValue * s)) for v, s in zip(variables, scale)]
    data.update(time_limit=options.time_limit_s, workers=options.threads or 2,
                gap=options.gap, verbose=options.verbose)
    progress = ProgressLog("cpsat")
    # -P: do not put planner/ on sys.path (its inspect.py would shadow the standard one).
    proc = subprocess.Popen([sys.executable, "-P", WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []

    def relay() -> None:
        for line in proc.stderr:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "PROGRESS":
                _, wall, obj, bound = parts
                progress.update(float(obj) / obj_scale + constant,
                                float(bound) / obj_scale + constant, float(wall))
            else:
                errors.append(line.rstrip())
                if options.verbose:
                    log.info("cpsat: %s", line.rstrip())

    # Only the relay reads stderr and only the collector reads stdout: communicate() would
    # read stderr too and take PROGRESS lines away from the relay.
    answer: list[str] = []
    reader = threading.Thread(target=relay, daemon=True)
    collector = threading.Thread(target=lambda: answer.append(proc.stdout.read()), daemon=True)
    reader.start()
    collector.start()
    try:
        proc.stdin.write(json.dumps(data))
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the worker died before reading its model: reported below
    try:
        proc.wait(timeout=options.time_limit_s + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    collector.join(timeout=5)
    reader.join(timeout=5)
    out = "".join(answer)
    if proc.returncode != 0 or not out:
        tail = "; ".join(e for e in errors if e.strip())[-500:]
        raise RuntimeError(f"the CP-SAT worker failed (exit {proc.returncode}): {tail}")
    result = json.loads(out)
    if result["values"] is not None:
        for v, value, s in zip(variables, result["values"], scale):
            v.varValue = value / s
    bound = result["bound"] / obj_scale + constant if result["bound"] is not None else None
    if result["values"] is not None:  # the final state, if no PROGRESS line reported it
        progress.update(pulp.value(problem.objective), bound, result["seconds"])
    return outcome_of(problem, result["status"], result["seconds"], bound)
