"""Memory-saving alternative implementations of ATen backward ops.

Each function is a pure, module-level function of plain tensors and positional arguments, so
it can be inserted into a torch.fx joint graph as a ``call_function`` node. A variant keeps a
smaller tensor from the forward pass (a bit-packed mask, 1-byte max-pool offsets, or the
output instead of the input) and computes the same gradient as the original backward op.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .batch_norm_kernels import batch_norm_backward

aten = torch.ops.aten

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)
_ZERO_WEIGHT_MSG = ("the {}-from-output variant needs non-zero weights to recover its input; "
                    "re-solve the plan with --no-variants")


def _bit_weights(device: torch.device) -> Tensor:
    return torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device)


def pack_bits(mask: Tensor) -> Tensor:
    """Pack a bool tensor of any shape into ceil(numel/8) uint8 bytes (1-D, contiguous).

    Bit ``i`` of the flattened mask is stored in byte ``i // 8`` at bit position ``i % 8``.
    """
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return (flat.view(-1, 8) * _bit_weights(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: list[int]) -> Tensor:
    """Inverse of :func:`pack_bits`: a contiguous bool tensor of ``shape``."""
    numel = 1
    for size in shape:
        numel *= size
    bits = (packed.reshape(-1, 1) & _bit_weights(packed.device)) != 0
    return bits.reshape(-1)[:numel].reshape(shape).contiguous()


def _where_mask(grad: Tensor, packed: Tensor) -> Tensor:
    mask = unpack_bits(packed, list(grad.shape))
    return torch.where(mask, grad, grad.new_zeros(())).contiguous()


def relu_mask(out: Tensor) -> Tensor:
    """Packed bits of where ReLU passes the gradient: ``~(out <= 0)`` (NaN passes)."""
    return pack_bits(~(out <= 0))


def relu_backward_from_mask(grad: Tensor, packed: Tensor) -> Tensor:
    """``aten.threshold_backward(grad, out, 0)`` from ``relu_mask(out)``, bit-identical."""
    return _where_mask(grad, packed)


def hardtanh_mask(x: Tensor, min_val: float, max_val: float) -> Tensor:
    """Packed bits of where hardtanh passes the gradient: ``~(x <= min_val | x >= max_val)``."""
    return pack_bits(~((x <= min_val) | (x >= max_val)))


def hardtanh_backward_from_mask(grad: Tensor, packed: Tensor) -> Tensor:
    """``aten.hardtanh_backward(grad, x, min_val, max_val)`` from ``hardtanh_mask``."""
    return _where_mask(grad, packed)


def dropout_mask(mask: Tensor) -> Tensor:
    """Packed bits of the bool mask returned by ``aten.native_dropout``."""
    return pack_bits(mask)


def dropout_backward_from_bits(grad: Tensor, packed: Tensor, scale: float) -> Tensor:
    """``aten.native_dropout_backward(grad, mask, scale)`` from the packed mask."""
    mask = unpack_bits(packed, list(grad.shape))
    return aten.native_dropout_backward.default(grad, mask, scale)


def _check_weight(weight: Tensor | None, what: str) -> None:
    if weight is not None:
        torch._assert_async((weight != 0).all(), _ZERO_WEIGHT_MSG.format(what))


def _normalized_input(out: Tensor, weight: Tensor | None, bias: Tensor | None,
                      shape: list[int] | None) -> Tensor:
    """``(out - bias) / weight``: the normalised input, one temporary of ``out``'s size.
    ``shape`` views the per-channel weight and bias for broadcasting (None: as they are)."""
    def view(t: Tensor) -> Tensor:
        return t if shape is None else t.view(shape)
    x_hat = out.clone() if bias is None else out - view(bias)
    if weight is not None:
        x_hat.div_(view(weight))
    return x_hat


def batch_norm_backward_from_output(
    grad: Tensor, out: Tensor, weight: Tensor | None, bias: Tensor | None,
    running_mean: Tensor | None, running_var: Tensor | None, save_mean: Tensor,
    save_invstd: Tensor, train: bool, eps: float, output_mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``aten.native_batch_norm_backward`` from the output instead of the input.

    Channels are on dim 1 (NC, NCL, NCHW, ...). Only valid for ``train=True``, where
    ``save_mean`` and ``save_invstd`` are the batch statistics. The normalised input
    ``x_hat = (out - bias) / weight`` is rebuilt and passed to the aten backward as an input
    of mean 0 and inverse std 1, with ``weight * save_invstd`` as the weight: the aten
    formulas then give the original gradients without subtracting the mean back in (which
    would cost precision when the mean is large against the std). A zero weight makes
    ``x_hat`` unrecoverable, which raises (asynchronously on CUDA).
    """
    if not train:
        raise ValueError("batch_norm_backward_from_output needs train=True batch statistics")
    _check_weight(weight, "batch-norm")
    x_hat = _normalized_input(out, weight, bias, [1, -1] + [1] * (out.dim() - 2))
    scale = save_invstd if weight is None else weight * save_invstd
    return batch_norm_backward(
        grad, x_hat, scale, running_mean, running_var, torch.zeros_like(save_mean),
        torch.ones_like(save_invstd), train, eps, output_mask)


