"""A window solved as a model of its own (``planner.window_model``) against the whole
model with the same columns fixed: the same optimum, at every window of a sweep."""
import numpy as np
import pytest

from conftest import slowest_checkpoint_start
from planner import lns
from planner.window_highs import PersistentHiGHS, highs_status


@pytest.fixture(scope="module")
def resnet18_start():
    """ResNet-18's stage MILP at a budget its slowest structural checkpoint plan just fits,
    and that plan as a point of it."""
    _, graph, milp, _, start = slowest_checkpoint_start("resnet18")
    return graph, milp, start


def test_window_model_has_the_whole_models_optimum(resnet18_start):
    """Each 8-stage window of a sweep: the window's own model, with the auxiliaries its
    fixed columns alone set held too, reaches the optimum of the whole model with only the
    window's columns free (HiGHS on both, to a 1e-9 gap)."""
    graph, milp, start = resnet18_start
    vectors = milp.vectors
    x = vectors.values(start)
    first, last = lns._spans(milp, lns._stage_places(milp, graph))
    staged = last >= 0
    K = len(graph.stages)
    window = PersistentHiGHS(milp.problem, 1e-9, 1)
    whole = PersistentHiGHS(milp.problem, 1e-9, 1)
    compared = 0
    for lo in range(K - 8, -8, -8):
        outside = staged & ((last < lo) | (first >= lo + 8))
        held = vectors.held_auxiliaries(outside)
        assert (held >= outside).all() and held.sum() > outside.sum()
        start_values = x[:vectors.columns].tolist()
        status = window.solve({i: start_values[i] for i in np.flatnonzero(
            held[:vectors.columns])}, start_values, 60.0)
        found = vectors.objective_of(np.array([v.varValue for v in milp.problem.variables()]))
        whole._run({i: start_values[i] for i in np.flatnonzero(outside[:vectors.columns])},
                   start_values, 60.0)
        assert status == highs_status(whole.highs) == "optimal"
        assert found == pytest.approx(whole.highs.getInfo().objective_function_value,
                                      rel=1e-7, abs=1e-12)
        assert found <= vectors.objective_of(x) + 1e-12
        compared += 1
    assert compared >= 3
