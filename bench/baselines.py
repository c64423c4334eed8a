"""The benchmark models of ``bench/compare.py`` with their loss, and the methods our plans
are compared with: eager PyTorch, per-block ``torch.utils.checkpoint`` and ``torch.compile``
(default, and with ``torch._functorch.config.activation_memory_budget``).

Every method trains the same ``StepModule``: the model followed by its cross-entropy loss, so
that a step is ``StepModule(x, target).backward()`` and our plans plan the loss too (the GPT's
logits and their log-softmax are the largest tensors of its step).

Per-block checkpointing (DESIGN.md for ResNet, the GPT and MobileNet-V2; chosen here for the
others):

* ResNet-50: every bottleneck of ``layer1``..``layer4``.
* GPT: every transformer layer.
* MobileNet-V2: ``checkpoint_sequential`` over ``features`` with round(sqrt(19)) = 4 segments.
* VGG-16: each of the five convolution stages of ``features`` (convolutions, ReLUs and the
  closing max-pool), with the ReLUs made out-of-place: an in-place ReLU on a checkpointed
  segment's output fails, as DESIGN.md notes for ``checkpoint_sequential``.
* GoogLeNet: every Inception module (3a..5b); the stem and the auxiliary heads are not.
* U-Net: every double convolution (the five of the contracting path, the four of the
  expanding path).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.gpt import GPT  # noqa: E402
from examples.unet import UNet  # noqa: E402
from profiler.config import ModelConfig  # noqa: E402
from profiler.models import load_model  # noqa: E402

COMPILE_BUDGETS = (0.5, 0.2)  # activation_memory_budget of the compile baselines


@dataclass(frozen=True)
class BenchModel:
    """One benchmark: a configuration under configs/, its loss, a small CPU version."""

    key: str  # name in the results (``gpt_bf16`` is the GPT under bf16 autocast)
    config: str  # configs/<config>.yaml
    loss: str  # "class" (N x C logits), "token" (B x T x V), "pixel" (N x C x H x W)
    classes: int
    small: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]] = field(compare=False)
    autocast: torch.dtype | None = None


def _tv(name: str, batch: int, size: int) -> Callable:
    return lambda: load_model(f"torchvision:{name}", batch=batch, image_size=size)


def _small_gpt():
    torch.manual_seed(0)
    model = GPT(vocab=512, d=64, heads=4, layers=2, seq=64, dropout=0.0)
    return model.train(), (torch.randint(0, 512, (8, 64)),)


def _small_unet():
    torch.manual_seed(0)
    return UNet(width=8).train(), (torch.randn(1, 3, 64, 96),)


MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel("resnet50", "resnet50", "class", 1000, _tv("resnet50", 2, 64)),
    BenchModel("mobilenet_v2", "mobilenet_v2", "class", 1000, _tv("mobilenet_v2", 2, 64)),
    BenchModel("vgg16", "vgg16", "class", 1000, _tv("vgg16", 1, 32)),
    BenchModel("googlenet", "googlenet", "class", 1000, _tv("googlenet", 2, 64)),
    BenchModel("unet", "unet", "pixel", 2, _small_unet),
    BenchModel("gpt", "gpt", "token", 50257, _small_gpt),
    BenchModel("gpt_bf16", "gpt", "token", 50257, _small_gpt, autocast=torch.bfloat16),
)}


class StepModule(nn.Module):
    """``model`` followed by its cross-entropy loss: ``forward(x, target)`` is the loss.

    Auxiliary outputs (GoogLeNet's) add 0.3 times their loss, as torchvision trains it.
    """

    def __init__(self, model: nn.Module, loss: str):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        outs = list(out) if isinstance(out, tuple) else [out]
        total = None
        for i, logits in enumerate(outs):
            if self.loss == "token":
                value = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
            else:
                value = F.cross_entropy(logits.float(), target)
            value = value if i == 0 else 0.3 * value
            total = value if total is None else total + value
        # The step's output must not come from a multi-output op: nll_loss_forward also
        # returns the total weight the backward reads, and the planner cannot recompute an
        # op whose other output is the held user output (planner.graph.ops counts it as
        # recomputable). Multiplying by one gives the output a node of its own.
        return total * 1.0


def targets_for(bench: BenchModel, model_input: torch.Tensor, logits_classes: int,
                generator: torch.Generator) -> torch.Tensor:
    """Random labels for the loss: one per image, per token or per pixel."""
    if bench.loss == "token":
        shape = tuple(model_input.shape)
    elif bench.loss == "pixel":
        shape = (model_input.shape[0], *model_input.shape[2:])
    else:
        shape = (model_input.shape[0],)
    return torch.randint(0, logits_classes, shape, generator=generator)


def build(bench: BenchModel, small: bool, seed: int = 0, batch: int | None = None
          ) -> tuple[StepModule, tuple[torch.Tensor, torch.Tensor]]:
    """The step module (on the CPU, training mode) and its inputs ``(x, target)``; ``batch``
    replaces the config's batch size of an image model."""
    if small:
        model, inputs = bench.small()
    else:
        config = ModelConfig.load(os.path.join(ROOT, "configs", f"{bench.config}.yaml"))
        model, inputs = load_model(config.model, inputs=config.inputs,
                                   batch=batch or config.batch,
                                   image_size=config.image_size, seed=seed)
    classes = bench.classes
    if bench.loss == "token":
        classes = model.head.out_features
    elif bench.loss == "pixel":
        classes = model.head.out_channels
    generator = torch.Generator().manual_seed(seed + 1)
    target = targets_for(bench, inputs[0], classes, generator)
    return StepModule(model, bench.loss).train(), (inputs[0], target)


def autocast_context(bench: BenchModel, device: str) -> contextlib.AbstractContextManager:
    """The autocast region a step of ``bench`` runs in (a null context for float32)."""
    if bench.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=bench.autocast)


