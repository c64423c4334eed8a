"""A window's MILP on its own: the free columns, the rows they meet, and the fixed columns'
share of those rows moved into the rows' bounds.

Re-solving the whole model with most columns fixed (``PersistentHiGHS.solve`` until
2026-12-06) made HiGHS read and presolve every row at every window: 0.4-0.5 s a window on
GoogLeNet's 80K rows with every column fixed, a third of an average window's 1.3 s, on a
machine at 0.5-0.8x the reference speed. The window's own model (a few thousand rows) is
cut out here with numpy instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RowMatrix:
    """A highspy model's rows, columns and costs as numpy arrays, read once; the matrix as
    coordinates in row order."""

    row: np.ndarray
    column: np.ndarray
    value: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    cost: np.ndarray
    offset: float
    integrality: list
    num_rows: int

    @classmethod
    def of(cls, highs) -> "RowMatrix":
        """Read ``highs``'s model (a minimisation)."""
        import highspy
        lp = highs.getLp()
        if lp.sense_ != highspy.ObjSense.kMinimize:
            raise ValueError("a window model needs a minimisation")
        matrix = lp.a_matrix_
        start = np.asarray(matrix.start_, dtype=np.int64)
        index = np.asarray(matrix.index_, dtype=np.int64)
        outer = np.repeat(np.arange(len(start) - 1), np.diff(start))
        row, column = (outer, index) if matrix.format_ == highspy.MatrixFormat.kRowwise \
            else (index, outer)
        order = np.argsort(row, kind="stable")
        return cls(row[order], column[order], np.asarray(matrix.value_)[order],
                   np.asarray(lp.row_lower_, dtype=np.float64),
                   np.asarray(lp.row_upper_, dtype=np.float64),
                   np.asarray(lp.col_cost_, dtype=np.float64), float(lp.offset_),
                   list(lp.integrality_), lp.num_row_)

    def keeps_rows(self, x: np.ndarray, tolerance: float = 1e-6) -> bool:
        """Whether the point ``x`` (every column) keeps every row within ``tolerance``."""
        activity = np.bincount(self.row, weights=self.value * x[self.column],
                               minlength=self.num_rows)
        return bool(np.all(activity >= self.row_lower - tolerance) and
                    np.all(activity <= self.row_upper + tolerance))

    def window(self, free: np.ndarray, x: np.ndarray, lower: np.ndarray, upper: np.ndarray):
        """The model of the columns where ``free`` is true, the others held at ``x``:
        (a highspy ``HighsLp``, the free columns' indices). Rows that meet no free column
        are left out (the caller's ``x`` satisfies them); the objective keeps the fixed
        columns' share as its offset, so that it is the whole model's."""
        import highspy
        columns = np.flatnonzero(free)
        free_entry = free[self.column]
        fixed_share = np.bincount(self.row[~free_entry],
                                  weights=self.value[~free_entry] * x[self.column[~free_entry]],
                                  minlength=self.num_rows)
        rows = np.unique(self.row[free_entry])
        new_row = np.full(self.num_rows, -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        new_column = np.full(len(free), -1, dtype=np.int64)
        new_column[columns] = np.arange(len(columns))
        entry_rows = new_row[self.row[free_entry]]  # in row order, as the entries are
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(columns), len(rows)
        lp.col_cost_ = self.cost[columns]
        lp.col_lower_, lp.col_upper_ = lower[columns], upper[columns]
        lp.row_lower_ = self.row_lower[rows] - fixed_share[rows]
        lp.row_upper_ = self.row_upper[rows] - fixed_share[rows]
        lp.offset_ = self.offset + float(self.cost[~free] @ x[~free])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = len(columns), len(rows)
        lp.a_matrix_.start_ = np.concatenate(
            ([0], np.cumsum(np.bincount(entry_rows, minlength=len(rows))))).astype(np.int32)
        lp.a_matrix_.index_ = new_column[self.column[free_entry]].astype(np.int32)
        lp.a_matrix_.value_ = self.value[free_entry]
        if self.integrality:
            lp.integrality_ = [self.integrality[i] for i in columns]
        return lp, columns
