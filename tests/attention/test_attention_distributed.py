"""distributed: LongNet's sparsify-then-gather over 2 and 4 gloo ranks == single process; bytes constant in n."""

from __future__ import annotations

import pytest
import torch
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
    DistributedDilatedAttention,
    DistributedMultiheadDilatedAttention,
    MultiheadDilatedAttention,
    distributed_dilated_attention,
    shard_sequence,
)
from atlas.attention.distributed import check_distributed_pattern
from atlas.attention.sequence_parallel import ShardLayout

# (n, heads, segment_lengths, dilation_rates, mode, causal, masked): local and spanning segments, w > n,
# a short last segment whose group is a single rank (n=48, w=36 over 4 ranks), w % r != 0.
RANK_CASES = {
    2: [
        (32, 4, [8, 16, 32], [1, 2, 4], "head_split", False, False),
        (32, 4, [8, 16, 32], [1, 2, 4], "longnet", True, True),
        (32, 4, [16, 64], [2, 8], "longnet", False, False),
        (48, 3, [8, 24, 48], [3, 3, 4], "head_split", True, True),
    ],
    4: [
        (32, 4, [4, 8, 16, 32], [1, 2, 2, 4], "head_split", True, False),
        (32, 4, [4, 8, 16, 32], [1, 2, 2, 4], "longnet", False, True),
        (48, 3, [12, 24, 96], [1, 2, 3], "head_split", False, True),
        (48, 4, [12, 36], [1, 3], "longnet", True, False),
    ],
}
# Bytes per rank for fixed (w, r) = (64, 4) as n grows: segments span fewer ranks, so it must not grow.
BYTES_LENGTHS = [64, 128, 256]
BYTES_PATTERN = ([64], [4])


def test_single_process_equals_standard():
    q, k, v, upstream, mask = case_tensors(40, 4, True, seed=5)
    for mode, causal in (("head_split", True), ("longnet", False)):
        expected = reference(q, k, v, upstream, [8, 64], [1, 6], mode, causal, mask)
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        module = DistributedDilatedAttention([8, 64], [1, 6], mode=mode)
        out = module(*inputs, is_causal=causal, key_padding_mask=mask)
        actual = (out, *torch.autograd.grad(out, inputs, upstream))
        for name, a, e in zip("out dq dk dv".split(), actual, expected):
            assert_close(a, e, f"{mode} {name}")
        assert module.communication.bytes_sent == 0


@pytest.mark.parametrize(
    "segment_lengths,dilation_rates,message",
    [
        ([12], [1], r"segment_length 12 must divide the shard length n_local=16 \(sequence n=64 over world_size=4"),
        ([24], [1], r"segment_length 24 > n_local must be a multiple of the shard length n_local=16"),
        ([32], [3], r"dilation_rate 3 of segment_length 32 must divide the shard length n_local=16"),
    ],
)
def test_incompatible_patterns_are_refused_with_the_values(segment_lengths, dilation_rates, message):
    layout = ShardLayout(group=None, rank=0, world_size=4, shard_length=16)
    with pytest.raises(ValueError, match=message) as info:
        check_distributed_pattern(layout, segment_lengths, dilation_rates)
    assert "kind='ring'" in str(info.value)
    check_distributed_pattern(layout, [8, 16, 32, 128], [1, 2, 4, 8])


def _check_on_ranks(rank, world_size, out_dir):
    for index, (n, h, w, r, mode, causal, masked) in enumerate(RANK_CASES[world_size]):
        what = f"P={world_size} rank {rank} case {index} (n={n}, w={w}, r={r}, {mode}, causal={causal})"
        q, k, v, upstream, mask = case_tensors(n, h, masked, seed=200 + index)
        expected = [shard_sequence(x, rank, world_size)
                    for x in reference(q, k, v, upstream, w, r, mode, causal, mask)]
        local = [shard_sequence(x, rank, world_size).clone().requires_grad_() for x in (q, k, v)]
        local_mask = None if mask is None else shard_sequence(mask, rank, world_size)
        out = distributed_dilated_attention(*local, w, r, mode=mode, is_causal=causal, key_padding_mask=local_mask)
        actual = (out, *torch.autograd.grad(out, local, shard_sequence(upstream, rank, world_size)))
        for name, a, e in zip("out dq dk dv".split(), actual, expected):
            assert_close(a, e, f"{what} {name}")
    _check_multihead(rank, world_size)
    # Payload bytes per rank for one forward + backward, fixed (w, r), growing n.
    bytes_by_length = {}
    for n in BYTES_LENGTHS:
        q, k, v, upstream, _ = case_tensors(n, 2, False, seed=n, batch=1)
        module = DistributedDilatedAttention(*BYTES_PATTERN, mode="longnet")
        local = [shard_sequence(x, rank, world_size).clone().requires_grad_() for x in (q, k, v)]
        module(*local).backward(shard_sequence(upstream, rank, world_size))
        bytes_by_length[n] = module.communication.as_dict()
    try:
        bad = torch.zeros(1, 8 + 4 * rank, 2, 4, dtype=torch.float64)
        DistributedDilatedAttention([8], [1])(bad, bad, bad)
    except ValueError as error:
        assert "every rank must pass shards of one shape" in str(error)
    else:
        raise AssertionError("unequal shards were accepted")
    save_result(out_dir, rank, bytes_by_length)


def _check_multihead(rank, world_size):
    torch.manual_seed(0)
    pattern = dict(embed_dim=16, num_heads=4, segment_lengths=[8, 16, 32], dilation_rates=[1, 2, 4],
                   dtype=torch.float64)
    reference = MultiheadDilatedAttention(**pattern)
    sharded = DistributedMultiheadDilatedAttention(**pattern)
    sharded.load_state_dict(reference.state_dict())
    x = torch.randn(2, 32, 16, dtype=torch.float64, requires_grad=True)
    expected = reference(x)
    (upstream,) = torch.autograd.grad(expected, x, torch.ones_like(expected))
    local = shard_sequence(x.detach(), rank, world_size).clone().requires_grad_()
    out = sharded(local)
    assert_close(out, shard_sequence(expected, rank, world_size), "multihead out")
    assert_close(torch.autograd.grad(out, local, torch.ones_like(out))[0], shard_sequence(upstream, rank, world_size),
                 "multihead dx")


@requires_gloo
@pytest.mark.parametrize("world_size", [2, 4])
def test_distributed_on_gloo_ranks_equals_single_process(world_size, tmp_path):
    run_on_ranks(_check_on_ranks, world_size, tmp_path, str(tmp_path))
    (w,), (r,) = BYTES_PATTERN
    heads, head_dim, itemsize = 2, 8, 8
    # The gathered sparse K/V of a segment is at most w / r rows per head; forward and backward move it once each.
    bound = 2 * 2 * (w // r) * heads * head_dim * itemsize
    for result in load_results(tmp_path, world_size):
        received = [result[str(n)]["bytes_received"] for n in BYTES_LENGTHS]
        assert received == sorted(received, reverse=True), f"bytes per rank grew with n: {received}"
        assert 0 < received[0] <= bound and result[str(BYTES_LENGTHS[-1])]["bytes_sent"] == 0