class Checkpointed(nn.Module):
    """Runs ``inner`` under non-reentrant ``torch.utils.checkpoint``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return checkpoint(self.inner, *args, use_reentrant=False, **kwargs)


class CheckpointedSequential(nn.Module):
    """``checkpoint_sequential`` over ``inner`` in ``segments`` segments."""

    def __init__(self, inner: nn.Sequential, segments: int):
        super().__init__()
        self.inner = inner
        self.segments = segments

    def forward(self, x):
        return checkpoint_sequential(self.inner, self.segments, x, use_reentrant=False)


def checkpointed(bench: BenchModel, step: StepModule) -> StepModule:
    """A copy of ``step`` with the blocks of the module docstring checkpointed."""
    step = copy.deepcopy(step)
    m = step.model
    name = bench.config
    if name == "resnet50":
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            for i in range(len(layer)):
                layer[i] = Checkpointed(layer[i])
    elif name == "gpt":
        for i in range(len(m.blocks)):
            m.blocks[i] = Checkpointed(m.blocks[i])
    elif name == "mobilenet_v2":
        m.features = CheckpointedSequential(m.features, round(math.sqrt(len(m.features))))
    elif name == "vgg16":
        layers, stages, current = list(m.features), [], []
        for layer in layers:
            if isinstance(layer, nn.ReLU):
                layer = nn.ReLU(inplace=False)
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                stages.append(Checkpointed(nn.Sequential(*current)))
                current = []
        m.features = nn.Sequential(*stages, *current)
    elif name == "googlenet":
        for child in [n for n, _ in m.named_children() if n.startswith("inception")]:
            setattr(m, child, Checkpointed(getattr(m, child)))
    elif name == "unet":
        for blocks in (m.down, m.merge):
            for i in range(len(blocks)):
                blocks[i] = Checkpointed(blocks[i])
    else:
        raise ValueError(f"no checkpoint blocks defined for {name}")
    return step


@contextlib.contextmanager
def compile_context(budget: float | None) -> Iterator[None]:
    """Inductor's settings for a compile baseline: ``activation_memory_budget`` set to
    ``budget`` (None: the default, 1.0) for as long as the module runs, so that a
    recompilation sees it too. Dynamo's caches are reset before and after."""
    import torch._dynamo
    import torch._functorch.config as functorch_config
    torch._dynamo.reset()
    patch = functorch_config.patch(activation_memory_budget=budget) if budget is not None \
        else contextlib.nullcontext()
    try:
        with patch:
            yield
    finally:
        torch._dynamo.reset()
