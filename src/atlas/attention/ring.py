"""Ring attention for dilated patterns: sequence parallel over ranks, memory-lean streaming on one process.

Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers for Near-Infinite Context"): every
rank keeps its query shard; the key/value shards travel around the ring of ranks (``isend`` to rank + 1,
``irecv`` from rank - 1, posted before the local block is computed so transfer and compute overlap), and the
partial results for each dilated pattern (LongNet, Ding et al. 2023) merge online by their log-normalisers::

    out = sum_j exp(lse_j - lse) out_j,   lse = logsumexp_j lse_j      (j = key block)

The backward pass (:class:`_RingAttention`) runs the ring again: each K/V block travels with its dK/dV
accumulator, the block's ``(out_j, lse_j)`` is recomputed and differentiated against the *final* ``out`` and
``lse`` (``d out_j = a_j dO``, ``d lse_j = a_j (dO . (out_j - out) + dLSE)`` with ``a_j = exp(lse_j - lse)``), and
after the last step the accumulators go back to their owners.  The gradients are exact: they equal the
single-process ones to float64 rounding.  Dropout masks are replayed from the saved RNG state.

Inside a shard, queries and keys are processed in chunks of ``chunk_size`` positions, so temporaries are
O(chunk^2 / r^2) whatever the segment length.  On one process this *is* the streaming mode: the ring has one
rank and the sequence is walked chunk pair by chunk pair -- the same result as
:func:`~atlas.attention.core.dilated_attention`, with memory independent of w in both passes.
Steps stop as soon as no rank needs a farther block (causal rings need only the earlier ranks of a segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .config import check_heads_for_groups
from .core import check_qkv, dilated_group_attention
from .dilated import DilatedAttention
from .lse import merge_by_lse
from .multihead import MultiheadDilatedAttention
from .sequence_parallel import (
    CommunicationStats,
    PatternTask,
    PendingExchange,
    ShardLayout,
    combine_patterns,
    pattern_tasks,
    segments_meet,
    start_exchange,
)

__all__ = ["RingDilatedAttention", "RingMultiheadDilatedAttention", "ring_dilated_attention", "ring_steps"]


def ring_steps(layout: ShardLayout, tasks: Sequence[PatternTask], is_causal: bool) -> int:
    """Ring steps needed: 1 + the largest ring distance ``(i - j) mod P`` from a query shard i to a key shard j
    that shares a segment with it (and, if causal, precedes it).  The same on every rank."""
    size, count = layout.shard_length, layout.world_size
    farthest = 0
    for i in range(count):
        for j in range(count):
            if any(segments_meet(i * size, (i + 1) * size, j * size, (j + 1) * size, t.segment_length, is_causal)
                   for t in tasks):
                farthest = max(farthest, (i - j) % count)
    return farthest + 1


@dataclass(frozen=True)
class _RingPlan:
    tasks: tuple[PatternTask, ...]
    num_patterns: int
    layout: ShardLayout
    steps: int
    chunk_size: int
    is_causal: bool
    scale: Optional[float]
    dropout_p: float
    stats: CommunicationStats

    def pairs(self, source: int) -> Iterator[tuple[PatternTask, slice, slice, int, int]]:
        """(task, local query rows, local key rows, their global starts) for the key block of rank ``source``:
        chunk pairs that share a segment, in a fixed order (the backward pass replays it)."""
        size, chunk = self.layout.shard_length, self.chunk_size
        query_base, key_base = self.layout.start, source * size
        for key_start in range(0, size, chunk):
            key_end = min(key_start + chunk, size)
            for query_start in range(0, size, chunk):
                query_end = min(query_start + chunk, size)
                for task in self.tasks:
                    if segments_meet(query_base + query_start, query_base + query_end, key_base + key_start,
                                     key_base + key_end, task.segment_length, self.is_causal):
                        yield (task, slice(query_start, query_end), slice(key_start, key_end),
                               query_base + query_start, key_base + key_start)

    def block(self, q: Tensor, kv: Tensor, mask: Optional[Tensor], pair) -> tuple[Tensor, Tensor]:
        """(out_j, lse_j) of one chunk pair: q (b, c, g, d) against kv (2, b, c', g, d) -> (b, c, g, d), (b, c, g)."""
        task, _, key_rows, query_start, key_start = pair
        return dilated_group_attention(
            q, kv[0], kv[1], task.segment_length, task.dilation_rate, task.offset, is_causal=self.is_causal,
            key_padding_mask=None if mask is None else mask[:, key_rows].bool(), query_start=query_start,
            key_start=key_start, scale=self.scale, dropout_p=self.dropout_p,
        )

    def rotate(self, payload: list[Tensor]) -> PendingExchange:
        """Post sending ``payload`` to rank + 1 and receiving rank - 1's into new buffers; ``wait()`` gives them."""
        layout = self.layout
        after, before = (layout.rank + 1) % layout.world_size, (layout.rank - 1) % layout.world_size
        return start_exchange(layout, [(after, t) for t in payload], [(before, torch.empty_like(t)) for t in payload],
                              self.stats)


class _RingAttention(torch.autograd.Function):
    """(q, k, v, uint8 mask or None, plan) -> per-pattern outs (K, b, n_local, h, d) and lses (K, b, n_local, h)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, plan: _RingPlan):
        b, size, h, d = q.shape
        outs = q.new_zeros(plan.num_patterns, b, size, h, d)
        lses = q.new_full((plan.num_patterns, b, size, h), float("-inf"))
        ctx.rng_state = _rng_state(q.device) if plan.dropout_p > 0 else None
        layout = plan.layout
        payload = [torch.stack((k, v))] + ([mask] if mask is not None else [])
        for step in range(plan.steps):
            # Post the next transfer first: it overlaps with this block's compute.
            pending = plan.rotate(payload) if step + 1 < plan.steps else None
            kv, block_mask = payload[0], (payload[1] if mask is not None else None)
            for pair in plan.pairs((layout.rank - step) % layout.world_size):
                task, query_rows, key_rows = pair[:3]
                part_out, part_lse = plan.block(q[:, query_rows, task.heads], kv[:, :, key_rows, task.heads],
                                                block_mask, pair)
                acc_out = outs[task.pattern, :, query_rows, task.heads]
                acc_lse = lses[task.pattern, :, query_rows, task.heads]
                merged_out, merged_lse = merge_by_lse((acc_out, part_out), (acc_lse, part_lse))
                acc_out.copy_(merged_out)
                acc_lse.copy_(merged_lse)
            if pending is not None:
                payload = pending.wait()
        ctx.plan = plan
        ctx.save_for_backward(q, k, v, mask, outs, lses)
        return outs, lses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outs, grad_lses):
        q, k, v, mask, outs, lses = ctx.saved_tensors
        plan: _RingPlan = ctx.plan
        layout = plan.layout
        grad_outs = torch.zeros_like(outs) if grad_outs is None else grad_outs
        grad_lses = torch.zeros_like(lses) if grad_lses is None else grad_lses
        grad_q = torch.zeros_like(q)
        kv, grad_kv = torch.stack((k, v)), torch.zeros(2, *k.shape, dtype=k.dtype, device=k.device)
        with torch.random.fork_rng(devices=[q.device] if q.device.type == "cuda" else [],
                                   enabled=ctx.rng_state is not None):
            if ctx.rng_state is not None:
                _set_rng_state(q.device, ctx.rng_state)
            for step in range(plan.steps):
                for pair in plan.pairs((layout.rank - step) % layout.world_size):
                    task, query_rows, key_rows = pair[:3]
                    index = (task.pattern, slice(None), query_rows, task.heads)
                    grads = _block_backward(plan, pair, q[:, query_rows, task.heads], kv[:, :, key_rows, task.heads],
                                            mask, outs[index], lses[index], grad_outs[index], grad_lses[index])
                    if grads is not None:
                        grad_q[:, query_rows, task.heads] += grads[0]
                        grad_kv[:, :, key_rows, task.heads] += grads[1]
                if step + 1 < plan.steps:  # the block moves on with its gradient accumulator
                    kv, *rest = plan.rotate([kv, grad_kv] + ([mask] if mask is not None else [])).wait()
                    grad_kv, mask = rest[0], (rest[1] if mask is not None else None)
        if plan.steps > 1:  # the accumulator now here belongs to rank - (steps - 1): send it home
            owner = (layout.rank - plan.steps + 1) % layout.world_size
            holder = (layout.rank + plan.steps - 1) % layout.world_size
            mine = torch.empty_like(grad_kv)
            grad_kv = start_exchange(layout, [(owner, grad_kv)], [(holder, mine)], plan.stats).wait()[0]
        return grad_q, grad_kv[0], grad_kv[1], None, None


def _block_backward(plan: _RingPlan, pair, q: Tensor, kv: Tensor, mask: Optional[Tensor], out: Tensor, lse: Tensor,
                    grad_out: Tensor, grad_lse: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """Recompute one block and pull the final gradients through it; (dq, dkv) or None if it covers nothing."""
    with torch.enable_grad():
        q = q.detach().requires_grad_()
        kv = kv.detach().requires_grad_()
        part_out, part_lse = plan.block(q, kv, mask, pair)
    if not part_out.requires_grad:  # the pattern keeps no rows of this chunk pair
        return None
    weight = torch.where(torch.isfinite(part_lse), torch.exp(part_lse - lse), torch.zeros_like(lse))
    upstream_out = weight.unsqueeze(-1) * grad_out
    upstream_lse = weight * ((grad_out * (part_out.detach() - out)).sum(-1) + grad_lse)
    grad_q, grad_kv = torch.autograd.grad((part_out, part_lse), (q, kv), (upstream_out, upstream_lse),
                                          allow_unused=True)
    grad_q = torch.zeros_like(q) if grad_q is None else grad_q
    grad_kv = torch.zeros_like(kv) if grad_kv is None else grad_kv
    return grad_q, grad_kv


def _rng_state(device: torch.device):
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _check_chunk_size(chunk_size: Optional[int]) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int (positions per chunk) or None (whole shards), got "
                         f"{chunk_size!r}; 4096 is the default")


def ring_dilated_attention(
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
    chunk_size: Optional[int] = 4096,
    process_group: Optional[dist.ProcessGroup] = None,
    stats: Optional[CommunicationStats] = None,
) -> Tensor:
    """Dilated attention of this rank's query shard against the whole sequence, by ring attention.

    Args:
        q, k, v: (b, n_local, h, d), this rank's contiguous shard (the whole sequence without a process group).
        segment_lengths, dilation_rates, mode, is_causal, scale, dropout_p: as
            :func:`~atlas.attention.core.dilated_attention` (global positions; any w, r, n % w).
        key_padding_mask: (b, n_local) bool, True = padded key; it travels with its K/V block.
        chunk_size: positions per query/key chunk inside a shard (None: whole shards).
        process_group: the ring's ranks (default: the default group, if initialised).
        stats: accumulates the bytes this rank sends and receives.

    Returns:
        (b, n_local, h, d): this shard's rows of the single-process result.
    """
    check_qkv(q, k, v, key_padding_mask)
    _check_chunk_size(chunk_size)
    check_heads_for_groups(q.shape[2], len(segment_lengths), mode)
    layout = ShardLayout.of(q, key_padding_mask, process_group)
    tasks = pattern_tasks(q.shape[2], segment_lengths, dilation_rates, mode)
    plan = _RingPlan(tasks, len(segment_lengths), layout, ring_steps(layout, tasks, is_causal),
                     chunk_size or layout.shard_length, is_causal, scale, dropout_p,
                     stats if stats is not None else CommunicationStats())
    mask = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
    outs, lses = _RingAttention.apply(q, k, v, mask, plan)
    return combine_patterns(outs.unbind(0), lses.unbind(0), mode)


class RingDilatedAttention(DilatedAttention):
    """Dilated attention by ring attention over the ranks of a process group (or streamed on one process).

    Args (beyond :class:`~atlas.attention.dilated.DilatedAttention`):
        process_group: ranks of the ring; default the default group when initialised, else one process.
        chunk_size: positions per chunk inside a shard; bounds temporaries to O(chunk^2 / r^2) (None: shards).

    Shapes: ``forward(query, key, value)`` with this rank's shards (b, n_local, h, d) -> (b, n_local, h, d); see
    :func:`~atlas.attention.sequence_parallel.shard_sequence`.  ``communication`` counts the payload bytes this
    rank moved (:meth:`reset_communication_stats` zeroes it).
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
        chunk_size: Optional[int] = 4096,
    ) -> None:
        super().__init__(segment_lengths, dilation_rates, dropout, use_tf32, mode)
        _check_chunk_size(chunk_size)
        self.process_group = process_group
        self.chunk_size = chunk_size
        self.communication = CommunicationStats()

    def reset_communication_stats(self) -> None:
        self.communication.reset()

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return ring_dilated_attention(q, k, v, self.segment_lengths, self.dilation_rates, mode=self.mode,
                                      chunk_size=self.chunk_size, process_group=self.process_group,
                                      stats=self.communication, **kwargs)


class RingMultiheadDilatedAttention(MultiheadDilatedAttention):
    """:class:`MultiheadDilatedAttention` over :class:`RingDilatedAttention`: inputs are this rank's sequence shard
    (b, n_local, E).  Pass ``attention=RingDilatedAttention(..., process_group=, chunk_size=)`` (or use the
    factory's options) to set the ring's options."""

    attention_class = RingDilatedAttention
