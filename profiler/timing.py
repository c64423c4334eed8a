"""Per-node time of a captured joint graph: measured on the device, or estimated from FLOPs.

Alias nodes (views, getitems, detach) cost nothing and get time 0, so that re-deriving a
view in the backward never changes a plan's predicted time.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from . import attention_ops, batch_norm_kernels, variant_ops
from .capture import CapturedGraph
from .ir import BUFFER, INPUT, PARAM, TANGENT

log = logging.getLogger(__name__)
aten = torch.ops.aten


@dataclass(frozen=True)
class DeviceModel:
    """A roofline for estimating times: peak FLOP/s, memory bandwidth, per-op overhead."""

    flops_per_s: float
    bytes_per_s: float
    overhead_s: float


# Conservative figures; only the ratios between ops matter to the planner.
DEVICE_MODELS = {
    "cpu": DeviceModel(flops_per_s=50e9, bytes_per_s=10e9, overhead_s=5e-6),
    "cuda": DeviceModel(flops_per_s=50e12, bytes_per_s=2.5e12, overhead_s=5e-6),
}


def _is_variant_op(target: object) -> bool:
    """A function of ``profiler.variant_ops`` or ``profiler.batch_norm_kernels``: its aten
    calls are counted like any op's."""
    return getattr(target, "__module__", None) in (variant_ops.__name__,
                                                   batch_norm_kernels.__name__,
                                                   attention_ops.__name__)


def _cpu_attention_flops(target: object, args: Sequence[Any]) -> int | None:
    """FLOPs of the CPU flash attention forward and backward, which
    ``torch.utils.flop_counter`` counts as zero: those of the CUDA kernels' formulas (the
    backward recomputes the scores: five matmuls)."""
    if target is aten._scaled_dot_product_flash_attention_for_cpu.default:
        return sdpa_flop_count(*(a.shape for a in args[:3]))
    if target is aten._scaled_dot_product_flash_attention_for_cpu_backward.default:
        return sdpa_backward_flop_count(*(a.shape for a in args[:4]))
    return None


def count_flops(captured: CapturedGraph) -> list[int]:
    """FLOPs of every node, from torch.utils.flop_counter run on the fake tensors."""
    flops = [0] * len(captured.nodes)
    fake_mode = None
    for n in captured.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and hasattr(val, "fake_mode"):
            fake_mode = val.fake_mode
            break
    for n, r in zip(captured.nodes, captured.records):
        if n.op != "call_function" or r.is_alias or not (
                isinstance(n.target, torch._ops.OpOverload) or _is_variant_op(n.target)):
            continue
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta.get("val"))
        attention = _cpu_attention_flops(n.target, args)
        if attention is not None:
            flops[r.index] = attention
            continue
        counter = FlopCounterMode(display=False)
        try:
            with fake_mode, counter:
                n.target(*args, **kwargs)
        except Exception:  # an op fake tensors cannot run: count it as memory-bound only
            log.debug("no FLOP count for %s", n.name)
            continue
        flops[r.index] = int(counter.get_total_flops())
    return flops


def estimate_times(captured: CapturedGraph, device: str) -> list[float]:
    """Roofline time of every node: max(FLOPs / peak, bytes moved / bandwidth) + overhead."""
    model = DEVICE_MODELS["cuda" if device.startswith("cuda") else "cpu"]
    flops = count_flops(captured)
    times = []
    for r in captured.records:
        if r.role in (PARAM, BUFFER, INPUT, TANGENT) or r.is_alias:
            times.append(0.0)
            continue
        moved = sum(captured.storage_bytes[s] for s in r.new_storages)
        moved += sum(captured.storage_bytes[s] for i in r.inputs
                     for s in captured.records[i].storages)
        moved += 2 * r.workspace_bytes  # temporaries are written once and read once
        times.append(max(flops[r.index] / model.flops_per_s, moved / model.bytes_per_s)
                     + model.overhead_s)
    for r, f in zip(captured.records, flops):
        r.flops = f
    return times


