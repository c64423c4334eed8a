"""Forward ops that write their value into the storage of an input nothing reads later.

An element-wise op (ATen's ``torch.Tag.pointwise``: ReLU, the residual addition, GELU,
...) or a softmax (a GPT's log-softmax over its logits) whose output has the shape and
dtype of one of its inputs can write its value over that input when no later op of the
schedule reads it and the plan keeps no copy of it; ATen's ``out=`` overload of the op
then runs the same kernel on the same elements, so the value is bit-identical. A training
batch norm normalises its input in place the same way (``native_batch_norm.out`` with the
input as ``out``: bit-identical on the CPU). Not on CUDA: there the graph's batch norms run
cuDNN (``profiler.batch_norm_kernels``), and on an H200 plans that wrote batch norms in place
(ATen's kernel forward, cuDNN's backward on its saved statistics) gave gradients 6.7-9 % off
eager's in deterministic mode, where the same plans without writes were bit-identical
(``bench/results/h200_2026-12-04/``).

Whether the input is dead depends on the plan: in the forward pass, when its last forward
reader is the op and it is not kept; in a stage's recompute phase, when it was recomputed
there, the op is its last recomputed reader, and the stage neither reads nor keeps it. A
write in place never costs memory or time, so a plan that allows it (``Decisions.in_place``)
uses it wherever the input is dead. The MILP's memory rows count it exactly (at the op's
row the input counts only if it lives on), the schedule marks those runs (``Step.into``),
the simulator frees the input's bytes as the op runs, and the executor calls the ``out=``
overload with the input as ``out``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from profiler.ir import FORWARD
from profiler.out_overloads import pointwise_out_overload

from .graph import GETITEM, VARIANT_MODES, PlannerGraph
from .lifetimes import storage_lifetimes

# Views that keep a contiguous tensor contiguous: writing over one writes the whole storage
# in its order.
WHOLE_VIEWS = ("aten.view.default", "aten._unsafe_view.default")
# Only the functional op: a graph captured on CUDA names its batch norms
# ``profiler.batch_norm_kernels.batch_norm_training``, which never writes in place (above).
BATCH_NORM_TARGETS = ("aten._native_batch_norm_legit_functional.default",)
# Softmaxes write their value over their input through ``out=`` as well: every row is
# reduced before any of its elements is written, and each element is written after its
# last read, so the value is bit-identical (tested for every dimension on the CPU). Only
# where the output has the input's layout and dtype (not ``half_to_float``).
SOFTMAX_OUT_OVERLOADS = {"aten._log_softmax.default": "_log_softmax.out",
                         "aten._softmax.default": "_softmax.out"}


@dataclass(frozen=True)
class InPlaceWrite:
    """Op ``op`` may write its value over the value of node ``input`` (storage ``storage``);
    ``exact``: the same kernel as the original op, so the same bits."""

    op: int
    input: int
    storage: int
    exact: bool


def allowed_writes(graph: PlannerGraph, mode: str) -> dict[int, InPlaceWrite]:
    """The writes in place a plan may use under ``mode`` (``Decisions.in_place``): ``all``,
    only the ``exact`` ones, or ``none``."""
    if mode not in VARIANT_MODES:
        raise ValueError(f"in_place must be one of {', '.join(VARIANT_MODES)}, not {mode!r}")
    if mode == "none":
        return {}
    writes = _writes(graph)
    return writes if mode == "all" else {o: w for o, w in writes.items() if w.exact}


def allows(mode: str, used: str) -> bool:
    """Whether a solve under variant ``mode`` may return a plan whose in-place mode is
    ``used`` (the modes are nested: none within exact within all)."""
    return VARIANT_MODES.index(used) >= VARIANT_MODES.index(mode)


def forward_storage_last_use(graph: PlannerGraph) -> dict[int, int]:
    """The last forward position at which any node referencing each storage is live: the
    same ``storage_lifetimes`` the MILP's forward rows use."""
    cached = getattr(graph, "_forward_storage_last_use", None)
    if cached is None:
        cached = storage_lifetimes(graph, graph.forward, graph.forward_last_use)[1]
        graph._forward_storage_last_use = cached  # type: ignore[attr-defined]
    return cached


def _writes(graph: PlannerGraph) -> dict[int, InPlaceWrite]:
    cached = getattr(graph, "_in_place_writes", None)
    if cached is None:
        cached = {}
        needed_later = set()  # storages some backward option reads
        for k in range(len(graph.stages)):
            needed_later |= graph.stage_need_storages_any(k)
        pos = {n: t for t, n in enumerate(graph.forward)}
        for o in graph.ops():
            w = _write_of(graph, o, pos[o], needed_later)
            if w is not None:
                cached[o] = w
        graph._in_place_writes = cached  # type: ignore[attr-defined]
    return cached