def layer_norm_backward_from_output(
    grad: Tensor, out: Tensor, normalized_shape: list[int], mean: Tensor, rstd: Tensor,
    weight: Tensor | None, bias: Tensor | None, output_mask: list[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``aten.native_layer_norm_backward`` from the output instead of the input.

    Rebuilds ``x_hat = (out - bias) / weight``, runs the aten backward on it as an input of
    mean 0 and rstd 1, and scales the input gradient by ``rstd`` (the only place rstd enters
    once the input is normalised). A zero weight makes ``x_hat`` unrecoverable, which
    raises (asynchronously on CUDA).
    """
    _check_weight(weight, "layer-norm")
    x_hat = _normalized_input(out, weight, bias, None)
    dx, dw, db = aten.native_layer_norm_backward.default(
        grad, x_hat, normalized_shape, torch.zeros_like(mean), torch.ones_like(rstd), weight,
        bias, output_mask)
    if dx is not None:
        dx = dx.mul_(rstd)
    return dx, dw, db


def _pool_params(kernel_size: list[int], stride: list[int], padding: list[int],
                 dilation: list[int]) -> tuple[int, int, int, int, int, int, int, int]:
    def pair(values: list[int], default: list[int]) -> tuple[int, int]:
        values = list(values) if len(values) else list(default)
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])

    kh, kw = pair(kernel_size, kernel_size)
    sh, sw = pair(stride, kernel_size)
    ph, pw = pair(padding, [0])
    dh, dw = pair(dilation, [1])
    return kh, kw, sh, sw, ph, pw, dh, dw


def _window_origin(out_hw: tuple[int, int], device: torch.device, sh: int, sw: int, ph: int,
                   pw: int) -> tuple[Tensor, Tensor]:
    oh = torch.arange(out_hw[0], device=device).view(-1, 1) * sh - ph
    ow = torch.arange(out_hw[1], device=device).view(1, -1) * sw - pw
    return oh, ow


def max_pool2d_compact_indices(indices: Tensor, input_hw: list[int], kernel_size: list[int],
                               stride: list[int], padding: list[int],
                               dilation: list[int]) -> Tensor:
    """Turn max_pool2d's int64 flat indices into uint8 window-local offsets ``kh*KW + kw``.

    ``indices`` has the output's shape, (N, C, OH, OW) or (C, OH, OW), and holds ``h*W + w``
    into each input plane; the result has the same shape, one byte per element.
    """
    kh, kw, sh, sw, ph, pw, dh, dw = _pool_params(kernel_size, stride, padding, dilation)
    if kh * kw > 256:
        raise ValueError(f"max-pool window {kh}x{kw} has more than 256 positions")
    width = input_hw[1]
    oh, ow = _window_origin((indices.shape[-2], indices.shape[-1]), indices.device,
                            sh, sw, ph, pw)
    off_h = torch.div(torch.div(indices, width, rounding_mode="floor") - oh, dh,
                      rounding_mode="floor")
    off_w = torch.div(torch.remainder(indices, width) - ow, dw, rounding_mode="floor")
    return (off_h * kw + off_w).to(torch.uint8).contiguous()


def max_pool2d_backward_from_compact(grad: Tensor, compact: Tensor, input_shape: list[int],
                                     kernel_size: list[int], stride: list[int],
                                     padding: list[int], dilation: list[int]) -> Tensor:
    """``aten.max_pool2d_with_indices_backward`` from :func:`max_pool2d_compact_indices`.

    Scatter-adds ``grad`` into zeros of ``input_shape`` (contiguous, grad's dtype). On the CPU
    the summation order per plane equals aten's (output positions in row-major order), so the
    result is bit-identical; on CUDA, overlapping windows may differ by float rounding.
    """
    kh, kw, sh, sw, ph, pw, dh, dw = _pool_params(kernel_size, stride, padding, dilation)
    height, width = input_shape[-2], input_shape[-1]
    planes = 1
    for size in input_shape[:-2]:
        planes *= size
    oh, ow = _window_origin((compact.shape[-2], compact.shape[-1]), compact.device,
                            sh, sw, ph, pw)
    offsets = compact.to(torch.int64)
    rows = oh + torch.div(offsets, kw, rounding_mode="floor") * dh
    cols = ow + torch.remainder(offsets, kw) * dw
    flat = (rows * width + cols).reshape(planes, -1)
    grad_input = grad.new_zeros((planes, height * width))
    grad_input.scatter_add_(1, flat, grad.reshape(planes, -1))
    return grad_input.view(input_shape)


def convolution_backward_input(
    grad: Tensor, weight: Tensor, input_size: list[int], input_dtype: torch.dtype,
    stride: list[int], padding: list[int], dilation: list[int], transposed: bool,
    output_padding: list[int], groups: int,
) -> Tensor:
    """The input gradient of ``aten.convolution_backward`` without the forward input.

    The input gradient depends on the input's shape only; a zero-stride stand-in of that
    shape (one element of memory) takes the input's place, so the input can be freed once
    the weight gradient has been computed. The same aten kernel runs with the same
    ``output_mask[0]``: bit-identical to the input gradient of the fused call.
    """
    stand_in = torch.empty((), dtype=input_dtype, device=grad.device).expand(input_size)
    return aten.convolution_backward.default(
        grad, stand_in, weight, None, stride, padding, dilation, transposed, output_padding,
        groups, [True, False, False])[0]


def add_into(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` written into ``a`` (whose value is dead): same result, no new tensor."""
    return a.add_(b)


def softmax_backward_into(grad: Tensor, out: Tensor, dim: int, input_dtype: torch.dtype,
                          log: bool, rows_per_chunk: int) -> Tensor:
    """``aten._log_softmax_backward_data`` (``log``) or ``aten._softmax_backward_data``
    written into ``grad`` (whose value is dead), ``rows_per_chunk`` rows at a time.

    ``dim`` is the last dimension, so rows are independent: each chunk runs the same aten
    kernel on its rows and is copied back over them, bit-identical to the whole call. The
    step holds one chunk (the kernel's result) instead of a second tensor of ``grad``'s
    size: for a GPT's cross-entropy over a 50257-token vocabulary, 1.5 GiB less.
    """
    kernel = aten._log_softmax_backward_data.default if log else \
        aten._softmax_backward_data.default
    flat_grad = grad.view(-1, grad.shape[-1])
    flat_out = out.view(-1, out.shape[-1])
    for start in range(0, flat_grad.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        flat_grad[rows] = kernel(flat_grad[rows], flat_out[rows], -1, input_dtype)
    return grad


def cross_entropy_backward_into(grad_loss: Tensor, log_probs: Tensor, target: Tensor,
                                weight: Tensor | None, reduction: int, ignore_index: int,
                                total_weight: Tensor, input_dtype: torch.dtype,
                                rows_per_chunk: int) -> Tensor:
    """A cross-entropy's backward, ``aten.nll_loss_backward`` then
    ``aten._log_softmax_backward_data``, written into ``log_probs`` (the forward's
    log-softmax, whose value is dead after it), ``rows_per_chunk`` rows at a time.

    Both kernels treat rows independently (the loss's normaliser ``total_weight`` is an
    argument), so each chunk runs the same two aten kernels on its rows and is copied back
    over them: bit-identical to the two whole calls. The step holds two chunks where it
    held a gradient of the log-probabilities' size next to them: for a GPT's 50257-token
    vocabulary at 8x1024 tokens, 1.5 GiB less at the head's backward.
    """
    flat = log_probs.view(-1, log_probs.shape[-1])
    for start in range(0, flat.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        grad = aten.nll_loss_backward.default(grad_loss, flat[rows], target[rows], weight,
                                              reduction, ignore_index, total_weight)
        flat[rows] = aten._log_softmax_backward_data.default(grad, flat[rows], -1, input_dtype)
    return log_probs


# A pointwise program (``pointwise_value_and_derivative``): steps of
# (ATen op name, args, kwargs); an argument "%x" is the input, "%<i>" step i's value.
PointwiseProgram = tuple[tuple[str, tuple[Any, ...], tuple[tuple[str, Any], ...]], ...]


@functools.cache
def resolve_op(name: str) -> Any:
    """The ATen overload called ``name`` ("aten.mul.Tensor")."""
    namespace, op, overload = name.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def program_last_uses(program: PointwiseProgram) -> list[list[str]]:
    """For every step, the references whose last reader it is (the result is read last)."""
    last: dict[str, int] = {}
    for i, (_op, args, kwargs) in enumerate(program):
        for a in (*args, *(v for _k, v in kwargs)):
            if isinstance(a, str) and a.startswith("%"):
                last[a] = i
    freed: list[list[str]] = [[] for _ in program]
    for ref, i in last.items():
        if ref != f"%{len(program) - 1}":
            freed[i].append(ref)
    return freed


def program_live_values(program: PointwiseProgram) -> int:
    """The most program values alive at once while it runs (the input not counted)."""
    freed = program_last_uses(program)
    live, most = set(), 0
    for i in range(len(program)):
        live.add(f"%{i}")
        most = max(most, len(live))
        live -= set(freed[i])
    return most


def run_pointwise_program(program: PointwiseProgram, x: Tensor) -> Tensor:
    """The program's value at ``x`` (each value dropped after its last reader)."""
    values: dict[str, Any] = {"%x": x}
    freed = program_last_uses(program)

    def value(a: Any) -> Any:
        return values[a] if isinstance(a, str) and a.startswith("%") else a
    for i, (op, args, kwargs) in enumerate(program):
        values[f"%{i}"] = resolve_op(op)(*map(value, args),
                                         **{k: value(v) for k, v in kwargs})
        for ref in freed[i]:
            del values[ref]
    return values[f"%{len(program) - 1}"]


def pointwise_chunk_elems(x: Tensor, chunk_bytes: int) -> int:
    """Elements per chunk: ``chunk_bytes`` of ``x``'s dtype, a multiple of 32768 (ATen's
    pointwise grain, so that chunks split the vectorised loops where the whole call does)."""
    return max(32768, chunk_bytes // x.element_size() // 32768 * 32768)


def pointwise_value_and_derivative(x: Tensor, program: PointwiseProgram,
                                   chunk_bytes: int) -> tuple[Tensor, Tensor]:
    """``y = program(x)`` and ``dy/dx`` of an element-wise program, by forward-mode AD
    (``torch.autograd.forward_ad``) over chunks of ``chunk_bytes``.

    ``y`` is bit-identical to running the program's ops (the primal of a dual tensor goes
    through the same kernels); the backward of the whole chain is then ``grad * dy/dx``,
    and the forward pass keeps one tensor instead of the chain's intermediates.
    """
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    d = torch.empty_like(y)
    flat_x, flat_y, flat_d = x.reshape(-1), y.view(-1), d.view(-1)
    step = pointwise_chunk_elems(x, chunk_bytes)
    # The runtime runs inside a custom autograd.Function, whose forward disables forward AD.
    with fwAD._set_fwd_grad_enabled(True), fwAD.dual_level():
        for start in range(0, flat_x.numel(), step):
            part = flat_x[start:start + step]
            out = run_pointwise_program(program, fwAD.make_dual(part, torch.ones_like(part)))
            value, tangent = fwAD.unpack_dual(out)
            flat_y[start:start + step].copy_(value)
            flat_d[start:start + step].copy_(tangent)
    return y, d
