"""block_sparse: one joint softmax per row, equal to dense SDPA under the same block mask; sparsity as measured."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atlas.attention import BlockSparseDilatedAttention, block_pattern


def _dense_reference(module, q, k, v, causal, pad=None):
    n, size = q.shape[1], module.block_size
    allowed = module.block_mask(n, causal).repeat_interleave(size, 0).repeat_interleave(size, 1)[:n, :n]
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    allowed = allowed[None, None]
    if pad is not None:
        allowed = allowed & ~pad[:, None, None, :]
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed)
    return out.transpose(1, 2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,size,sparsity", [(32, 4, 0.5), (30, 4, 0.25), (40, 8, 0.6)])
def test_equals_dense_sdpa_with_the_same_block_mask(n, size, sparsity, causal):
    module = BlockSparseDilatedAttention([8, 16], [1, 2], block_size=size, sparsity=sparsity)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, -3:] = True  # the diagonal block keeps every row non-empty
    got = module(q, k, v, is_causal=causal, key_padding_mask=pad)
    want = _dense_reference(module, q, k, v, causal, pad)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    upstream = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), upstream), torch.autograd.grad(want, (q, k, v), upstream)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.75])
def test_measured_sparsity_equals_the_setting(sparsity, causal):
    module = BlockSparseDilatedAttention([16, 64], [1, 2], block_size=4, sparsity=sparsity)
    nb = 16  # 64 tokens: 256 (or 136 causal) candidate pairs, so sparsity * candidates is an integer here
    mask = module.block_mask(64, causal)
    candidates = nb * (nb + 1) // 2 if causal else nb * nb
    dropped = candidates - int(mask.sum())
    assert dropped / candidates == module.realised_sparsity(64, causal) == sparsity
    assert mask.diagonal().all()
    if causal:
        assert not mask.triu(1).any()


def test_pattern_prefers_the_dilated_pattern_then_locality():
    mask = block_pattern(4, 4, [8, 16], [1, 2], sparsity=0.25)  # keeps 12 of 16 pairs
    # level 0: same 8-token segment (blocks {0,1}, {2,3}); level 1: 16-token segment with even block distance.
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_invalid_settings_say_what_to_do():
    with pytest.raises(ValueError, match=r"sparsity is the fraction of block pairs dropped and must be in \[0, 1\)"):
        BlockSparseDilatedAttention([8], [1], sparsity=1.0)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        BlockSparseDilatedAttention([8], [1], block_size=0)
    module = BlockSparseDilatedAttention([8], [1], block_size=4, sparsity=0.9)
    with pytest.raises(ValueError, match=r"use sparsity <= 0.7500 for this length"):
        module.block_mask(16)
    with pytest.raises(ValueError, match="mode='longnet' does not apply"):
        BlockSparseDilatedAttention([8], [1], mode="longnet")
