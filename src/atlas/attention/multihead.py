"""Multi-head dilated attention: projections, MAGNETO initialisation and the sub-LayerNorm around a core.

Follows LongNet (Ding et al. 2023), which uses MAGNETO (Wang et al. 2022, "Foundation Transformers"):

* separate ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` (E -> E); Xavier-normal with gain 1 on q and k and
  gain ``gamma_init`` on v and out; biases zero;
* the sub-LayerNorm: one ``LayerNorm(E)`` on the merged attention output, before ``out_proj``
  (``layer_norm=True``).

Inputs and outputs are (b, n, E); inside, heads are (b, n, h, d) with d = E / h.  The core is any module with
``forward(q, k, v, is_causal=, key_padding_mask=) -> (b, n, h, d)``: :class:`DilatedAttention` by default,
:class:`ImprovedDilatedAttention` in :class:`ImprovedMultiheadDilatedAttention`, or one passed as ``attention=``
(how the factory builds the block-sparse and future ring/distributed variants).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .config import DilatedAttentionConfig, MultiheadConfig
from .dilated import DilatedAttention, ImprovedDilatedAttention

__all__ = ["ImprovedMultiheadDilatedAttention", "MultiheadDilatedAttention"]


class MultiheadDilatedAttention(nn.Module):
    """Multi-head dilated self-attention over (b, n, E) sequences.

    Args:
        embed_dim, num_heads, bias, layer_norm, layer_norm_eps, gamma_init, device, dtype: see
            :class:`~atlas.attention.config.MultiheadConfig`.
        segment_lengths, dilation_rates, dropout, use_tf32, mode: see
            :class:`~atlas.attention.config.DilatedAttentionConfig`.
        attention: a prebuilt core module; when given, the pattern arguments are ignored in favour of its own.
    """

    attention_class = DilatedAttention

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        bias: bool = True,
        layer_norm: bool = True,
        layer_norm_eps: float = 1e-5,
        gamma_init: float = 1.0,
        mode: str = "head_split",
        use_tf32: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        attention: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.multihead_config = MultiheadConfig(
            embed_dim, num_heads, bias, layer_norm, layer_norm_eps, gamma_init, device, dtype
        )
        if attention is None:
            attention = self.attention_class.from_config(
                DilatedAttentionConfig(segment_lengths, dilation_rates, dropout, use_tf32, mode)
            )
        check = getattr(attention, "check_num_heads", None)
        if check is not None:
            check(num_heads)
        self.attention = attention
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps, **factory) if layer_norm else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.reset_parameters()

    @classmethod
    def from_configs(
        cls,
        multihead_config: MultiheadConfig,
        attention_config: DilatedAttentionConfig,
        attention: Optional[nn.Module] = None,
    ) -> "MultiheadDilatedAttention":
        m, a = multihead_config, attention_config
        return cls(
            m.embed_dim, m.num_heads, a.segment_lengths, a.dilation_rates, a.dropout, m.bias, m.layer_norm,
            m.layer_norm_eps, m.gamma_init, a.mode, a.use_tf32, m.device, m.dtype, attention=attention,
        )

    @property
    def embed_dim(self) -> int:
        return self.multihead_config.embed_dim

    @property
    def num_heads(self) -> int:
        return self.multihead_config.num_heads

    def reset_parameters(self) -> None:
        """MAGNETO init: Xavier-normal, gain 1 for q/k and ``gamma_init`` for v/out; zero biases."""
        gamma = self.multihead_config.gamma_init
        for projection, gain in ((self.q_proj, 1.0), (self.k_proj, 1.0), (self.v_proj, gamma), (self.out_proj, gamma)):
            nn.init.xavier_normal_(projection.weight, gain=gain)
            if projection.bias is not None:
                nn.init.zeros_(projection.bias)
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor] = None,
        value: Optional[Tensor] = None,
        is_causal: bool = False,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = False,
    ) -> Union[Tensor, tuple[Tensor, None]]:
        """Args:
            query: (b, n, E); key, value: (b, n, E), default ``query`` (self-attention).  Dilated attention pairs
                positions inside segments, so all three must have the same length.
            is_causal: causal masking inside every pattern.
            key_padding_mask: (b, n) bool, True = padded key.
            need_weights: attention weights are never materialised; True returns ``(out, None)``.

        Returns:
            (b, n, E), or ``(out, None)`` when ``need_weights``.
        """
        key = query if key is None else key
        value = key if value is None else value
        same = key.shape == query.shape and value.shape == query.shape
        if query.dim() != 3 or query.shape[-1] != self.embed_dim or not same:
            raise ValueError(
                f"query, key and value must be (batch, seq, embed_dim={self.embed_dim}) with one shape, got "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}; dilated attention needs equal lengths"
            )
        b, n, _ = query.shape
        heads = (self.num_heads, self.embed_dim // self.num_heads)
        q = self.q_proj(query).view(b, n, *heads)
        k = self.k_proj(key).view(b, n, *heads)
        v = self.v_proj(value).view(b, n, *heads)
        attended = self.attention(q, k, v, is_causal=is_causal, key_padding_mask=key_padding_mask)
        attended = attended.reshape(b, n, self.embed_dim)
        if self.norm is not None:
            attended = self.norm(attended)
        out = self.out_proj(attended)
        return (out, None) if need_weights else out


class ImprovedMultiheadDilatedAttention(MultiheadDilatedAttention):
    """:class:`MultiheadDilatedAttention` over :class:`ImprovedDilatedAttention` (same function, faster)."""

    attention_class = ImprovedDilatedAttention
