"""Measure a training step of ``bench/compare.py``: peak memory and median time.

A step is ``loss = module(x, target); loss.backward()`` with the gradients set to None
before it (no optimizer step). On CUDA the peak is ``torch.cuda.max_memory_allocated()``
over one step after warm-up, parameters and input included (the counter is reset, and the
allocator's cache emptied, before the step), with ``max_memory_reserved()`` beside it; the
time is the median of ``steps`` steps timed with CUDA events. On the CPU, which has no
allocator statistics, the peak comes from ``torch.distributed._tools.mem_tracker.MemTracker``
(a dispatch mode that counts live storages) and "reserved" equals it; times are wall
clock. CPU figures exercise the script; they are not the benchmark.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class Measurement:
    """What one method's steps gave."""

    peak_allocated: int
    peak_reserved: int
    step_s: float
    loss: float
    step_times_s: list[float] = field(default_factory=list)
    grads: list[torch.Tensor] | None = None  # on the CPU, float32, when asked for


def free_memory(device: torch.device) -> None:
    """Collect garbage and, on CUDA, empty the allocator's cache and reset its peaks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def resident_bytes(device: torch.device) -> int:
    """Bytes the allocator holds allocated now (CUDA), else 0."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def training_step(module: torch.nn.Module, inputs, autocast) -> torch.Tensor:
    """One forward and backward with fresh gradients; the loss, detached."""
    for p in module.parameters():
        p.grad = None
    with autocast:
        loss = module(*inputs)
    loss.backward()
    return loss.detach()


def _cpu_peak(module: torch.nn.Module, inputs, autocast) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker
    for p in module.parameters():
        p.grad = None
    gc.collect()
    tracker = MemTracker()
    tracker.track_external(module, *inputs)
    with tracker:
        training_step(module, inputs, autocast)
    snapshot = tracker.get_tracker_snapshot("peak")
    return int(sum(d["Total"] for d in snapshot.values()))


def measure_step(module: torch.nn.Module, inputs, device: torch.device,
                 autocast: contextlib.AbstractContextManager | None = None,
                 warmup: int = 3, steps: int = 10, keep_grads: bool = False,
                 seed: int = 0) -> Measurement:
    """Warm up, measure the peak of one step, then time ``steps`` steps (see module doc).

    ``autocast`` is a reusable context manager (``torch.autocast`` objects are) or None.
    """
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    for _ in range(warmup):
        training_step(module, inputs, autocast)
    # The peak step, from a clean counter (the warm-up's gradients are dropped first).
    for p in module.parameters():
        p.grad = None
    if cuda:
        free_memory(device)
        torch.manual_seed(seed)
        loss = training_step(module, inputs, autocast)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        reserved = torch.cuda.max_memory_reserved(device)
    else:
        torch.manual_seed(seed)
        peak = _cpu_peak(module, inputs, autocast)
        reserved = peak
        torch.manual_seed(seed)
        loss = training_step(module, inputs, autocast)
    grads = None
    if keep_grads:
        grads = [torch.zeros(p.shape) if p.grad is None else p.grad.detach().float().cpu()
                 for p in module.parameters()]
    times = []
    for _ in range(steps):
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            training_step(module, inputs, autocast)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            training_step(module, inputs, autocast)
            times.append(time.perf_counter() - t0)
    for p in module.parameters():
        p.grad = None
    return Measurement(peak_allocated=int(peak), peak_reserved=int(reserved),
                       step_s=statistics.median(times), loss=float(loss),
                       step_times_s=times, grads=grads)


def grad_difference(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest absolute difference of any gradient entry from the reference's, relative to
    the largest reference entry of the same parameter, or to 1e-3 of the largest entry of
    any parameter where that is larger: max over parameters.

    The floor matters where a gradient is zero in exact arithmetic and only rounding noise
    in float32: a batch norm's bias followed by a convolution and another batch norm
    (MobileNet-V2's linear bottlenecks) gets about 4e-7 against 2.5 for its weight, so any
    change of summation order reads as a 100 % difference without it.
    """
    largest = max((float(r.abs().max()) for r in reference if r.numel()), default=0.0)
    worst = 0.0
    for g, r in zip(grads, reference):
        scale = max(float(r.abs().max()) if r.numel() else 0.0, 1e-3 * largest) or 1.0
        worst = max(worst, float((g - r).abs().max()) / scale)
    return worst
