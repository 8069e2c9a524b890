"""Self-validating configuration for the dilated attention family (LongNet, Ding et al. 2023).

Two frozen dataclasses, mirroring the v0.2 surface of dilated-attention-pytorch:

* :class:`DilatedAttentionConfig` -- the pattern: segment lengths ``w_i``, dilation rates ``r_i``, attention
  dropout, TF32 and the mixing ``mode``.
* :class:`MultiheadConfig` -- the projections around it: ``embed_dim``, ``num_heads``, bias, the MAGNETO
  sub-LayerNorm and ``gamma_init``.

Both are frozen: the factory derives new objects with :func:`dataclasses.replace` and never mutates the ones
a caller passed in.  Lists are stored as tuples for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

__all__ = [
    "MODES",
    "DilatedAttentionConfig",
    "MultiheadConfig",
    "check_dropout",
    "check_head_dim",
    "check_heads_for_groups",
    "check_mode",
    "check_pattern",
]

#: ``head_split``: heads split across the (w, r) groups, outputs averaged (numerically dilated-attention-pytorch
#: v0.2 "standard"). ``longnet``: every head runs every pattern, mixed by softmax-denominator (LSE) weights
#: (the paper's Eq. 10, differentiable).
MODES = ("head_split", "longnet")


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of positive integers such as [2048, 4096], got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must contain positive integers only, got {list(values)!r}; "
                             f"every entry must be an int >= 1")
        out.append(int(value))
    if not out:
        raise ValueError(f"{name} must not be empty; give at least one value, e.g. [2048]")
    return tuple(out)


def check_pattern(segment_lengths: Sequence[int], dilation_rates: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Validate a (segment_lengths, dilation_rates) pair and return both as tuples of ints."""
    if not isinstance(segment_lengths, (str, bytes)) and not isinstance(dilation_rates, (str, bytes)):
        if isinstance(segment_lengths, Sequence) and isinstance(dilation_rates, Sequence):
            if len(segment_lengths) != len(dilation_rates):
                raise ValueError(
                    "segment_lengths and dilation_rates must have same length: "
                    f"got {len(segment_lengths)} and {len(dilation_rates)}"
                )
    return _positive_ints("segment_lengths", segment_lengths), _positive_ints("dilation_rates", dilation_rates)


def check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) <= 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}; use 0.0 to disable it")
    return float(dropout)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}; 'head_split' is the default")
    return mode


def check_head_dim(embed_dim: int, num_heads: int) -> int:
    """Return ``embed_dim // num_heads``, raising the guide's message when it does not divide."""
    for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if embed_dim % num_heads:
        raise ValueError(
            f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}). "
            f"Got head_dim={embed_dim / num_heads:.2f}"
        )
    return embed_dim // num_heads


def check_heads_for_groups(num_heads: int, num_groups: int, mode: str) -> None:
    """In head_split mode every (w, r) group needs at least one head."""
    if mode == "head_split" and num_heads < num_groups:
        raise ValueError(
            f"num_heads ({num_heads}) must be >= the number of (segment_length, dilation_rate) groups "
            f"({num_groups}) in mode='head_split'; use fewer groups, more heads, or mode='longnet'"
        )


@dataclass(frozen=True)
class DilatedAttentionConfig:
    """The dilated pattern and how its groups are combined.

    Attributes:
        segment_lengths: ``w_i``, tokens per segment of group i (any positive ints; ``n % w`` need not be 0 and
            ``w > n`` means one segment of length n).
        dilation_rates: ``r_i``, keep every r-th row inside a segment (``w % r`` need not be 0).
        dropout: attention-probability dropout in [0, 1], applied once, in training only.
        use_tf32: allow TF32 matmuls on CUDA inside the forward pass only (restored afterwards); no effect on CPU.
        mode: ``"head_split"`` (default) or ``"longnet"``; see :data:`MODES`.
    """

    segment_lengths: Sequence[int]
    dilation_rates: Sequence[int]
    dropout: float = 0.0
    use_tf32: bool = False
    mode: str = "head_split"

    def __post_init__(self) -> None:
        segments, rates = check_pattern(self.segment_lengths, self.dilation_rates)
        object.__setattr__(self, "segment_lengths", segments)
        object.__setattr__(self, "dilation_rates", rates)
        object.__setattr__(self, "dropout", check_dropout(self.dropout))
        if not isinstance(self.use_tf32, bool):
            raise TypeError(f"use_tf32 must be a bool, got {self.use_tf32!r}")
        check_mode(self.mode)

    @property
    def num_groups(self) -> int:
        return len(self.segment_lengths)


@dataclass(frozen=True)
class MultiheadConfig:
    """Projections around the attention core (MAGNETO, Wang et al. 2022, as used by LongNet).

    Attributes:
        embed_dim: model width E; must be divisible by ``num_heads``.
        num_heads: H; head_dim = E / H.
        bias: biases on the q, k, v and out projections (initialised to zero).
        layer_norm: the sub-LayerNorm on the merged attention output, before ``out_proj``.
        layer_norm_eps: its epsilon (> 0).
        gamma_init: Xavier gain of ``v_proj`` and ``out_proj`` (q and k use gain 1); 1.0 is plain Xavier.
        device, dtype: where and in what dtype the parameters are created.
    """

    embed_dim: int
    num_heads: int
    bias: bool = True
    layer_norm: bool = True
    layer_norm_eps: float = 1e-5
    gamma_init: float = 1.0
    device: Optional[Union[str, torch.device]] = None
    dtype: Optional[torch.dtype] = None

    def __post_init__(self) -> None:
        check_head_dim(self.embed_dim, self.num_heads)
        for name in ("bias", "layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}; 1e-5 is the default")
        if not isinstance(self.gamma_init, (int, float)) or not self.gamma_init > 0:
            raise ValueError(f"gamma_init must be > 0, got {self.gamma_init!r}; 1.0 is plain Xavier init")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads
