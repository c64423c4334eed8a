"""Build a Profile: capture the joint graph and time every node."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from .capture import CapturedGraph, capture
from .ir import Profile
from .out_overloads import pointwise_out_table
from .timing import estimate_times, measure_nodes

log = logging.getLogger(__name__)


def device_name(device: torch.device | str) -> str:
    """A human-readable device name: the GPU's product name, or ``cpu``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def profile_model(model: torch.nn.Module, inputs: Sequence[torch.Tensor], name: str = "",
                  estimate: bool = False, repeats: int = 5,
                  autocast: torch.dtype | str | None = None,
                  rewrite_backward: bool = True) -> Profile:
    """Capture ``model`` on ``inputs`` and time every node (measured unless ``estimate``).
    With ``autocast`` (``torch.bfloat16``, ``"bf16"``, ...) the training step is captured
    under ``torch.autocast`` with that dtype. ``rewrite_backward`` as in ``capture``."""
    captured = capture(model, inputs, autocast=autocast, rewrite_backward=rewrite_backward)
    return profile_captured(captured, model, inputs, name, estimate, repeats)


def profile_captured(captured: CapturedGraph, model: torch.nn.Module,
                     inputs: Sequence[torch.Tensor], name: str = "",
                     estimate: bool = False, repeats: int = 5) -> Profile:
    """Time the nodes of an already captured graph and return its Profile."""
    dev = next(iter(model.parameters())).device
    estimated = estimate_times(captured, dev.type)  # also fills in FLOPs
    measured = None if estimate else measure_nodes(captured, model, inputs, repeats)
    times = estimated if measured is None else measured.times
    for r, t in zip(captured.records, times):
        r.time_s = float(t)
    if measured is not None and measured.workspace is not None:
        # On CUDA: the allocator's measured workspace, or a variant's declared one if larger.
        for r, w in zip(captured.records, measured.workspace):
            r.workspace_bytes = max(r.workspace_bytes, int(w))
    log.info("profiled %s: %d nodes, %s times", name, len(captured.records),
             "estimated" if estimate else "measured")
    return Profile(
        graph_hash=captured.graph_hash, model=name, device=dev.type, device_name=device_name(dev),
        dtype=captured.dtype, torch_version=torch.__version__.split("+")[0],
        input_shapes=captured.input_shapes, input_dtypes=captured.input_dtypes,
        timing="estimated" if estimate else "measured", nodes=captured.records,
        storage_bytes=captured.storage_bytes, outputs=captured.outputs,
        autocast=captured.autocast,
        pointwise_out=pointwise_out_table(captured.records))