def bind_inputs(captured: CapturedGraph, model: torch.nn.Module,
                inputs: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Real tensors for the graph's placeholders (tangents are made of ones)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    env: dict[int, torch.Tensor] = {}
    for n, r in zip(captured.nodes, captured.records):
        if r.role == PARAM:
            env[r.index] = params[r.desc]
        elif r.role == BUFFER:
            env[r.index] = buffers[r.desc]
        elif r.role == INPUT:
            env[r.index] = inputs[int(r.desc)]
    return env


@dataclass
class NodeMeasurements:
    """What running every node on the real tensors gave: median seconds per node, and the
    workspace bytes per node (temporaries beyond its outputs)."""

    times: list[float]
    workspace: list[int] | None = None


def measure_times(captured: CapturedGraph, model: torch.nn.Module,
                  inputs: Sequence[torch.Tensor], repeats: int = 5,
                  warmup: int | None = None) -> list[float]:
    """Median wall time of every node (see ``measure_nodes``)."""
    return measure_nodes(captured, model, inputs, repeats, warmup).times


def measure_nodes(captured: CapturedGraph, model: torch.nn.Module,
                  inputs: Sequence[torch.Tensor], repeats: int = 5,
                  warmup: int | None = None) -> NodeMeasurements:
    """Run the joint graph on the real tensors ``warmup + repeats`` times and time every node.

    Each node's time is the median over the ``repeats`` runs after ``warmup`` ones (default
    2 on CUDA, so that cuDNN's benchmark search and lazy library initialisation fall in the
    warm-up, and 1 on the CPU). On CUDA each node is timed with CUDA events around its call,
    read after one synchronisation per run: nodes queue behind each other as in a training
    step, so a node's time is what it adds to a pipelined step (its kernels, or its launch
    where the GPU waits for the CPU). A synchronisation after every node would add each
    kernel's launch latency: on the H200, ResNet-50's node times then summed to 124 ms
    against an 86 ms eager step. Its workspace is read from the allocator's statistics
    (kept on the host, so no synchronisation is needed): the peak of
    ``torch.cuda.max_memory_allocated`` while the node runs, less what is allocated once it
    has returned (the bytes live before it plus its outputs); the largest over the timed
    runs. On the CPU nodes are timed with a monotonic clock, and the workspace is the peak
    of the storages the ATen calls inside the node create (a composite op's temporaries,
    as ``MemTracker`` sees them), less those still alive once it has returned.
    Values are dropped after their last reader, so the run holds no more than the graph
    needs. The global RNG state is restored afterwards, and buffers are not updated (the
    graph is functional).
    """
    device = next(iter(model.parameters())).device
    cuda = device.type == "cuda"
    warmup = (2 if cuda else 1) if warmup is None else warmup
    last_use = _last_readers(captured)
    samples: list[list[float]] = [[] for _ in captured.records]
    workspace = [0] * len(captured.records)
    with torch.random.fork_rng(devices=[device] if cuda else []), torch.no_grad():
        for rep in range(warmup + repeats):
            pending: list[tuple[int, Any]] = []  # CUDA: (node, (start, end) events)
            env = bind_inputs(captured, model, inputs)
            for n, r in zip(captured.nodes, captured.records):
                if r.role == TANGENT:
                    val = n.meta["val"]
                    env[r.index] = torch.ones(val.shape, dtype=val.dtype, device=device)
                    continue
                if n.op == "get_attr":  # a lifted tensor constant
                    value = n.graph.owning_module
                    for part in n.target.split("."):
                        value = getattr(value, part)
                    env[r.index] = value
                    continue
                if n.op != "call_function":
                    continue
                args, kwargs = fx.node.map_arg((n.args, n.kwargs),
                                               lambda a: env[a.meta["monet_index"]])
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                    elapsed = _time_call(n.target, args, kwargs, cuda, env, r.index)
                    extra = torch.cuda.max_memory_allocated(device) - \
                        torch.cuda.memory_allocated(device)
                elif rep == 0:  # in the warm-up: the tracking mode slows every call
                    with _TemporaryBytes(args, kwargs) as tracked:
                        elapsed = _time_call(n.target, args, kwargs, cuda, env, r.index)
                    extra = tracked.workspace()
                    workspace[r.index] = extra
                else:
                    elapsed, extra = _time_call(n.target, args, kwargs, cuda, env, r.index), 0
                if rep >= warmup:
                    if cuda:
                        pending.append((r.index, elapsed))
                    else:
                        samples[r.index].append(elapsed)
                    workspace[r.index] = max(workspace[r.index], extra)
                del args, kwargs
                for i in last_use[r.index]:
                    env.pop(i, None)
            if pending:  # one synchronisation per run: the nodes run as a step runs them
                torch.cuda.synchronize(device)
                for index, (start, end) in pending:
                    samples[index].append(start.elapsed_time(end) / 1e3)
    times = [0.0 if (not s or r.is_alias) else statistics.median(s)
             for s, r in zip(samples, captured.records)]
    return NodeMeasurements(times, workspace)


class _TemporaryBytes(TorchDispatchMode):
    """The storages the ATen calls made while active create (not the inputs'): their peak
    total, and the bytes still alive at the end. A CPU stand-in for the CUDA allocator's
    statistics; like ``MemTracker`` it sees the calls a composite op makes, not the
    buffers a single kernel allocates privately."""

    def __init__(self, args: Any, kwargs: Any):
        super().__init__()
        self.before = {t.untyped_storage().data_ptr()
                       for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.created: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def _live(self) -> int:
        return sum(n for ref, n in self.created.values() if not ref.expired())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            known = self.created.get(key)
            if key in self.before or (known is not None and not known[0].expired()):
                continue
            self.created[key] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, self._live())
        return out

    def workspace(self) -> int:
        """Peak bytes created beyond those alive at the end (the node's outputs)."""
        return max(0, self.peak - self._live())


def _last_readers(captured: CapturedGraph) -> list[list[int]]:
    """Per node: the computed values whose last reader it is (or, for a value no node
    reads, the node itself), to be dropped once it has run. Placeholders stay."""
    last = {r.index: r.index for r in captured.records if r.role not in
            (PARAM, BUFFER, INPUT)}
    for r in captured.records:
        for i in r.inputs:
            if i in last:
                last[i] = max(last[i], r.index)
    drop: list[list[int]] = [[] for _ in captured.records]
    for value, reader in last.items():
        drop[reader].append(value)
    return drop


def _time_call(fn: Callable, args, kwargs, cuda: bool, env: dict, index: int) -> Any:
    """Run a node into ``env``: seconds on the CPU; on CUDA its (start, end) events, read
    once the run has been synchronised."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        env[index] = fn(*args, **kwargs)
        end.record()
        return start, end
    t0 = time.perf_counter()
    env[index] = fn(*args, **kwargs)
    return time.perf_counter() - t0
