"""Structural properties: positions mix within a head (never heads within a position), causality, coverage,
and the (out, lse) contract of dilated_group_attention that ring / sequence-parallel variants build on."""

from __future__ import annotations

import math

import pytest
import torch

from atlas.attention import (
    dilated_attention,
    dilated_group_attention,
    head_groups,
    improved_dilated_attention,
    merge_by_lse,
)

FNS = [dilated_attention, improved_dilated_attention]


def _inputs(n, h, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, n, h, d, generator=gen, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_attention_is_over_positions_not_heads(fn, mode):
    # The reference package's "improved" attended over the heads of a group at each position; this catches it.
    q, k, v = _inputs(32, 4)
    base = fn(q, k, v, [8, 16], [1, 2], mode=mode)
    other_heads = v.clone()
    other_heads[:, :, 1:] += 1.0
    torch.testing.assert_close(fn(q, k, other_heads, [8, 16], [1, 2], mode=mode)[:, :, 0], base[:, :, 0])
    same_head_other_position = v.clone()
    same_head_other_position[:, 1, 0] += 1.0  # position 1 shares segment [0, 8) with position 0 (r=1 group)
    changed = fn(q, k, same_head_other_position, [8, 16], [1, 2], mode=mode)[:, 0, 0]
    assert (changed - base[:, 0, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_causal_outputs_ignore_the_future(fn, mode):
    q, k, v = _inputs(30, 3)
    base = fn(q, k, v, [8, 24], [1, 3], mode=mode, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, 17:] += 5.0
    v2[:, 17:] -= 5.0
    moved = fn(q, k2, v2, [8, 24], [1, 3], mode=mode, is_causal=True)
    torch.testing.assert_close(moved[:, :17], base[:, :17], atol=1e-14, rtol=0)
    assert (moved[:, 17:] - base[:, 17:]).abs().max() > 1e-3


@pytest.mark.parametrize("fn", FNS)
def test_head_split_zero_rows_are_exactly_the_rows_a_group_skips(fn):
    n, h, segments, rates = 60, 5, [8, 16, 32], [1, 2, 4]
    out = fn(*_inputs(n, h), segments, rates)
    for index, heads in enumerate(head_groups(h, 3)):
        w, r = segments[index], rates[index]
        kept = torch.tensor([(p % w) % r == index % r for p in range(n)])
        zero = (out[0, :, heads.start:heads.stop] == 0).all(dim=-1).all(dim=-1)
        assert torch.equal(zero, ~kept)


@pytest.mark.parametrize("fn", FNS)
def test_longnet_with_a_unit_rate_covers_every_row(fn):
    out = fn(*_inputs(40, 12), [4, 8, 16, 32, 64], [1, 2, 4, 6, 12], mode="longnet")
    assert (out.abs().sum(dim=-1) > 0).all()


def test_head_groups_are_contiguous_and_cover_every_head():
    groups = head_groups(12, 5)
    assert [len(g) for g in groups] == [3, 3, 2, 2, 2]
    assert [h for g in groups for h in g] == list(range(12))


def test_group_lse_is_the_log_normaliser():
    q, k, v = _inputs(12, 2)
    out, lse = dilated_group_attention(q, k, v, 12, 1, 0)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).transpose(1, 2), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v), atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("w,r,o", [(16, 2, 1), (48, 3, 2), (64, 1, 0), (12, 5, 4)])
def test_key_blocks_merged_by_lse_equal_the_whole_sequence(w, r, o, causal):
    # The ring contract: a query shard attends to key blocks separately; merging by LSE gives the full result.
    n, shards = 48, 4
    q, k, v = _inputs(n, 3)
    full_out, full_lse = dilated_group_attention(q, k, v, w, r, o, is_causal=causal)
    size = n // shards
    for rank in range(shards):
        qs = slice(rank * size, (rank + 1) * size)
        parts = [
            dilated_group_attention(q[:, qs], k[:, b * size:(b + 1) * size], v[:, b * size:(b + 1) * size], w, r, o,
                                    is_causal=causal, query_start=qs.start, key_start=b * size)
            for b in range(shards)
        ]
        out, lse = merge_by_lse([p[0] for p in parts], [p[1] for p in parts])
        torch.testing.assert_close(out, full_out[:, qs], atol=1e-12, rtol=0)
        torch.testing.assert_close(lse, full_lse[:, qs], atol=1e-12, rtol=0)


def test_merge_by_lse_has_finite_gradients_for_uncovered_rows():
    outs = [torch.zeros(1, 3, 1, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    lses = [torch.full((1, 3, 1), -math.inf, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    out, lse = merge_by_lse(outs, lses)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in outs + lses)


def test_group_offset_must_be_below_the_rate():
    q, k, v = _inputs(8, 1)
    with pytest.raises(ValueError, match=r"offset must be in \[0, dilation_rate=2\), got 2"):
        dilated_group_attention(q, k, v, 8, 2, 2)


def test_bad_shapes_and_masks_are_rejected_at_the_boundary():
    q, k, v = _inputs(8, 2)
    with pytest.raises(ValueError, match="one shape"):
        dilated_attention(q, k[:, :4], v, [4], [1])
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor of shape"):
        dilated_attention(q, k, v, [4], [1], key_padding_mask=torch.zeros(1, 8))