def _write_of(graph: PlannerGraph, o: int, pos: int, needed_later: set[int]
              ) -> InPlaceWrite | None:
    node = graph.nodes[o]
    if node.role != FORWARD or node.random or len(node.new_storages) < 1:
        return None
    if not node.strides:  # a profile from before strides were recorded
        return None
    if node.target in BATCH_NORM_TARGETS:
        candidates, exact = node.inputs[:1], False
        layout = (node.shape[0], node.strides[0], node.dtype)
    elif len(node.new_storages) == 1 and node.target in SOFTMAX_OUT_OVERLOADS:
        candidates, exact = node.inputs[:1], True
        layout = (node.shape, node.strides, node.dtype)
    elif len(node.new_storages) == 1 and _has_pointwise_out(graph, node.target):
        candidates, exact = list(dict.fromkeys(node.inputs)), True
        layout = (node.shape, node.strides, node.dtype)
    else:
        return None
    out = node.new_storages[0]
    eligible = [m for m in candidates if _overwritable(graph, m, layout, out)]
    if not eligible:
        return None
    # One input per op, fixed for every plan: first one no backward option reads (dead
    # after its last forward reader in any plan), then one this op reads last.
    last = forward_storage_last_use(graph)

    def rank(m: int) -> tuple[int, int, int]:
        s = graph.nodes[m].storages[0]
        return (s in needed_later, last.get(s, -1) != pos, eligible.index(m))

    m = min(eligible, key=rank)
    return InPlaceWrite(op=o, input=m, storage=graph.nodes[m].storages[0], exact=exact)


def _overwritable(graph: PlannerGraph, m: int, layout: tuple[Any, Any, str], out: int) -> bool:
    """Whether node m's value is a whole planned forward storage the op's output could
    take over: made by a forward op (itself or the tuple op it is an element of), of the
    output's ``layout`` (shape, strides, dtype: the op writes in the input's layout) and
    bytes."""
    node = graph.nodes[m]
    shape, _strides, dtype = layout
    if len(node.storages) != 1 or (node.shape, node.strides, node.dtype) != layout:
        return False
    s = node.storages[0]
    if s not in graph.creator or s in graph.pinned_storages or s in graph.constant_storages:
        return False
    creator = graph.creator[s]
    if graph.nodes[creator].role != FORWARD or graph.storage_bytes[s] != graph.storage_bytes[out]:
        return False
    if creator == m or (node.target == GETITEM and node.inputs[0] == creator):
        return True
    # A reshaping view of the whole storage (a linear layer's output seen as 3-D).
    return node.target in WHOLE_VIEWS and _numel(shape) * _itemsize(dtype) == \
        graph.storage_bytes[s]


def _numel(shape: list[int]) -> int:
    return functools.reduce(lambda a, b: a * b, shape, 1)


# Bytes per element of the dtypes profiles hold, so that the planner's solver process
# (planner.full_worker) needs no torch; any other dtype asks torch.
_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8,
             "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


@functools.lru_cache(maxsize=None)
def _itemsize(dtype: str) -> int:
    name = dtype.removeprefix("torch.")
    if name in _ITEMSIZE:
        return _ITEMSIZE[name]
    import torch

    return getattr(torch, name).itemsize


def _has_pointwise_out(graph: PlannerGraph, target: str) -> bool:
    known = graph.pointwise_out.get(target)
    return known if known is not None else pointwise_out_overload(target) is not None


def in_place_overload(target: str) -> Any:
    """The ``out=`` overload that runs forward op ``target`` over its input: a softmax's
    (``SOFTMAX_OUT_OVERLOADS``) or an element-wise op's; None for any other op."""
    if target in SOFTMAX_OUT_OVERLOADS:
        import torch

        packet, overload = SOFTMAX_OUT_OVERLOADS[target].split(".")
        return getattr(getattr(torch.ops.aten, packet), overload)
    return pointwise_out_overload(target)


def in_place_summary(graph: PlannerGraph, mode: str, steps: list[Any]) -> list[dict[str, Any]]:
    """Per kind of op (``aten.relu`` ...): how many ops may write in place under ``mode``,
    how many runs of the schedule's ``steps`` did (forward pass and recompute phases), and
    the bytes those runs did not allocate."""
    out: dict[str, dict[str, Any]] = {}

    def entry(o: int) -> dict[str, Any]:
        kind = ".".join(graph.nodes[o].target.split(".")[:2])
        return out.setdefault(kind, {"op": kind, "ops": 0, "forward_runs": 0,
                                     "recompute_runs": 0, "bytes": 0})

    for o in allowed_writes(graph, mode):
        entry(o)["ops"] += 1
    for step in steps:
        if step.kind == "run" and step.into >= 0:
            e = entry(step.node)
            e["forward_runs" if step.stage < 0 else "recompute_runs"] += 1
            e["bytes"] += graph.storage_bytes[graph.nodes[step.into].storages[0]]
    return sorted(out.values(), key=lambda e: -e["bytes"])
