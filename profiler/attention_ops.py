"""Scaled dot-product attention's math-backend backward, as a variant of the fused one.

A fused attention kernel (flash on the CPU and on CUDA, memory-efficient on CUDA) keeps the
output and the log-sum-exp of every query row, and its backward recomputes the attention
probabilities ``P = softmax(q k^T * scale + mask)`` from ``q``, ``k`` and that log-sum-exp:
five matmuls. The math backend keeps ``P`` itself (one value per query-key pair) and its
backward needs four. As an operator variant (``profiler.variants``), the pack node rebuilds
``P`` in the forward pass from what the fused forward returned (``exp(scores - lse)``, one
matmul) and the implementation node is the math backend's backward from it. The planner
picks it where the profile's times make one matmul moved from the backward to the forward,
and ``P`` kept, pay; everywhere else the fused kernel runs.

Gradients equal the fused kernel's within float rounding (the math backend's arithmetic).
Attention with dropout is not offered (the fused kernel's dropout mask cannot be replayed
outside it), nor grouped-query attention or a gradient for the attention bias.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

aten = torch.ops.aten


def attention_probabilities(query: Tensor, key: Tensor, logsumexp: Tensor, is_causal: bool,
                            attn_mask: Tensor | None, scale: float | None) -> Tensor:
    """``softmax(query @ key^T * scale + mask)`` rebuilt from the fused kernel's log-sum-exp
    (``[..., L]``, or padded past ``L`` as CUDA's memory-efficient kernel returns it).

    Every step after the matmul writes in place, so the probabilities are the only tensor of
    their size it allocates. A row that the mask hides entirely gets zeros (the fused kernel's
    output for it is zero too).
    """
    length, keys = query.size(-2), key.size(-2)
    if scale is None:
        scale = 1.0 / math.sqrt(query.size(-1))
    probs = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)
    if is_causal:
        hidden = torch.ones(length, keys, dtype=torch.bool, device=query.device).triu_(1)
        probs.masked_fill_(hidden, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            probs.masked_fill_(attn_mask.logical_not(), float("-inf"))
        else:
            probs.add_(attn_mask)
    lse = logsumexp[..., :length].unsqueeze(-1)
    probs.sub_(lse.masked_fill(lse == float("-inf"), 0.0)).exp_()
    return probs


def attention_backward_from_probabilities(
    grad_out: Tensor, probs: Tensor, query: Tensor, key: Tensor, value: Tensor,
    scale: float, strides: tuple[tuple[int, ...], ...], outputs: int,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``query``, ``key`` and ``value`` from the attention probabilities,
    as the math backend computes them: ``dV = P^T dO``, ``dS = softmax_backward(dO V^T, P)``,
    ``dQ = dS K * scale``, ``dK = dS^T Q * scale``. Each gradient is returned with the
    strides the fused kernel gives it (``strides``), followed by ``None`` up to ``outputs``
    results (the memory-efficient kernel's attention-bias gradient, not asked for)."""
    grad_value = torch.matmul(probs.transpose(-2, -1), grad_out)
    grad_scores = aten._softmax_backward_data(torch.matmul(grad_out, value.transpose(-2, -1)),
                                              probs, -1, probs.dtype)
    grad_scores.mul_(scale)
    grad_query = torch.matmul(grad_scores, key)
    grad_key = torch.matmul(grad_scores.transpose(-2, -1), query)
    del grad_scores
    grads = tuple(_with_strides(g, s) for g, s in zip((grad_query, grad_key, grad_value),
                                                        strides))
    return grads + (None,) * (outputs - 3)


def _with_strides(tensor: Tensor, strides: tuple[int, ...]) -> Tensor:
    if tensor.stride() == tuple(strides):
        return tensor
    out = torch.empty_strided(tensor.shape, strides, dtype=tensor.dtype, device=tensor.device)
    return out.copy_(tensor)
