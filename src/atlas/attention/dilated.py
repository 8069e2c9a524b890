"""Dilated attention modules over (b, n, h, d) tensors: the reference and the fast path.

:class:`DilatedAttention` runs :func:`~atlas.attention.core.dilated_attention`; :class:`ImprovedDilatedAttention`
runs :func:`~atlas.attention.improved.improved_dilated_attention`, which computes the same function (LongNet,
Ding et al. 2023; tested equal in float64).  Neither has parameters: projections live in
:class:`~atlas.attention.multihead.MultiheadDilatedAttention`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .config import DilatedAttentionConfig, check_heads_for_groups
from .core import dilated_attention
from .improved import improved_dilated_attention
from .pool import ScratchPool, default_pool

__all__ = ["DilatedAttention", "ImprovedDilatedAttention", "tf32_scope"]


@contextmanager
def tf32_scope(enabled: bool, device: torch.device) -> Iterator[None]:
    """Allow TF32 matmuls on CUDA inside the block only, restoring the global flags afterwards."""
    if not enabled or device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class DilatedAttention(nn.Module):
    """Dilated attention, reference implementation.

    Args:
        segment_lengths, dilation_rates, dropout, use_tf32, mode: see
            :class:`~atlas.attention.config.DilatedAttentionConfig` (validated there).

    Shapes: ``forward(query, key, value)`` with (b, n, h, d) tensors -> (b, n, h, d).
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        use_tf32: bool = False,
        mode: str = "head_split",
    ) -> None:
        super().__init__()
        self.config = DilatedAttentionConfig(segment_lengths, dilation_rates, dropout, use_tf32, mode)

    @classmethod
    def from_config(cls, config: DilatedAttentionConfig, **kwargs) -> "DilatedAttention":
        return cls(config.segment_lengths, config.dilation_rates, config.dropout, config.use_tf32, config.mode,
                   **kwargs)

    @property
    def segment_lengths(self) -> tuple[int, ...]:
        return self.config.segment_lengths

    @property
    def dilation_rates(self) -> tuple[int, ...]:
        return self.config.dilation_rates

    @property
    def mode(self) -> str:
        return self.config.mode

    def check_num_heads(self, num_heads: int) -> None:
        """Raise if ``num_heads`` cannot run this pattern (head_split needs a head per group)."""
        check_heads_for_groups(num_heads, self.config.num_groups, self.mode)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        return dilated_attention(q, k, v, self.segment_lengths, self.dilation_rates, mode=self.mode, **kwargs)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        is_causal: bool = False,
        key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Args: query, key, value (b, n, h, d); is_causal; key_padding_mask (b, n) bool, True = padded key.

        Returns (b, n, h, d).  Dropout (``config.dropout``) acts on attention probabilities in training only.
        """
        if query.dim() == 4:
            self.check_num_heads(query.shape[2])
        dropout_p = self.config.dropout if self.training else 0.0
        with tf32_scope(self.config.use_tf32, query.device):
            return self._attend(query, key, value, is_causal=is_causal, key_padding_mask=key_padding_mask,
                                dropout_p=dropout_p)

    def extra_repr(self) -> str:
        c = self.config
        return (f"segment_lengths={list(c.segment_lengths)}, dilation_rates={list(c.dilation_rates)}, "
                f"dropout={c.dropout}, mode={c.mode!r}")


class ImprovedDilatedAttention(DilatedAttention):
    """The same function as :class:`DilatedAttention` via strided views and fused kernels.

    Args (beyond :class:`DilatedAttention`):
        use_memory_pool: borrow q/k/v scratch blocks from the shared pool (:func:`get_memory_pool_info`) when
            gradients are off.  Off by default: no CPU benchmark shows a gain yet, and CUDA's allocator pools.
        pool: a specific :class:`~atlas.attention.pool.ScratchPool` (default: the shared one).
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        use_tf32: bool = False,
        mode: str = "head_split",
        use_memory_pool: bool = False,
        pool: Optional[ScratchPool] = None,
    ) -> None:
        super().__init__(segment_lengths, dilation_rates, dropout, use_tf32, mode)
        self.use_memory_pool = bool(use_memory_pool)
        self.pool = pool

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
        pool = (self.pool or default_pool()) if self.use_memory_pool else None
        return improved_dilated_attention(
            q, k, v, self.segment_lengths, self.dilation_rates, mode=self.mode, pool=pool, **kwargs
        )
