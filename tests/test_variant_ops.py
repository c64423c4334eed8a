"""The variant backward ops in profiler.variant_ops against the eager ATen ops they replace."""
import math

import pytest
import torch

from profiler import variant_ops as vo

aten = torch.ops.aten
SHAPES = [(1,), (7,), (8,), (9,), (3, 5), (2, 3, 5, 7), (4, 16, 6, 6), (0,), (2, 0, 3)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_bits_round_trip(shape):
    mask = torch.rand(shape, generator=_gen()) < 0.5
    packed = vo.pack_bits(mask)
    numel = math.prod(shape)
    assert packed.dtype == torch.uint8 and packed.dim() == 1 and packed.is_contiguous()
    assert packed.numel() == (numel + 7) // 8
    out = vo.unpack_bits(packed, list(shape))
    assert out.dtype == torch.bool and out.is_contiguous() and torch.equal(out, mask)


def test_pack_bits_layout_and_noncontiguous():
    mask = torch.tensor([True, False, False, True, False, False, False, False, True])
    assert vo.pack_bits(mask).tolist() == [9, 1]
    base = torch.rand(6, 10, generator=_gen(1)) < 0.3
    assert torch.equal(vo.unpack_bits(vo.pack_bits(base.t()), [10, 6]), base.t())


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5, 7)])
def test_relu(shape):
    x = torch.randn(shape, generator=_gen())
    x.view(-1)[::3] = 0.0
    x.view(-1)[1::5] = -0.0
    out = aten.relu(x)
    grad = torch.randn(shape, generator=_gen(1))
    got = vo.relu_backward_from_mask(grad, vo.relu_mask(out))
    assert got.is_contiguous() and torch.equal(got, aten.threshold_backward(grad, out, 0))


def test_relu_mask_nan_passes_gradient():
    out = torch.tensor([float("nan"), 0.0, -1.0, 2.0, float("nan"), -0.0, 3.0])
    grad = torch.arange(1.0, 8.0)
    got = vo.relu_backward_from_mask(grad, vo.relu_mask(out))
    assert torch.equal(got, aten.threshold_backward(grad, out, 0))
    assert got.tolist() == [1.0, 0.0, 0.0, 4.0, 5.0, 0.0, 7.0]


@pytest.mark.parametrize("shape", [(9,), (3, 5), (2, 3, 5, 7)])
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (0.0, 6.0)])
def test_hardtanh(shape, bounds):
    lo, hi = bounds
    x = torch.randn(shape, generator=_gen()) * 4
    x.view(-1)[::4] = lo
    x.view(-1)[1::4] = hi
    grad = torch.randn(shape, generator=_gen(1))
    got = vo.hardtanh_backward_from_mask(grad, vo.hardtanh_mask(x, lo, hi))
    assert got.is_contiguous() and torch.equal(got, aten.hardtanh_backward(grad, x, lo, hi))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5, 7)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout(shape, p):
    torch.manual_seed(0)
    x = torch.randn(shape)
    _, mask = aten.native_dropout(x, p, True)
    grad = torch.randn(shape)
    scale = 1.0 / (1.0 - p)
    got = vo.dropout_backward_from_bits(grad, vo.dropout_mask(mask), scale)
    assert torch.equal(got, aten.native_dropout_backward(grad, mask, scale))


def _weights(c, dtype, gen):
    sign = torch.where(torch.rand(c, generator=gen) < 0.5, -1.0, 1.0)
    return (sign * (0.5 + torch.rand(c, generator=gen))).to(dtype)


TOLS = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _assert_close(got, ref, dtype):
    for g, r in zip(got, ref):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, **TOLS[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 9), (4, 3, 5, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_from_output(dtype, shape, affine):
    gen = _gen()
    c, eps = shape[1], 1e-5
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype)
    w = _weights(c, dtype, gen) if affine else None
    b = torch.randn(c, generator=gen).to(dtype) if affine else None
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    out, mean, invstd, _, _ = aten._native_batch_norm_legit_functional(
        x, w, b, rm, rv, True, 0.1, eps)
    grad = torch.randn(shape, generator=gen).to(dtype)
    mask = [True, affine, affine]
    ref = aten.native_batch_norm_backward(grad, x, w, rm, rv, mean, invstd, True, eps, mask)
    got = vo.batch_norm_backward_from_output(grad, out, w, b, rm, rv, mean, invstd, True, eps,
                                             mask)
    _assert_close(got, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm_dims", [1, 2])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_from_output(dtype, norm_dims, affine):
    gen = _gen()
    shape = (3, 4, 6, 8)
    normalized = list(shape[-norm_dims:])
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype)
    w = _weights(math.prod(normalized), dtype, gen).view(normalized) if affine else None
    b = torch.randn(normalized, generator=gen).to(dtype) if affine else None
    out, mean, rstd = aten.native_layer_norm(x, normalized, w, b, 1e-5)
    assert list(mean.shape) == list(shape[:-norm_dims]) + [1] * norm_dims
    grad = torch.randn(shape, generator=gen).to(dtype)
    mask = [True, affine, affine]
    ref = aten.native_layer_norm_backward(grad, x, normalized, mean, rstd, w, b, mask)
    got = vo.layer_norm_backward_from_output(grad, out, normalized, mean, rstd, w, b, mask)
    _assert_close(got, ref, dtype)


