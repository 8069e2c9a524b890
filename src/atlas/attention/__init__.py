"""Dilated attention (LongNet, Ding et al. 2023) and its factory, configs, block-sparse variant and scratch pool.

Layout everywhere: (batch, seq, heads, head_dim) for the cores, (batch, seq, embed_dim) for the multi-head
modules.  Every kind computes one function per ``mode`` (tested against two naive oracles):

* :func:`create_dilated_attention`, :func:`create_multihead_dilated_attention` -- kinds :data:`KINDS`;
* :class:`DilatedAttentionConfig`, :class:`MultiheadConfig` -- frozen, self-validating;
* :func:`dilated_group_attention` + :func:`merge_by_lse` -- one (w, r, offset) pattern with its log-normaliser,
  the building block for sequence-parallel variants;
* :func:`get_memory_pool_info`, :func:`clear_memory_pool` -- the shared scratch pool;
* :class:`RingDilatedAttention`, :class:`DistributedDilatedAttention` (and multi-head) -- sequence parallel over
  the ranks of a process group on local shards (:func:`shard_sequence`); ring streams on one process.
"""

from .block_sparse import BlockSparseDilatedAttention, block_pattern
from .config import MODES, DilatedAttentionConfig, MultiheadConfig
from .core import dilated_attention, dilated_group_attention, head_groups
from .dilated import DilatedAttention, ImprovedDilatedAttention
from .distributed import (
    DistributedDilatedAttention,
    DistributedMultiheadDilatedAttention,
    distributed_dilated_attention,
)
from .factory import (
    KINDS,
    create_dilated_attention,
    create_multihead_dilated_attention,
    explain_selection,
    register_kind,
)
from .improved import improved_dilated_attention
from .lse import attention_with_lse, merge_by_lse
from .multihead import ImprovedMultiheadDilatedAttention, MultiheadDilatedAttention
from .pool import ScratchPool, clear_memory_pool, default_pool, get_memory_pool_info
from .ring import RingDilatedAttention, RingMultiheadDilatedAttention, ring_dilated_attention
from .selection import RING_MIN_SEQ_LEN, AttentionEnvironment, KindChoice, select_kind
from .sequence_parallel import CommunicationStats, shard_sequence

__all__ = [
    "KINDS",
    "MODES",
    "RING_MIN_SEQ_LEN",
    "AttentionEnvironment",
    "BlockSparseDilatedAttention",
    "CommunicationStats",
    "DilatedAttention",
    "DilatedAttentionConfig",
    "DistributedDilatedAttention",
    "DistributedMultiheadDilatedAttention",
    "ImprovedDilatedAttention",
    "ImprovedMultiheadDilatedAttention",
    "KindChoice",
    "MultiheadConfig",
    "MultiheadDilatedAttention",
    "RingDilatedAttention",
    "RingMultiheadDilatedAttention",
    "ScratchPool",
    "attention_with_lse",
    "block_pattern",
    "clear_memory_pool",
    "create_dilated_attention",
    "create_multihead_dilated_attention",
    "default_pool",
    "dilated_attention",
    "dilated_group_attention",
    "distributed_dilated_attention",
    "explain_selection",
    "get_memory_pool_info",
    "head_groups",
    "improved_dilated_attention",
    "merge_by_lse",
    "register_kind",
    "ring_dilated_attention",
    "select_kind",
    "shard_sequence",
]
