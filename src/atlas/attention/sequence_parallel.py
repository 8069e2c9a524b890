"""Plumbing shared by the sequence-parallel kinds (ring, distributed): shards, pattern tasks, p2p exchange, bytes.

The sequence of length ``n`` is split into ``P`` contiguous shards of equal length ``n_local = n / P``; rank
``i`` of the process group holds global positions ``[i * n_local, (i + 1) * n_local)`` of q, k, v (each
``(b, n_local, h, d)``) and of the key-padding mask (``(b, n_local)``).  :func:`shard_sequence` cuts a full
sequence that way.  With no process group (or one rank) the "shard" is the whole sequence.

Both kinds compute the same function as :func:`~atlas.attention.core.dilated_attention` by splitting it into
:class:`PatternTask` s -- one (w, r, offset) pattern over a set of heads -- whose ``(out, lse)`` results are
combined exactly as the reference does (:func:`combine_patterns`).  Communication goes through
:func:`start_exchange` (point-to-point ``isend``/``irecv`` via ``batch_isend_irecv``), which counts the payload
bytes it moves in a :class:`CommunicationStats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .config import check_mode
from .core import head_groups
from .lse import merge_by_lse

__all__ = [
    "CommunicationStats",
    "PatternTask",
    "PendingExchange",
    "ShardLayout",
    "combine_patterns",
    "pattern_tasks",
    "segments_meet",
    "shard_sequence",
    "start_exchange",
]


@dataclass
class CommunicationStats:
    """Payload moved by this rank since the last :meth:`reset` (forward and backward passes together).

    Attributes:
        bytes_sent: bytes of tensors this rank handed to ``isend``.
        bytes_received: bytes of tensors this rank received with ``irecv``.
        messages: point-to-point messages sent.

    The one small shape check per forward pass (a few int64 values gathered to reject unequal shards before
    any payload moves) is not counted.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0

    def record(self, sent: Sequence[Tensor], received: Sequence[Tensor]) -> None:
        self.bytes_sent += sum(t.numel() * t.element_size() for t in sent)
        self.bytes_received += sum(t.numel() * t.element_size() for t in received)
        self.messages += len(sent)

    def reset(self) -> None:
        self.bytes_sent = self.bytes_received = self.messages = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def shard_sequence(x: Tensor, rank: int, world_size: int, dim: int = 1) -> Tensor:
    """Rank ``rank``'s contiguous shard of ``x`` along ``dim`` (the sequence axis, 1 for (b, n, ...) tensors)."""
    n = x.shape[dim]
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                         f"world_size={world_size}")
    if n % world_size:
        padded = -(-n // world_size) * world_size
        raise ValueError(f"sequence length {n} must be divisible by world_size {world_size} to shard it; pad the "
                         f"sequence to {padded} and mask the padding with key_padding_mask")
    local = n // world_size
    return x.narrow(dim, rank * local, local)


@dataclass(frozen=True)
class ShardLayout:
    """Where this rank's shard lies: ``[rank * shard_length, (rank + 1) * shard_length)`` of ``sequence_length``.

    Attributes:
        group: the process group (None = the default group, or no distribution when ``world_size == 1``).
        rank, world_size: this rank's index in ``group`` and the group's size.
        shard_length: n_local, equal on every rank.
    """

    group: Optional[dist.ProcessGroup]
    rank: int
    world_size: int
    shard_length: int

    @property
    def start(self) -> int:
        return self.rank * self.shard_length

    @property
    def sequence_length(self) -> int:
        return self.world_size * self.shard_length

    def global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    @classmethod
    def of(cls, q: Tensor, key_padding_mask: Optional[Tensor], group: Optional[dist.ProcessGroup]) -> "ShardLayout":
        """The layout of local shards q (b, n_local, h, d); checks across ranks that every shard agrees.

        Unequal shards would deadlock or corrupt the exchange, so they are rejected up front on every rank.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return cls(None, 0, 1, q.shape[1])
        world_size, rank = dist.get_world_size(group), dist.get_rank(group)
        if world_size == 1:
            return cls(group, rank, 1, q.shape[1])
        mine = torch.tensor([*q.shape, q.element_size(), int(key_padding_mask is not None)], dtype=torch.int64)
        everyone = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(everyone, mine, group=group)
        if any(not torch.equal(other, mine) for other in everyone):
            described = [dict(zip(("batch", "n_local", "heads", "head_dim", "bytes_per_element", "mask"),
                                  other.tolist())) for other in everyone]
            raise ValueError(
                f"every rank must pass shards of one shape (batch, n_local, heads, head_dim), one dtype and a "
                f"key_padding_mask on all ranks or none; got, by rank: {described}. Split the sequence with "
                f"shard_sequence(x, rank, world_size), padding n to a multiple of world_size={world_size}"
            )
        return cls(group, rank, world_size, q.shape[1])


@dataclass(frozen=True)
class PatternTask:
    """One dilated pattern ``(w, r, offset)`` run by ``heads`` (a slice over the head axis); its result belongs
    to pattern ``pattern`` of the configuration."""

    pattern: int
    segment_length: int
    dilation_rate: int
    offset: int
    heads: slice


def pattern_tasks(num_heads: int, segment_lengths: Sequence[int], dilation_rates: Sequence[int],
                  mode: str) -> tuple[PatternTask, ...]:
    """The tasks of :func:`~atlas.attention.core.dilated_attention`: head_split -> group i (contiguous heads)
    with offset ``i % r_i``; longnet -> for every pattern, heads ``o, o + r, ...`` with offset ``o``."""
    check_mode(mode)
    groups = list(zip(segment_lengths, dilation_rates))
    if mode == "head_split":
        return tuple(PatternTask(i, w, r, i % r, slice(heads.start, heads.stop))
                     for i, ((w, r), heads) in enumerate(zip(groups, head_groups(num_heads, len(groups)))))
    return tuple(PatternTask(i, w, r, o, slice(o, None, r))
                 for i, (w, r) in enumerate(groups) for o in range(min(r, num_heads)))


def combine_patterns(outs: Sequence[Tensor], lses: Sequence[Tensor], mode: str) -> Tensor:
    """Per-pattern results (b, n, h, d) / (b, n, h) -> the output, as the reference combines them.

    head_split: every head has exactly one pattern (zeros elsewhere), so the sum picks it; then divide by k.
    longnet: the LSE-weighted mixture (Ding et al. 2023, Eq. 10).
    """
    if mode == "head_split":
        return torch.stack(list(outs)).sum(0) / len(outs)
    return merge_by_lse(outs, lses)[0]


def segments_meet(query_start: int, query_end: int, key_start: int, key_end: int, segment_length: int,
                  is_causal: bool) -> bool:
    """Can a query in ``[query_start, query_end)`` see a key in ``[key_start, key_end)`` under segments of
    length w (same segment; with causality, key <= query)?  Global positions; ranges non-empty."""
    w = segment_length
    if is_causal and key_start > query_end - 1:
        return False
    return query_start // w <= (key_end - 1) // w and key_start // w <= (query_end - 1) // w


class PendingExchange:
    """Posted point-to-point transfers; :meth:`wait` returns the receive buffers once they are filled."""

    def __init__(self, works: list, received: list[Tensor]) -> None:
        self._works, self._received = works, received

    def wait(self) -> list[Tensor]:
        for work in self._works:
            work.wait()
        return self._received


def start_exchange(layout: ShardLayout, sends: Sequence[tuple[int, Tensor]],
                   receives: Sequence[tuple[int, Tensor]], stats: CommunicationStats) -> PendingExchange:
    """Post ``isend(tensor -> peer)`` for each send and ``irecv(peer -> buffer)`` for each receive at once.

    Peers are ranks of ``layout.group``; buffers must be contiguous and preallocated.  Returns immediately;
    call ``wait()`` before reading the buffers or modifying the sent tensors.
    """
    ops = [dist.P2POp(dist.isend, tensor, layout.global_rank(peer), layout.group) for peer, tensor in sends]
    ops += [dist.P2POp(dist.irecv, buffer, layout.global_rank(peer), layout.group) for peer, buffer in receives]
    stats.record([t for _, t in sends], [t for _, t in receives])
    works = dist.batch_isend_irecv(ops) if ops else []
    return PendingExchange(works, [buffer for _, buffer in receives])
