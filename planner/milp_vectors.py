"""The stage MILP's variables as one numpy vector: a plan's values, objective and memory
rows without walking PuLP expressions.

Window-by-window improvement (``planner.lns``) evaluates the incumbent after every window:
its variables' values (the auxiliaries are the largest of their lower expressions), the
objective and every memory row in bytes. Done term by term over PuLP expressions that took
a third of the search's time on ResNet-50 (12 of 35 s; HiGHS had the other 23). Here each
family of expressions is compiled once into coordinate arrays and evaluated as a sparse
product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pulp

from .memory_rows import MIB_SCALE
from .schedule import Decisions

if TYPE_CHECKING:  # the formulation builds this; only its type is needed here
    from .formulation import StageMILP


@dataclass
class SparseAffine:
    """Affine expressions ``constant[r] + sum coef * x[column]`` in coordinate form."""

    row: np.ndarray
    column: np.ndarray
    coef: np.ndarray
    constant: np.ndarray

    @classmethod
    def of(cls, expressions: list[pulp.LpAffineExpression], index: dict[str, int]
           ) -> "SparseAffine":
        rows, columns, coefs = [], [], []
        for r, expr in enumerate(expressions):
            for var, c in expr.items():
                rows.append(r)
                columns.append(index[var.name])
                coefs.append(c)
        return cls(np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64),
                   np.asarray(coefs, dtype=np.float64),
                   np.asarray([e.constant for e in expressions], dtype=np.float64))

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        return self.constant + np.bincount(self.row, weights=self.coef * x[self.column],
                                           minlength=len(self.constant))


class MilpVectors:
    """``milp``'s variables (the solver's columns first, in ``problem.variables()`` order)
    with compiled expressions."""

    def __init__(self, milp: "StageMILP"):
        self.variables = list(milp.problem.variables())
        self.columns = len(self.variables)  # the solver's; any others follow them
        known = {v.name for v in self.variables}
        for v in (*milp.keep.values(), *milp.recompute.values(), *milp.variant.values(),
                  *(a.var for a in milp.aux)):
            if v.name not in known:  # in no row (kept for completeness), or no constraint
                known.add(v.name)
                self.variables.append(v)
        self.names = [v.name for v in self.variables]
        self.index = {n: i for i, n in enumerate(self.names)}
        self._keep = [(k, s, self.index[v.name]) for (k, s), v in milp.keep.items()]
        self._recompute = [(k, o, self.index[v.name]) for (k, o), v in milp.recompute.items()]
        self._variant = [(e, name, self.index[v.name]) for (e, name), v in milp.variant.items()]
        objective = milp.problem.objective
        self.objective_constant = objective.constant
        self.objective = np.zeros(len(self.variables))
        for var, c in objective.items():
            self.objective[self.index[var.name]] += c
        self.rows = SparseAffine.of(milp.memory_rows, self.index)
        self.peak_column = self.index[milp.peak.name] if milp.peak is not None else None
        # Auxiliaries by dependency level: level 0 reads no auxiliary, level n only those of
        # lower levels, so each level is one sparse product.
        level: dict[str, int] = {}
        for a in milp.aux:
            level[a.var.name] = 1 + max((level.get(v.name, -1) for expr in a.lower
                                         for v in expr.keys()), default=-1)
        self._aux_levels: list[tuple[np.ndarray, np.ndarray, SparseAffine]] = []
        for lv in range(max(level.values(), default=-1) + 1):
            members = [a for a in milp.aux if level[a.var.name] == lv]
            expressions = [e for a in members for e in a.lower]
            owner = np.asarray([i for i, a in enumerate(members) for _ in a.lower],
                               dtype=np.int64)
            columns = np.asarray([self.index[a.var.name] for a in members], dtype=np.int64)
            self._aux_levels.append((columns, owner, SparseAffine.of(expressions, self.index)))

    def values(self, decisions: Decisions) -> np.ndarray:
        """Every variable's value at ``decisions`` (auxiliaries at their least, the peak
        variable at the largest row in MiB)."""
        x = np.zeros(len(self.variables))
        for k, s, i in self._keep:
            if s in decisions.keep[k]:
                x[i] = 1.0
        for k, o, i in self._recompute:
            if o in decisions.recompute[k]:
                x[i] = 1.0
        for e, name, i in self._variant:
            if decisions.variants.get(e) == name:
                x[i] = 1.0
        for columns, owner, expressions in self._aux_levels:
            largest = np.zeros(len(columns))
            np.maximum.at(largest, owner, expressions.evaluate(x))
            x[columns] = largest
        if self.peak_column is not None:
            x[self.peak_column] = self.largest_row(x) * MIB_SCALE
        return x

    def held_auxiliaries(self, held: np.ndarray) -> np.ndarray:
        """``held`` (a mask over ``variables``: the columns a window holds at their value,
        no auxiliary among them) with the auxiliaries added whose every lower expression
        reads only held columns: their least value (``values``'s) is then their best, as
        memory rows only grow with them and the objective does not read them. A window's
        model shrinks to its own rows by them (``planner.window_model``): on GoogLeNet half
        the columns are auxiliaries."""
        held = held.copy()
        for columns, owner, expressions in self._aux_levels:
            reads_free = np.bincount(expressions.row, weights=~held[expressions.column],
                                     minlength=len(expressions.constant)) > 0
            changes = np.zeros(len(columns), dtype=bool)
            np.logical_or.at(changes, owner, reads_free)
            held[columns] = ~changes
        return held

    def objective_of(self, x: np.ndarray) -> float:
        return float(self.objective_constant + self.objective @ x)

    def largest_row(self, x: np.ndarray) -> int:
        """The largest memory row at ``x``, in bytes (0 if every row is below)."""
        if not len(self.rows.constant):
            return 0
        return max(0, int(np.max(np.rint(self.rows.evaluate(x)))))
