"""ring: exact ring attention over 2 and 4 gloo ranks, and the streaming mode on one process, vs standard."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed_testing import (
    assert_close,
    case_tensors,
    load_results,
    reference,
    requires_gloo,
    run_on_ranks,
    save_result,
)

from atlas.attention import (
    MultiheadDilatedAttention,
    RingDilatedAttention,
    RingMultiheadDilatedAttention,
    dilated_attention,
    ring_dilated_attention,
    shard_sequence,
)

# (n, heads, segment_lengths, dilation_rates, mode, causal, masked, chunk_size): segments spanning shards,
# w > n, n % w != 0, w % r != 0, segments straddling shard boundaries, chunks smaller than shards.
SINGLE_CASES = [
    (64, 6, [16, 32, 64], [1, 2, 4], "head_split", False, False, 8),
    (60, 5, [8, 16, 32], [1, 2, 4], "longnet", True, True, 7),
    (40, 4, [8, 64], [1, 6], "longnet", False, True, None),
    (30, 3, [8, 24], [1, 3], "head_split", True, False, 5),
]
RANK_CASES = {
    2: [
        (32, 4, [8, 16, 32], [1, 2, 4], "head_split", False, False, None),
        (32, 4, [8, 16, 32], [1, 2, 4], "longnet", True, False, 5),
        (40, 3, [12, 64], [1, 3], "head_split", True, True, 7),
        (40, 4, [8, 64], [1, 6], "longnet", False, True, None),
    ],
    4: [
        (32, 4, [4, 8, 16, 32], [1, 2, 2, 4], "head_split", False, False, None),
        (32, 4, [4, 8, 16, 32], [1, 2, 2, 4], "longnet", True, True, 3),
        (44, 3, [12, 30], [1, 3], "longnet", False, False, 4),
        (32, 2, [6, 64], [2, 5], "head_split", True, True, None),
    ],
}
TOL = dict(atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", SINGLE_CASES, ids=lambda c: f"n{c[0]}-{c[4]}-causal{c[5]}-chunk{c[7]}")
def test_streaming_mode_equals_standard(case):
    n, h, w, r, mode, causal, masked, chunk = case
    q, k, v, upstream, mask = case_tensors(n, h, masked, seed=n)
    expected = reference(q, k, v, upstream, w, r, mode, causal, mask)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = ring_dilated_attention(q, k, v, w, r, mode=mode, is_causal=causal, key_padding_mask=mask, chunk_size=chunk)
    actual = (out, *torch.autograd.grad(out, (q, k, v), upstream))
    for name, a, e in zip("out dq dk dv".split(), actual, expected):
        torch.testing.assert_close(a, e, **TOL, msg=lambda m, name=name: f"{name}: {m}")


def test_dropout_masks_are_replayed_in_backward():
    """The backward pass recomputes blocks: with dropout it must reuse the forward's masks (gradcheck fails
    otherwise).  Reseeding inside the function makes the forward deterministic for the numerical Jacobian."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 8, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def attention(q, k, v):
        torch.manual_seed(7)
        return ring_dilated_attention(q, k, v, [4, 8], [1, 2], mode="longnet", is_causal=True, dropout_p=0.3,
                                      chunk_size=3)

    without_dropout = ring_dilated_attention(q, k, v, [4, 8], [1, 2], mode="longnet", is_causal=True, chunk_size=3)
    assert not torch.equal(attention(q, k, v), without_dropout)
    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=True)


def test_modules_and_validation():
    module = RingDilatedAttention([8, 16], [1, 2], chunk_size=4)
    q, k, v, _, _ = case_tensors(20, 4, False, seed=3)
    torch.testing.assert_close(module(q, k, v), dilated_attention(q, k, v, [8, 16], [1, 2]), **TOL)
    assert module.communication.as_dict() == {"bytes_sent": 0, "bytes_received": 0, "messages": 0}
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int .* got 0"):
        RingDilatedAttention([8], [1], chunk_size=0)
    with pytest.raises(ValueError, match=r"length 30 must be divisible by world_size 4 .* pad the sequence to 32"):
        shard_sequence(torch.zeros(1, 30, 2, 4), rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"num_heads \(1\) must be >= the number"):
        module(q[:, :, :1], k[:, :, :1], v[:, :, :1])


