"""Training batch norms on CUDA through cuDNN, where eager PyTorch uses cuDNN.

AOTAutograd's joint graph writes every training batch norm as
``aten._native_batch_norm_legit_functional`` and its backward as
``aten.native_batch_norm_backward``: ATen's own CUDA kernels. Eager PyTorch picks cuDNN's
kernels instead wherever ``torch._C._select_batch_norm_backend`` says so (float32 or half
inputs with float weights, cuDNN enabled, ...). On an H200, ResNet-50 (184) spent 51 ms of
its step in the native kernels, more than in all its convolutions
(``bench/results/compare_h200/README.md``).

:func:`route_batch_norm_to_cudnn` retargets the batch-norm nodes of a graph captured on CUDA
to :func:`batch_norm_training` and :func:`batch_norm_backward`. Each decides at run time,
from the real tensors and with ATen's own selection function, whether eager would run cuDNN
here; if so, and if cuDNN needs no reserve buffer between the forward and the backward
(contiguous inputs: ``CUDNN_BATCHNORM_SPATIAL``), it runs cuDNN, otherwise the native
kernel. The outputs keep the functional op's structure (output, batch mean, batch inverse
std, new running mean, new running variance), so memory accounting and every variant that
reads them are unchanged; cuDNN's saved "variance" is the inverse std the native backward
expects. Graphs captured on the CPU are never retargeted (their hashes and committed
profiles stay as they are).
"""
from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch import Tensor

log = logging.getLogger(__name__)
aten = torch.ops.aten


_CHOICES: dict[tuple, bool] = {}  # what decides the backend -> whether cuDNN applies


def _cudnn_applies(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                   running_mean: Tensor | None, running_var: Tensor | None,
                   eps: float) -> bool:
    """Whether eager would run this training batch norm through cuDNN, with no reserve
    buffer to carry to the backward. ATen's choice depends only on the tensors' metadata
    and cuDNN's global flags; it is cached on them, because asking cuDNN for the reserve
    size builds descriptors on every call (the GPU otherwise waits on these calls where a
    plan runs many short recomputed batch norms)."""
    if not x.is_cuda or weight is None or bias is None or \
            isinstance(x, torch._subclasses.FakeTensor):
        return False
    key = (tuple(x.shape), x.stride(), x.dtype, x.device, weight.dtype, bias.dtype,
           running_mean is None, running_var is None, eps, torch.backends.cudnn.enabled)
    choice = _CHOICES.get(key)
    if choice is None:
        backend = torch._C._select_batch_norm_backend(
            x, weight, bias, running_mean, running_var, True, eps)
        choice = _CHOICES[key] = backend == torch._C._BatchNormBackend.Cudnn and \
            torch._C._get_cudnn_batch_norm_reserve_space_size(x, True) == 0
    return choice


def batch_norm_training(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                        running_mean: Tensor, running_var: Tensor, training: bool,
                        momentum: float, eps: float
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``aten._native_batch_norm_legit_functional`` through cuDNN where eager uses it."""
    if not training or not _cudnn_applies(x, weight, bias, running_mean, running_var, eps):
        return aten._native_batch_norm_legit_functional.default(
            x, weight, bias, running_mean, running_var, training, momentum, eps)
    new_mean, new_var = running_mean.clone(), running_var.clone()
    out, save_mean, save_invstd, _ = aten.cudnn_batch_norm.default(
        x.contiguous(), weight, bias, new_mean, new_var, True, momentum, eps)
    return out, save_mean, save_invstd, new_mean, new_var


def batch_norm_into(x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    running_mean: Tensor, running_var: Tensor, training: bool,
                    momentum: float, eps: float
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``aten._native_batch_norm_legit_functional`` with its output written over ``x``
    (``planner.in_place``): ATen's ``native_batch_norm.out`` computes the batch statistics
    before it writes any element, and each output element from its own input element. The
    same kernel as the functional op on the CPU (bit-identical); on CUDA it is ATen's, where
    eager runs cuDNN's (:func:`batch_norm_training`)."""
    new_mean, new_var = running_mean.clone(), running_var.clone()
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    out, save_mean, save_invstd = aten.native_batch_norm.out(
        x, weight, bias, new_mean, new_var, training, momentum, eps, out=x,
        save_mean=x.new_empty(0, dtype=acc), save_invstd=x.new_empty(0, dtype=acc))
    return out, save_mean, save_invstd, new_mean, new_var


def batch_norm_backward(grad: Tensor, x: Tensor, weight: Tensor | None,
                        running_mean: Tensor | None, running_var: Tensor | None,
                        save_mean: Tensor, save_invstd: Tensor, train: bool, eps: float,
                        output_mask: list[bool]
                        ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``aten.native_batch_norm_backward`` through cuDNN where eager uses it (training mode,
    all three gradients wanted)."""
    bias = weight  # only its presence matters to the backend choice
    if not (train and all(output_mask)) or \
            not _cudnn_applies(x, weight, bias, running_mean, running_var, eps):
        return aten.native_batch_norm_backward.default(
            grad, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps,
            output_mask)
    empty = torch.empty(0, dtype=torch.uint8, device=x.device)
    return aten.cudnn_batch_norm_backward.default(
        x.contiguous(), grad.contiguous(), weight, running_mean, running_var, save_mean,
        save_invstd, eps, empty)


_ROUTES = {
    aten._native_batch_norm_legit_functional.default: batch_norm_training,
    aten.native_batch_norm_backward.default: batch_norm_backward,
}


def _on_cuda(node: fx.Node) -> bool:
    val = node.meta.get("val")
    first = val[0] if isinstance(val, (tuple, list)) else val
    return isinstance(first, Tensor) and first.device.type == "cuda"


def route_batch_norm_to_cudnn(gm: fx.GraphModule) -> int:
    """Retarget the training batch norms of a graph captured on CUDA to the functions above.
    Returns the number of nodes retargeted (0 for a CPU graph)."""
    count = 0
    for node in gm.graph.nodes:
        route = _ROUTES.get(node.target) if node.op == "call_function" else None
        if route is not None and _on_cuda(node):
            node.target = route
            count += 1
    if count:
        gm.recompile()
        log.info("routed %d batch-norm nodes through cuDNN where eager uses it", count)
    return count
