"""Merging the changes two window searches made to the same plan.

With the full-MILP worker searching windows too (``planner.full_worker``), each side
improves its own copy of the plan; each sends its plan with its *base*, the plan its own
changes started from. The receiver applies those changes to its plan rather than choosing
one plan or the other, so neither side's improvements are lost. A merged plan is only a
candidate: ``merged_point`` returns it only if it keeps every row of the MILP, the budget
in bytes, and beats the incumbent.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .schedule import Decisions

if TYPE_CHECKING:
    from .formulation import StageMILP
    from .window_highs import PersistentHiGHS


def _merged_sets(target: list[set[int]], base: list[set[int]], changed: list[set[int]]
                 ) -> list[set[int]]:
    return [(t - (b - c)) | (c - b) for t, b, c in zip(target, base, changed)]


def merged_decisions(target: Decisions, base: Decisions, changed: Decisions) -> Decisions:
    """``target`` with the changes that took ``base`` to ``changed``: every keep,
    recomputation and variant choice that differs between ``base`` and ``changed`` takes
    ``changed``'s value, every other keeps ``target``'s."""
    if not len(target.keep) == len(base.keep) == len(changed.keep):
        raise ValueError("plans of different stage counts cannot be merged")
    variants = dict(target.variants)
    for site in base.variants.keys() | changed.variants.keys():
        if base.variants.get(site) != changed.variants.get(site):
            if site in changed.variants:
                variants[site] = changed.variants[site]
            else:
                variants.pop(site, None)
    return Decisions(keep=_merged_sets(target.keep, base.keep, changed.keep),
                     recompute=_merged_sets(target.recompute, base.recompute,
                                            changed.recompute),
                     variants=variants, in_place=target.in_place)


def merged_point(milp: "StageMILP", model: "PersistentHiGHS", target: Decisions,
                 base: Decisions, changed: Decisions, incumbent: float | None
                 ) -> Decisions | None:
    """``merged_decisions(target, base, changed)`` if it is a point of ``milp`` that keeps
    every row of ``model`` (``milp``'s HiGHS model) and the budget in bytes and has an
    objective below ``incumbent`` (``StageMILP.improves``); else None."""
    merged = merged_decisions(target, base, replace(changed, in_place=target.in_place))
    if not milp.represents(merged):
        return None
    x = milp.vectors.values(merged)
    if not model.keeps_rows(x[:milp.vectors.columns]) or not milp.improves(x, incumbent):
        return None
    return merged
