"""planner.lp_terms builds the rows PuLP's operators would, without their copies."""
import gc

import pulp
import pytest

from planner.lp_terms import add_constraint, gc_paused, linear, plus, terms_of


def _same(a: pulp.LpConstraint, b: pulp.LpConstraint) -> None:
    assert a.sense == b.sense
    assert float(a.constant) == float(b.constant)
    assert {v.name: float(c) for v, c in a.items()} == {v.name: float(c) for v, c in b.items()}


def test_constraints_match_the_operators():
    x, y, z = (pulp.LpVariable(n, cat="Binary") for n in "xyz")
    by_operator = pulp.LpProblem("operators", pulp.LpMinimize)
    by_terms = pulp.LpProblem("terms", pulp.LpMinimize)
    row = linear([(x, 3.0), (y, 5.0), (x, 2.0)], constant=7.0)  # x repeated: 5x
    assert row[x] == 5.0
    cases = [
        ("ge_one", x + y >= 1, [(x, 1), (y, 1)], pulp.LpConstraintGE, -1),
        ("ge_var", x + y >= z, [(x, 1), (y, 1), (z, -1)], pulp.LpConstraintGE, 0),
        ("le_sum", z <= x + y, [(z, 1), (x, -1), (y, -1)], pulp.LpConstraintLE, 0),
        ("scaled", row * 0.5 <= 9 * 0.5, terms_of(row, 0.5), pulp.LpConstraintLE,
         row.constant * 0.5 - 9 * 0.5),
        ("aux", z >= x + y - 1, [(z, 1), *terms_of(plus(linear([(x, 1)]), [(y, 1)], -1), -1)],
         pulp.LpConstraintGE, 0 - (-1)),
    ]
    for name, operator_built, terms, sense, constant in cases:
        by_operator += operator_built, name
        add_constraint(by_terms, name, terms, sense, constant)
        _same(by_operator.constraints[name], by_terms.constraints[name])


def test_plus_leaves_its_expression_alone():
    x, y = pulp.LpVariable("x"), pulp.LpVariable("y")
    base = linear([(x, 1)], constant=1)
    out = plus(base, [(y, 2), (x, 1)], -1)
    assert dict(base) == {x: 1} and base.constant == 1
    assert dict(out) == {x: 2, y: 2} and out.constant == 0


def test_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("build failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