def test_zero_weight_guard():
    x = torch.randn(4, 3, 5, generator=_gen())
    w, b = torch.tensor([1.0, 0.0, 2.0]), torch.zeros(3)
    rm, rv = torch.zeros(3), torch.ones(3)
    out, mean, invstd, _, _ = aten._native_batch_norm_legit_functional(
        x, w, b, rm, rv, True, 0.1, 1e-5)
    with pytest.raises(RuntimeError, match="--no-variants"):
        vo.batch_norm_backward_from_output(torch.ones_like(x), out, w, b, rm, rv, mean, invstd,
                                           True, 1e-5, [True, True, True])
    out, mean, rstd = aten.native_layer_norm(x, [5], torch.zeros(5), torch.zeros(5), 1e-5)
    with pytest.raises(RuntimeError, match="--no-variants"):
        vo.layer_norm_backward_from_output(torch.ones_like(x), out, [5], mean, rstd,
                                           torch.zeros(5), torch.zeros(5), [True, True, True])


POOLS = [  # shape, kernel_size, stride, padding, dilation, ceil_mode
    ((2, 3, 9, 11), [3, 3], [2, 2], [1, 1], [1, 1], False),
    ((2, 3, 8, 8), [2, 2], [2, 2], [0, 0], [1, 1], False),
    ((2, 3, 9, 7), [2], [], [0], [1], False),
    ((3, 10, 9), [3, 3], [2, 2], [1, 1], [1, 1], True),
    ((2, 2, 11, 10), [3, 2], [2, 1], [1, 0], [2, 1], True),
    ((1, 2, 7, 7), [3, 3], [1, 1], [1, 1], [1, 1], False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOLS)
def test_max_pool2d_compact(dtype, shape, k, s, p, d, ceil):
    gen = _gen()
    x = torch.randn(shape, generator=gen).to(dtype)
    x.view(-1)[::5] = 0.25  # ties inside windows
    out, indices = aten.max_pool2d_with_indices(x, k, s, p, d, ceil)
    compact = vo.max_pool2d_compact_indices(indices, list(shape[-2:]), k, s, p, d)
    assert compact.dtype == torch.uint8 and compact.element_size() == 1
    assert compact.shape == indices.shape
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    ref = aten.max_pool2d_with_indices_backward(grad, x, k, s, p, d, ceil, indices)
    got = vo.max_pool2d_backward_from_compact(grad, compact, list(shape), k, s, p, d)
    assert got.is_contiguous() and got.dtype == dtype
    assert torch.equal(got, ref)


def test_max_pool2d_window_too_large():
    indices = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    with pytest.raises(ValueError):
        vo.max_pool2d_compact_indices(indices, [17, 17], [17, 17], [], [0, 0], [1, 1])


ATTENTION_SHAPES = [(2, 3, 7, 7, 5), (1, 2, 16, 9, 8), (2, 1, 5, 5, 4)]  # B, H, L, S, E


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask", [None, "causal", "hidden", "additive"])
def test_attention_math_backward(dtype, shape, mask):
    """The math backend's backward from rebuilt probabilities against the fused CPU kernel's
    and float64 autograd: as close to float64 as the fused kernel is (within a few units of
    float rounding), with the fused kernel's strides (queries laid out [B, L, H, E])."""
    from profiler.attention_ops import (
        attention_backward_from_probabilities,
        attention_probabilities,
    )
    b, h, length, keys, e = shape
    gen = _gen(1)
    q, k, v = (torch.randn(b, n, h, e, dtype=dtype, generator=gen).transpose(1, 2)
               for n in (length, keys, keys))
    causal = mask == "causal"
    attn_mask = None
    if mask == "hidden":  # a boolean mask as SDPA passes it to the kernel: -inf where hidden
        shown = torch.rand(length, keys, generator=gen) > 0.3
        shown[:, 0] = True
        attn_mask = torch.zeros(length, keys, dtype=dtype).masked_fill(~shown, -math.inf)
    elif mask == "additive":
        attn_mask = torch.randn(b, 1, length, keys, dtype=dtype, generator=gen)
    out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal,
                                                               attn_mask=attn_mask)
    grad = torch.randn(out.shape, dtype=dtype, generator=gen)
    fused = aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, q, k, v, out, lse, 0.0, causal, attn_mask=attn_mask)
    probs = attention_probabilities(q, k, lse, causal, attn_mask, None)
    got = attention_backward_from_probabilities(grad, probs, q, k, v, 1 / math.sqrt(e),
                                                tuple(g.stride() for g in fused), 3)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(
        *exact, attn_mask=None if attn_mask is None else attn_mask.double(),
        is_causal=causal), exact, grad.double())
    eps = torch.finfo(dtype).eps
    for g, f, r in zip(got, fused, ref):
        assert g.stride() == f.stride() and g.dtype == dtype
        scale = r.abs().max().item()
        assert (g.double() - r).abs().max() <= max(4 * (f.double() - r).abs().max(),
                                                   64 * eps * scale)
