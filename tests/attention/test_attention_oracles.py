"""standard (and improved) == two independent naive oracles, in float64, for outputs and q/k/v gradients."""

from __future__ import annotations

import pytest
import torch
from dilated_oracles import oracle_dense, oracle_loop

from atlas.attention import dilated_attention, improved_dilated_attention

# (n, heads, segment_lengths, dilation_rates): regular, n % w != 0, w > n with w % r != 0, the LongNet-style
# five groups with h=12 (hits the reference head-range bug), and w % r != 0 with a short tail.
CONFIGS = [
    (64, 6, [16, 32, 64], [1, 2, 4]),
    (60, 5, [8, 16, 32], [1, 2, 4]),
    (40, 4, [8, 64], [1, 6]),
    (40, 12, [4, 8, 16, 32, 64], [1, 2, 4, 6, 12]),
    (30, 3, [8, 24], [1, 3]),
]
TOL = dict(atol=1e-12, rtol=0)


def _inputs(n, h, batch=2, d=8, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, h, d, generator=gen, dtype=torch.float64).requires_grad_(grad) for _ in range(3)]


def _grads(fn, q, k, v, upstream):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), upstream))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,h,segments,rates", CONFIGS)
def test_the_two_oracles_agree_in_head_split_mode(n, h, segments, rates, causal):
    q, k, v = _inputs(n, h)
    pad = torch.rand(2, n, generator=torch.Generator().manual_seed(1)) < 0.25
    for mask in (None, pad):
        torch.testing.assert_close(oracle_loop(q, k, v, segments, rates, causal, mask),
                                   oracle_dense(q, k, v, segments, rates, "head_split", causal, mask), **TOL)


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,h,segments,rates", CONFIGS)
def test_standard_matches_dense_oracle_outputs_and_gradients(n, h, segments, rates, causal, mode):
    q, k, v = _inputs(n, h, grad=True)
    upstream = torch.randn(2, n, h, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = _grads(lambda *x: dilated_attention(*x, segments, rates, mode=mode, is_causal=causal), q, k, v, upstream)
    want = _grads(lambda *x: oracle_dense(*x, segments, rates, mode, causal), q, k, v, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_standard_matches_loop_oracle_gradients(causal):
    n, h, segments, rates = CONFIGS[1]
    q, k, v = _inputs(n, h, grad=True)
    upstream = torch.randn(2, n, h, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = _grads(lambda *x: dilated_attention(*x, segments, rates, is_causal=causal), q, k, v, upstream)
    want = _grads(lambda *x: oracle_loop(*x, segments, rates, causal), q, k, v, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_is_carried_through_the_gather(mode, causal):
    n, h, segments, rates = CONFIGS[1]
    q, k, v = _inputs(n, h, grad=True)
    pad = torch.rand(2, n, generator=torch.Generator().manual_seed(4)) < 0.3
    pad[1, :20] = True  # whole segments masked: their rows must give exactly 0, not NaN
    upstream = torch.randn(2, n, h, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kwargs = dict(mode=mode, is_causal=causal, key_padding_mask=pad)
    got = _grads(lambda *x: dilated_attention(*x, segments, rates, **kwargs), q, k, v, upstream)
    fast = _grads(lambda *x: improved_dilated_attention(*x, segments, rates, **kwargs), q, k, v, upstream)
    want = _grads(lambda *x: oracle_dense(*x, segments, rates, mode, causal, pad), q, k, v, upstream)
    for a, b, c in zip(got, fast, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, c, **TOL)
        torch.testing.assert_close(b, c, **TOL)


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_gradcheck(mode):
    q, k, v = _inputs(10, 2, batch=1, d=3, grad=True)
    pad = torch.zeros(1, 10, dtype=torch.bool)
    pad[0, 7] = True

    def fn(q, k, v):
        return dilated_attention(q, k, v, [4, 8], [1, 2], mode=mode, is_causal=True, key_padding_mask=pad)

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,h,segments,rates", CONFIGS)
def test_improved_equals_standard(n, h, segments, rates, causal, mode):
    q, k, v = _inputs(n, h, grad=True)
    upstream = torch.randn(2, n, h, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kwargs = dict(mode=mode, is_causal=causal)
    want = _grads(lambda *x: dilated_attention(*x, segments, rates, **kwargs), q, k, v, upstream)
    got = _grads(lambda *x: improved_dilated_attention(*x, segments, rates, **kwargs), q, k, v, upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():  # the fused no-grad kernels (CPU flash with LSE for longnet)
        torch.testing.assert_close(improved_dilated_attention(q, k, v, segments, rates, **kwargs), want[0], **TOL)


@pytest.mark.parametrize("fn", [dilated_attention, improved_dilated_attention])
@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_float32_agrees_with_float64(fn, mode):
    n, h, segments, rates = CONFIGS[0]
    q, k, v = _inputs(n, h)
    want = oracle_dense(q, k, v, segments, rates, mode, True)
    got = fn(q.float(), k.float(), v.float(), segments, rates, mode=mode, is_causal=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
