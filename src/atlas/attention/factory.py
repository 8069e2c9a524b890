"""``create_dilated_attention`` and ``create_multihead_dilated_attention``: one place that maps a kind to classes.

Both accept the two call styles of the dilated-attention-pytorch v0.2 migration guide -- keyword parameters, or
``attention_config=DilatedAttentionConfig(...)`` / ``multihead_config=MultiheadConfig(...)`` -- and keywords
given alongside a config override its fields in a *new* object (the caller's config is never mutated).

Kinds are exactly :data:`KINDS`.  ``"auto"`` resolves through :func:`~atlas.attention.selection.select_kind`;
the module it returns carries the decision as ``module.kind_choice``.  ``"ring"`` and ``"distributed"`` build the
sequence-parallel modules (:mod:`.ring`, :mod:`.distributed`), whose inputs are this rank's sequence shard; their
options (``process_group=``, ``chunk_size=``) pass through ``**options``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .block_sparse import BlockSparseDilatedAttention
from .config import DilatedAttentionConfig, MultiheadConfig
from .dilated import DilatedAttention, ImprovedDilatedAttention
from .distributed import DistributedDilatedAttention, DistributedMultiheadDilatedAttention
from .multihead import ImprovedMultiheadDilatedAttention, MultiheadDilatedAttention
from .ring import RingDilatedAttention, RingMultiheadDilatedAttention
from .selection import AttentionEnvironment, KindChoice, select_kind

__all__ = [
    "KINDS",
    "create_dilated_attention",
    "create_multihead_dilated_attention",
    "explain_selection",
    "register_kind",
]

logger = logging.getLogger(__name__)

KINDS = ("auto", "standard", "improved", "ring", "distributed", "block_sparse")


@dataclass(frozen=True)
class _KindClasses:
    attention: type  # has from_config(DilatedAttentionConfig, **options)
    multihead: type = MultiheadDilatedAttention  # has from_configs(MultiheadConfig, DilatedAttentionConfig, attention=)


_REGISTRY: dict[str, _KindClasses] = {
    "standard": _KindClasses(DilatedAttention, MultiheadDilatedAttention),
    "improved": _KindClasses(ImprovedDilatedAttention, ImprovedMultiheadDilatedAttention),
    "ring": _KindClasses(RingDilatedAttention, RingMultiheadDilatedAttention),
    "distributed": _KindClasses(DistributedDilatedAttention, DistributedMultiheadDilatedAttention),
    "block_sparse": _KindClasses(BlockSparseDilatedAttention),
}


def register_kind(kind: str, attention_class: type, multihead_class: type = MultiheadDilatedAttention) -> None:
    """Give a kind of :data:`KINDS` (not "auto") other classes, e.g. an experimental variant of one kind."""
    if kind not in _REGISTRY:
        raise ValueError(f"kind must be one of {sorted(_REGISTRY)} to register, got {kind!r}")
    _REGISTRY[kind] = _KindClasses(attention_class, multihead_class)


def explain_selection(
    environment: Optional[AttentionEnvironment] = None,
    *,
    device: Optional[Union[str, torch.device]] = None,
    expected_seq_len: Optional[int] = None,
) -> KindChoice:
    """What ``"auto"`` would pick here (or in ``environment``), with the reason."""
    if environment is None:
        environment = AttentionEnvironment.detect(device, expected_seq_len)
    return select_kind(environment)


def _resolve_kind(kind: str, environment, device, expected_seq_len) -> tuple[_KindClasses, Optional[KindChoice]]:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; valid kinds are {', '.join(repr(k) for k in KINDS)}")
    choice = None
    if kind == "auto":
        choice = explain_selection(environment, device=device, expected_seq_len=expected_seq_len)
        logger.info("dilated attention kind 'auto' -> %r: %s", choice.kind, choice.reason)
        kind = choice.kind
    return _REGISTRY[kind], choice


def _attention_config(attention_config, **fields) -> DilatedAttentionConfig:
    given = {name: value for name, value in fields.items() if value is not None}
    if attention_config is not None:
        if not isinstance(attention_config, DilatedAttentionConfig):
            raise TypeError(f"attention_config must be a DilatedAttentionConfig, got {type(attention_config).__name__}")
        return dataclasses.replace(attention_config, **given)
    if "segment_lengths" not in given or "dilation_rates" not in given:
        raise ValueError("segment_lengths and dilation_rates are required, e.g. segment_lengths=[2048, 4096], "
                         "dilation_rates=[1, 2], or pass attention_config=DilatedAttentionConfig(...)")
    return DilatedAttentionConfig(**given)


def create_dilated_attention(
    kind: str = "auto",
    *,
    segment_lengths: Optional[Sequence[int]] = None,
    dilation_rates: Optional[Sequence[int]] = None,
    dropout: Optional[float] = None,
    use_tf32: Optional[bool] = None,
    mode: Optional[str] = None,
    attention_config: Optional[DilatedAttentionConfig] = None,
    environment: Optional[AttentionEnvironment] = None,
    expected_seq_len: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    **options,
) -> nn.Module:
    """A dilated attention core over (b, n, h, d) tensors.

    Args:
        kind: one of :data:`KINDS`.
        segment_lengths, dilation_rates, dropout, use_tf32, mode: :class:`DilatedAttentionConfig` fields
            (override ``attention_config``'s when both are given).
        environment, expected_seq_len, device: inputs of the "auto" choice (ignored for other kinds).
        options: kind-specific keywords, e.g. ``block_size=``/``sparsity=`` (block_sparse),
            ``use_memory_pool=`` (improved), ``process_group=`` (ring, distributed) or ``chunk_size=`` (ring).
    """
    classes, choice = _resolve_kind(kind, environment, device, expected_seq_len)
    config = _attention_config(attention_config, segment_lengths=segment_lengths, dilation_rates=dilation_rates,
                               dropout=dropout, use_tf32=use_tf32, mode=mode)
    module = classes.attention.from_config(config, **options)
    module.kind_choice = choice
    return module


def create_multihead_dilated_attention(
    kind: str = "auto",
    *,
    embed_dim: Optional[int] = None,
    num_heads: Optional[int] = None,
    segment_lengths: Optional[Sequence[int]] = None,
    dilation_rates: Optional[Sequence[int]] = None,
    dropout: Optional[float] = None,
    bias: Optional[bool] = None,
    layer_norm: Optional[bool] = None,
    layer_norm_eps: Optional[float] = None,
    gamma_init: Optional[float] = None,
    use_tf32: Optional[bool] = None,
    mode: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    multihead_config: Optional[MultiheadConfig] = None,
    attention_config: Optional[DilatedAttentionConfig] = None,
    environment: Optional[AttentionEnvironment] = None,
    expected_seq_len: Optional[int] = None,
    **options,
) -> MultiheadDilatedAttention:
    """Multi-head dilated attention over (b, n, embed_dim) tensors; see :func:`create_dilated_attention`.

    ``embed_dim``, ``num_heads``, ``bias``, ``layer_norm``, ``layer_norm_eps``, ``gamma_init``, ``device``,
    ``dtype`` are :class:`MultiheadConfig` fields (overriding ``multihead_config``'s when both are given).
    """
    classes, choice = _resolve_kind(kind, environment, device, expected_seq_len)
    heads = {name: value for name, value in dict(
        embed_dim=embed_dim, num_heads=num_heads, bias=bias, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
        gamma_init=gamma_init, device=device, dtype=dtype,
    ).items() if value is not None}
    if multihead_config is not None:
        if not isinstance(multihead_config, MultiheadConfig):
            raise TypeError(f"multihead_config must be a MultiheadConfig, got {type(multihead_config).__name__}")
        heads_config = dataclasses.replace(multihead_config, **heads)
    elif "embed_dim" in heads and "num_heads" in heads:
        heads_config = MultiheadConfig(**heads)
    else:
        raise ValueError("embed_dim and num_heads are required, e.g. embed_dim=768, num_heads=12, or pass "
                         "multihead_config=MultiheadConfig(...)")
    config = _attention_config(attention_config, segment_lengths=segment_lengths, dilation_rates=dilation_rates,
                               dropout=dropout, use_tf32=use_tf32, mode=mode)
    attention = classes.attention.from_config(config, **options)
    module = classes.multihead.from_configs(heads_config, config, attention=attention)
    module.kind_choice = choice
    return module
