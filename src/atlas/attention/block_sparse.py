"""Block-sparse attention with a dilated block pattern and one exact softmax per query row.

The sequence is cut into blocks of ``block_size`` tokens (the last one may be short).  A query block attends to a
fixed set of *active* key blocks, and every query row takes **one joint softmax** over all keys of its active
blocks: the result equals dense ``softmax(QK^T/sqrt(d) + mask) V`` with the block mask expanded to tokens
(dilated-attention-pytorch's class summed separately normalised per-block softmaxes instead).

Which pairs are active.  Candidate pairs are all ``(query block i, key block j)`` (``j <= i`` when causal).  They
are ranked by ``(level, |i - j|, i, j)`` where ``level`` is the first LongNet pattern s (Ding et al. 2023) that
links them at block resolution -- same segment of ``w_s`` tokens and ``|i - j| % r_s == 0`` -- or k if none; the
first ``round((1 - sparsity) * candidates)`` pairs are kept.  The diagonal ranks first, so every query block sees
itself.  ``sparsity`` therefore has one meaning: the fraction of candidate block pairs dropped, and
:meth:`BlockSparseDilatedAttention.realised_sparsity` reports exactly what was dropped (equal to ``sparsity``
whenever ``sparsity * candidates`` is an integer, else within ``0.5 / candidates``).

Layout (b, n, h, d).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .config import DilatedAttentionConfig
from .core import check_qkv
from .dilated import tf32_scope
from .lse import attention_with_lse

__all__ = ["BlockSparseDilatedAttention", "block_pattern"]


def block_pattern(
    num_blocks: int,
    block_size: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    sparsity: float,
    is_causal: bool = False,
) -> Tensor:
    """The (num_blocks, num_blocks) bool mask of active (query block, key block) pairs (see module docstring)."""
    candidates = [(i, j) for i in range(num_blocks) for j in range(num_blocks) if not is_causal or j <= i]
    keep = round((1.0 - sparsity) * len(candidates))
    if keep < num_blocks:
        largest = 1.0 - num_blocks / len(candidates)
        raise ValueError(
            f"sparsity={sparsity} keeps {keep} of {len(candidates)} block pairs, fewer than the {num_blocks} "
            f"diagonal blocks every query block needs; use sparsity <= {largest:.4f} for this length, or a larger "
            f"block_size (now {block_size})"
        )

    def level(i: int, j: int) -> int:
        for s, (w, r) in enumerate(zip(segment_lengths, dilation_rates)):
            if (i * block_size) // w == (j * block_size) // w and abs(i - j) % r == 0:
                return s
        return len(segment_lengths)

    ranked = sorted(candidates, key=lambda p: (level(*p), abs(p[0] - p[1]), p[0], p[1]))
    mask = torch.zeros(num_blocks, num_blocks, dtype=torch.bool)
    for i, j in ranked[:keep]:
        mask[i, j] = True
    return mask


class BlockSparseDilatedAttention(nn.Module):
    """Block-sparse attention over (b, n, h, d) tensors.

    Args:
        segment_lengths, dilation_rates: the LongNet pattern that ranks block pairs.
        dropout: attention-probability dropout (training only); use_tf32: as in :class:`DilatedAttention`.
        mode: only ``"head_split"`` (the config default) is accepted: block-sparse has no per-pattern mixing.
        block_size: tokens per block (>= 1).
        sparsity: fraction of candidate block pairs dropped, in [0, 1).
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        use_tf32: bool = False,
        mode: str = "head_split",
        block_size: int = 64,
        sparsity: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = DilatedAttentionConfig(segment_lengths, dilation_rates, dropout, use_tf32, mode)
        if mode != "head_split":
            raise ValueError(f"block_sparse takes one joint softmax per row; mode={mode!r} does not apply, "
                             f"leave mode at 'head_split'")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}; 64 is the default")
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity is the fraction of block pairs dropped and must be in [0, 1), got "
                             f"{sparsity!r}")
        self.block_size = block_size
        self.sparsity = float(sparsity)

    @classmethod
    def from_config(cls, config: DilatedAttentionConfig, **kwargs) -> "BlockSparseDilatedAttention":
        return cls(config.segment_lengths, config.dilation_rates, config.dropout, config.use_tf32, config.mode,
                   **kwargs)

    def num_blocks(self, seq_len: int) -> int:
        return -(-seq_len // self.block_size)

    def block_mask(self, seq_len: int, is_causal: bool = False) -> Tensor:
        """Active block pairs for a sequence of ``seq_len`` tokens: (num_blocks, num_blocks) bool."""
        c = self.config
        return block_pattern(self.num_blocks(seq_len), self.block_size, c.segment_lengths, c.dilation_rates,
                             self.sparsity, is_causal)

    def realised_sparsity(self, seq_len: int, is_causal: bool = False) -> float:
        """Fraction of candidate block pairs dropped for this length (what the forward pass really skips)."""
        nb = self.num_blocks(seq_len)
        candidates = nb * (nb + 1) // 2 if is_causal else nb * nb
        return 1.0 - int(self.block_mask(seq_len, is_causal).sum()) / candidates

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        is_causal: bool = False,
        key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """(b, n, h, d) in, (b, n, h, d) out; key_padding_mask (b, n) bool, True = padded key."""
        check_qkv(query, key, value, key_padding_mask)
        b, n, h, d = query.shape
        size, nb = self.block_size, self.num_blocks(n)
        device = query.device
        mask = self.block_mask(n, is_causal).to(device)
        active = int(mask.sum(dim=1).max())
        # Per query block, its active key blocks (padded with block 0, masked off below): (nb, active).
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :active]
        slot_active = torch.gather(mask, 1, order)

        padded = nb * size

        def blocks(x: Tensor) -> Tensor:  # (b, n, h, d) -> (b, nb, size, h, d), zero rows past n
            return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, padded - n)).view(b, nb, size, h, d)

        key_blocks = blocks(key)[:, order].reshape(b, nb, active * size, h, d)
        value_blocks = blocks(value)[:, order].reshape(b, nb, active * size, h, d)
        query_pos = torch.arange(padded, device=device).view(nb, size)
        key_pos = query_pos[order].reshape(nb, active * size)
        allowed = slot_active.repeat_interleave(size, dim=1) & (key_pos < n)  # (nb, active*size)
        allowed = allowed[:, None, :].expand(nb, size, -1)
        if is_causal:
            allowed = allowed & (key_pos[:, None, :] <= query_pos[:, :, None])
        allowed = allowed[None, :, None]  # (1, nb, 1, size, active*size)
        if key_padding_mask is not None:
            keep = ~torch.nn.functional.pad(key_padding_mask, (0, padded - n), value=True).view(b, nb, size)
            keep = keep[:, order].reshape(b, nb, 1, 1, active * size)
            allowed = allowed & keep
        dropout_p = self.config.dropout if self.training else 0.0
        with tf32_scope(self.config.use_tf32, device):
            out, _ = attention_with_lse(
                blocks(query).transpose(2, 3), key_blocks.transpose(2, 3), value_blocks.transpose(2, 3),
                allowed=allowed, dropout_p=dropout_p,
            )
        return out.transpose(2, 3).reshape(b, padded, h, d)[:, :n]

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, sparsity={self.sparsity}"