def _check_on_ranks(rank, world_size, out_dir):
    """Every case of RANK_CASES[world_size]: the rank's shard of output and gradients == single process."""
    bytes_by_case = []
    for index, (n, h, w, r, mode, causal, masked, chunk) in enumerate(RANK_CASES[world_size]):
        what = f"P={world_size} rank {rank} case {index} (n={n}, w={w}, r={r}, {mode}, causal={causal})"
        q, k, v, upstream, mask = case_tensors(n, h, masked, seed=100 + index)
        expected = [shard_sequence(x, rank, world_size) for x in reference(q, k, v, upstream, w, r, mode, causal,
                                                                          mask)]
        module = RingDilatedAttention(w, r, mode=mode, chunk_size=chunk)
        local = [shard_sequence(x, rank, world_size).clone().requires_grad_() for x in (q, k, v)]
        local_mask = None if mask is None else shard_sequence(mask, rank, world_size)
        out = module(*local, is_causal=causal, key_padding_mask=local_mask)
        actual = (out, *torch.autograd.grad(out, local, shard_sequence(upstream, rank, world_size)))
        for name, a, e in zip("out dq dk dv".split(), actual, expected):
            assert_close(a, e, f"{what} {name}")
        bytes_by_case.append(module.communication.bytes_sent)
    # Forward only, one case spanning all ranks: the K/V blocks go round the ring once, (P - 1) sends of (k, v).
    n, h, w, r = 32, 4, [32], [1]
    q, k, v, _, _ = case_tensors(n, h, False, seed=7)
    module = RingDilatedAttention(w, r, chunk_size=None)
    with torch.no_grad():
        out = module(*(shard_sequence(x, rank, world_size) for x in (q, k, v)))
    assert_close(out, shard_sequence(dilated_attention(q, k, v, w, r), rank, world_size), f"P={world_size} one pass")
    kv_bytes = 2 * q.numel() // world_size * q.element_size()
    assert module.communication.bytes_sent == (world_size - 1) * kv_bytes
    assert module.communication.bytes_received == (world_size - 1) * kv_bytes
    _check_multihead(rank, world_size)
    # Unequal shards are refused on every rank before any payload moves (instead of a hang).
    bad = torch.zeros(1, 8 + 4 * rank, 2, 4, dtype=torch.float64)
    try:
        RingDilatedAttention([8], [1])(bad, bad, bad)
    except ValueError as error:
        assert "every rank must pass shards of one shape" in str(error)
    else:
        raise AssertionError("unequal shards were accepted")
    save_result(out_dir, rank, {"bytes_sent_by_case": bytes_by_case, "one_pass_bytes": kv_bytes})


def _check_multihead(rank, world_size):
    """The multi-head module on shards == the single-process module (output, input and summed weight grads)."""
    torch.manual_seed(0)
    pattern = dict(embed_dim=16, num_heads=4, segment_lengths=[4, 16, 32], dilation_rates=[1, 2, 4],
                   mode="longnet", dtype=torch.float64)
    reference = MultiheadDilatedAttention(**pattern)
    ring = RingMultiheadDilatedAttention(**pattern)
    ring.load_state_dict(reference.state_dict())
    x = torch.randn(2, 32, 16, dtype=torch.float64, requires_grad=True)
    expected = reference(x, is_causal=True)
    expected.square().sum().backward()
    local = shard_sequence(x.detach(), rank, world_size).clone().requires_grad_()
    out = ring(local, is_causal=True)
    out.square().sum().backward()
    assert_close(out, shard_sequence(expected, rank, world_size), "multihead out")
    assert_close(local.grad, shard_sequence(x.grad, rank, world_size), "multihead dx")
    for (name, parameter), expected_parameter in zip(ring.named_parameters(), reference.parameters()):
        dist.all_reduce(parameter.grad)  # each rank holds its shard's share of the weight gradients
        assert_close(parameter.grad, expected_parameter.grad, f"multihead d{name}", atol=1e-11)


@requires_gloo
@pytest.mark.parametrize("world_size", [2, 4])
def test_ring_on_gloo_ranks_equals_single_process(world_size, tmp_path):
    run_on_ranks(_check_on_ranks, world_size, tmp_path, str(tmp_path))
    results = load_results(tmp_path, world_size)
    assert all(result["bytes_sent_by_case"][0] > 0 for result in results)
