"""The scratch pool: counters, clearing, and no user-visible tensor ever aliasing a pooled buffer."""

from __future__ import annotations

import pytest
import torch

from atlas.attention import (
    ImprovedDilatedAttention,
    ScratchPool,
    clear_memory_pool,
    default_pool,
    dilated_attention,
    get_memory_pool_info,
)


def test_counters_and_clear():
    pool = ScratchPool()
    with pool.borrow((4, 4), torch.float32, "cpu") as first:
        pass
    with pool.borrow((4, 4), torch.float32, "cpu") as second:
        assert second is first
    info = pool.info()
    assert (info["total_buffers"], info["hits"], info["misses"], info["in_use"]) == (1, 1, 1, 0)
    assert info["total_memory_mb"] == pytest.approx(64 / 2**20)
    pool.clear()
    assert pool.info()["total_buffers"] == 0 and pool.info()["hits"] == 0
    with pytest.raises(ValueError, match="did not lend"):
        pool.release(torch.zeros(1))


@pytest.mark.parametrize("mode", ["head_split", "longnet"])
def test_outputs_never_alias_the_shared_pool(mode):
    clear_memory_pool()
    module = ImprovedDilatedAttention([8, 16], [1, 2], mode=mode, use_memory_pool=True)
    gen = torch.Generator().manual_seed(0)
    first_inputs = [torch.randn(1, 40, 4, 8, generator=gen) for _ in range(3)]
    second_inputs = [torch.randn(1, 40, 4, 8, generator=gen) for _ in range(3)]
    with torch.no_grad():
        first = module(*first_inputs)
        kept = first.clone()
        second = module(*second_inputs)
    info = get_memory_pool_info()
    assert info["total_buffers"] > 0 and info["hits"] > 0 and info["misses"] > 0
    pointers = default_pool().storage_pointers()
    for out in (first, second):
        assert out.untyped_storage().data_ptr() not in pointers
    assert torch.equal(first, kept)  # the second call did not overwrite the first result
    torch.testing.assert_close(second, dilated_attention(*second_inputs, [8, 16], [1, 2], mode=mode),
                               atol=1e-5, rtol=0)
    clear_memory_pool()
    assert get_memory_pool_info()["total_buffers"] == 0


def test_pool_is_not_used_when_autograd_needs_the_scratch():
    pool = ScratchPool()
    module = ImprovedDilatedAttention([8], [1], use_memory_pool=True, pool=pool)
    q = torch.randn(1, 16, 2, 4, requires_grad=True)
    module(q, q, q).sum().backward()
    assert pool.info()["total_buffers"] == 0 and q.grad is not None
