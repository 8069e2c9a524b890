"""Building blocks of the UNet: noise embedding, residual blocks, self/cross-attention, resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(noise_level: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal features of a per-sample scalar.

    Args:
        noise_level: (B,) the network's noise input c_noise (for atlas, 0.25 * log(sigma)).
        dim: even output width.
    Returns:
        (B, dim) float tensor ``[cos(level * f_k), sin(level * f_k)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=noise_level.device,
                                                           dtype=torch.float32) / half)
    # c_noise is O(1) (log-sigma / 4), so scale it up to spread it over the frequencies.
    args = 1000.0 * noise_level.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the noise embedding as a per-channel scale and shift (AdaGN)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then (optionally) cross-attention to a text context.

    Both use ``scaled_dot_product_attention`` unless ``dilated`` is given: a parameter-free dilated attention
    core over (B, H*W, heads, head_dim) tensors (``atlas.attention.ImprovedDilatedAttention``), which then
    replaces full self-attention over the row-major token sequence; cross-attention is unchanged. The
    context's padding mask (True = real token) is passed to the attention as a boolean mask, so padded tokens
    never receive weight.
    """

    def __init__(self, channels: int, num_heads: int, groups: int, context_dim: int | None,
                 dilated: nn.Module | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.dilated = dilated
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.context_dim = context_dim
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.to_q = nn.Linear(channels, channels)
            self.to_kv = nn.Linear(context_dim, 2 * channels)
            self.cross_proj = nn.Linear(channels, channels)
            nn.init.zeros_(self.cross_proj.weight)
            nn.init.zeros_(self.cross_proj.bias)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, N, C) projections -> (B, N, C) attended tokens, full or dilated."""
        b, n, c = q.shape
        if self.dilated is None:
            attended = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
            return attended.transpose(1, 2).reshape(b, n, c)
        split = (b, n, self.num_heads, c // self.num_heads)  # the dilated core's (b, n, h, d) layout
        return self.dilated(q.view(split), k.view(split), v.view(split)).reshape(b, n, c)

    def forward(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        out = x.flatten(2).transpose(1, 2) + self.proj(self._self_attention(q, k, v))
        if self.context_dim is not None:
            q = self._heads(self.to_q(self.cross_norm(out)))
            k, v = (self._heads(t) for t in self.to_kv(context).chunk(2, dim=-1))
            mask = None if context_mask is None else context_mask[:, None, None, :]
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out + self.cross_proj(attended.transpose(1, 2).reshape(b, h * w, c))
        return out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
