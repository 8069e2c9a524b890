"""LongNet's distributed algorithm (Ding et al. 2023, Sec. 3.1): sparsify K/V locally, then gather per segment.

The sequence is split into P contiguous shards of n_local positions, one per rank (inputs are local shards,
(b, n_local, h, d)).  For every dilated pattern (w, r, offset):

* ``w <= n_local`` (and ``n_local % w == 0``): each segment lies inside one shard -- computed locally, no
  communication.
* ``w > n_local`` (``w % n_local == 0``, ``n_local % r == 0``; ``w >= n`` is one segment over all ranks): the m
  ranks that share a segment each keep only their rows of the pattern (n_local / r of them), exchange these
  sparsified K/V blocks with a differentiable all-gather (:func:`all_gather_sequence`, whose backward sends each
  block's gradient back to its owner and sums it there) and attend with their local queries.  A rank receives
  (m - 1) * n_local / r = (w - n_local) / r rows per head: bounded by w / r, so the communication per rank does
  not grow with n for fixed w, r (the paper's constant-cost claim; counted in ``communication``).

Segments must not straddle shards in any other way; such configurations raise with the values and the fix
(kind="ring" accepts any w).  Autograd is plain PyTorch through the gather, so gradients are exact.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .config import check_heads_for_groups
from .core import check_qkv, dilated_group_attention
from .dilated import DilatedAttention
from .multihead import MultiheadDilatedAttention
from .sequence_parallel import (
    CommunicationStats,
    PatternTask,
    ShardLayout,
    combine_patterns,
    pattern_tasks,
    start_exchange,
)

__all__ = [
    "DistributedDilatedAttention",
    "DistributedMultiheadDilatedAttention",
    "all_gather_sequence",
    "check_distributed_pattern",
    "distributed_dilated_attention",
]


class _AllGather(torch.autograd.Function):
    """Concatenate the members' blocks along ``dim`` (in member order); backward returns each block's summed
    gradient to its owner.  Point-to-point within ``members``, so no sub-group has to be created."""

    @staticmethod
    def forward(ctx, block: Tensor, dim: int, layout: ShardLayout, members: tuple[int, ...],
                stats: CommunicationStats) -> Tensor:
        block = block.contiguous()
        peers = [m for m in members if m != layout.rank]
        received = dict(zip(peers, start_exchange(layout, [(p, block) for p in peers],
                                                  [(p, torch.empty_like(block)) for p in peers], stats).wait()))
        ctx.dim, ctx.layout, ctx.members, ctx.stats = dim, layout, members, stats
        return torch.cat([block if m == layout.rank else received[m] for m in members], dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        layout, members = ctx.layout, ctx.members
        pieces = [piece.contiguous() for piece in grad.chunk(len(members), dim=ctx.dim)]
        mine = pieces[members.index(layout.rank)]
        peers = [(m, pieces[i]) for i, m in enumerate(members) if m != layout.rank]
        received = start_exchange(layout, peers, [(m, torch.empty_like(mine)) for m, _ in peers], ctx.stats).wait()
        return sum(received, mine.clone()), None, None, None, None


def all_gather_sequence(block: Tensor, dim: int, layout: ShardLayout, members: Sequence[int],
                        stats: Optional[CommunicationStats] = None) -> Tensor:
    """Differentiable all-gather of equal-shaped ``block`` s among ``members`` (ranks of ``layout.group``, this
    rank included, in order), concatenated along ``dim``.  Sends ``(m - 1) * block`` bytes, forward and back."""
    if layout.rank not in members:
        raise ValueError(f"rank {layout.rank} must be one of the members {list(members)} it gathers with")
    stats = CommunicationStats() if stats is None else stats
    return _AllGather.apply(block, dim, layout, tuple(members), stats)


def check_distributed_pattern(layout: ShardLayout, segment_lengths: Sequence[int],
                              dilation_rates: Sequence[int]) -> None:
    """Raise unless every segment lies inside one shard or covers whole shards with equal sparse rows each."""
    if layout.world_size == 1:
        return
    n, size, ranks = layout.sequence_length, layout.shard_length, layout.world_size
    where = f"the shard length n_local={size} (sequence n={n} over world_size={ranks} ranks)"
    for w, r in zip(segment_lengths, dilation_rates):
        span = min(w, n)
        if span <= size and size % span:
            raise ValueError(f"segment_length {w} must divide {where} so that no segment straddles two ranks; use "
                             f"segment lengths that divide or are multiples of {size}, or kind='ring' (any w)")
        if span > size and span % size:
            raise ValueError(f"segment_length {w} > n_local must be a multiple of {where}; use a multiple of {size} "
                             f"or kind='ring' (any w)")
        if span > size and size % r:
            raise ValueError(f"dilation_rate {r} of segment_length {w} must divide {where} so that every rank "
                             f"keeps n_local / r rows; use a shard length that is a multiple of {r} or kind='ring'")


def _task_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], task: PatternTask, layout: ShardLayout,
                    stats: CommunicationStats, **kwargs) -> tuple[Tensor, Tensor]:
    """(out, lse) of one task for the local queries: (b, n_local, g, d), (b, n_local, g)."""
    size, heads = layout.shard_length, task.heads
    w, r, o = task.segment_length, task.dilation_rate, task.offset
    span = min(w, layout.sequence_length)
    q, k, v = q[:, :, heads], k[:, :, heads], v[:, :, heads]
    if layout.world_size == 1 or span <= size:
        return dilated_group_attention(q, k, v, w, r, o, key_padding_mask=mask, query_start=layout.start,
                                       key_start=layout.start, **kwargs)
    ranks_per_segment = span // size
    first = layout.rank // ranks_per_segment * ranks_per_segment
    members = tuple(range(first, min(first + ranks_per_segment, layout.world_size)))
    rows = torch.arange(o, size, r, device=q.device)  # the same local rows on every member (size % r == 0)
    sparse = torch.stack((k, v)).index_select(2, rows)  # (2, b, n_local / r, g, d)
    gathered = all_gather_sequence(sparse, 2, layout, members, stats)
    window = len(members) * size
    window_rows = (torch.arange(len(members), device=q.device)[:, None] * size + rows).reshape(-1)
    dense = gathered.new_zeros(2, q.shape[0], window, *q.shape[2:]).index_copy(2, window_rows, gathered)
    window_mask = None
    if mask is not None:
        sparse_mask = mask.index_select(1, rows).to(torch.uint8).contiguous()
        peers = [m for m in members if m != layout.rank]
        received = dict(zip(peers, start_exchange(layout, [(p, sparse_mask) for p in peers],
                                                  [(p, torch.empty_like(sparse_mask)) for p in peers], stats).wait()))
        parts = [sparse_mask if m == layout.rank else received[m] for m in members]
        window_mask = torch.ones(q.shape[0], window, dtype=torch.bool, device=q.device).index_copy(
            1, window_rows, torch.cat(parts, dim=1).bool())
    return dilated_group_attention(q, dense[0], dense[1], w, r, o, key_padding_mask=window_mask,
                                   query_start=layout.start, key_start=first * size, **kwargs)


def distributed_dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    *,
    mode: str = "head_split",
    is_causal: bool = False,
    key_padding_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    process_group: Optional[dist.ProcessGroup] = None,
    stats: Optional[CommunicationStats] = None,
) -> Tensor:
    """Dilated attention of this rank's shard by LongNet's sparsify-then-gather scheme.

    Args:
        q, k, v: (b, n_local, h, d), this rank's contiguous shard (the whole sequence without a process group).
        segment_lengths, dilation_rates, mode, is_causal, scale, dropout_p: as
            :func:`~atlas.attention.core.dilated_attention`; see :func:`check_distributed_pattern` for the
            shard compatibility every w, r must have.
        key_padding_mask: (b, n_local) bool, True = padded key; sparsified and gathered like K/V.
        process_group: the ranks sharing the sequence (default: the default group, if initialised).
        stats: accumulates the bytes this rank sends and receives.

    Returns:
        (b, n_local, h, d): this shard's rows of the single-process result.
    """
    check_qkv(q, k, v, key_padding_mask)
    b, size, h, d = q.shape
    check_heads_for_groups(h, len(segment_lengths), mode)
    layout = ShardLayout.of(q, key_padding_mask, process_group)
    check_distributed_pattern(layout, segment_lengths, dilation_rates)
    stats = CommunicationStats() if stats is None else stats
    outs = [q.new_zeros(b, size, h, d) for _ in segment_lengths]
    lses = [q.new_full((b, size, h), float("-inf")) for _ in segment_lengths]
    for task in pattern_tasks(h, segment_lengths, dilation_rates, mode):
        out, lse = _task_attention(q, k, v, key_padding_mask, task, layout, stats, is_causal=is_causal, scale=scale,
                                   dropout_p=dropout_p)
        outs[task.pattern][:, :, task.heads] = out
        lses[task.pattern][:, :, task.heads] = lse
    return combine_patterns(outs, lses, mode)


class DistributedDilatedAttention(DilatedAttention):
    """Dilated attention sharded over the ranks of a process group, LongNet style (one process: == standard).

    Args (beyond :class:`~atlas.attention.dilated.DilatedAttention`):
        process_group: the ranks sharing the sequence; default the default group when initialised.

    Shapes: ``forward(query, key, value)`` with this rank's shards (b, n_local, h, d) -> (b, n_local, h, d).
    ``communication`` counts the payload bytes this rank moved (:meth:`reset_communication_stats` zeroes it).
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        use_tf32: bool = False,
        mode: str = "head_split",
        *,
        process_group: Optional[dist.ProcessGroup] = None,
    ) -> None:
        super().__init__(segment_lengths, dilation_rates, dropout, use_tf32, mode)
        self.process_group = process_group
        self.communication = CommunicationStats()

    def reset_communication_stats(self) -> None:
        self.communication.reset()

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return distributed_dilated_attention(q, k, v, self.segment_lengths, self.dilation_rates, mode=self.mode,
                                             process_group=self.process_group, stats=self.communication, **kwargs)


class DistributedMultiheadDilatedAttention(MultiheadDilatedAttention):
    """:class:`MultiheadDilatedAttention` over :class:`DistributedDilatedAttention`: inputs are this rank's
    sequence shard (b, n_local, E); pass ``attention=DistributedDilatedAttention(..., process_group=)`` (or the
    factory's ``process_group=`` option) to choose the ranks."""

    attention_class = DistributedDilatedAttention
