"""`HighResModelConfig`: the self-validating description of a `HighResLatentScoreModel`.

Everything needed to rebuild a network lives here and is written to a checkpoint's ``config.json``, so a
model on disk is rebuilt from its files alone (never from code arguments).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from atlas.attention.config import MODES, check_mode, check_pattern
from atlas.fields import check_known_fields


def _fail(field_name: str, value: Any, requirement: str, fix: str) -> None:
    raise ValueError(f"HighResModelConfig.{field_name}={value!r}: {requirement}; {fix}")


@dataclass
class HighResModelConfig:
    """Architecture of the UNet score network.

    Attributes:
        in_channels: channels of the input (3 for RGB pixels, 1 for grey, 4 for a typical latent).
        out_channels: channels of the output; ``None`` means the same as ``in_channels``.
        resolution: native (training) side length in pixels/latent cells. Inputs of any side divisible by
            ``2 ** (len(channel_mult) - 1)`` are accepted; this value is what samplers default to.
        base_channels: channels at the first level.
        channel_mult: one multiplier per resolution level; level ``i`` has ``base_channels * channel_mult[i]``.
        num_res_blocks: residual blocks per level on the way down (the way up has one more, as in DDPM).
        attention_levels: indices of levels that get self-attention (and cross-attention when
            ``context_dim`` is set) after each residual block.
        num_heads: attention heads (must divide every attended width).
        context_dim: width of the text encoder's token states; ``None`` for an unconditional model.
        pooled_dim: width of the pooled text vector added to the noise embedding; ``None`` for none.
        dropout: dropout probability inside residual blocks.
        norm_groups: GroupNorm groups (must divide every level's width).
        gradient_checkpointing: recompute block activations in the backward pass to save memory.
        dilated_levels: attention levels (a subset of ``attention_levels``) whose self-attention is dilated
            attention (LongNet, Ding et al. 2023) over the row-major flattened H*W tokens instead of full
            attention; cross-attention to the text stays full. The parameters are the same either way (the
            dilated core has none), so weights load across the switch. ``()``: none.
        dilated_segment_lengths: the segment lengths ``w_i`` in tokens (one per pattern); a segment of ``w``
            tokens is ``w / W`` image rows. ``w >= H*W`` is one segment and ``H*W % w`` need not be 0.
        dilated_dilation_rates: the dilation rates ``r_i``, one per segment length; a segment keeps every
            ``r``-th token. ``[H*W]`` with ``[1]`` is exactly full attention.
        dilated_mode: ``"head_split"`` (heads split across the patterns, cheapest) or ``"longnet"`` (every head
            runs every pattern, mixed by softmax denominators); see ``atlas.attention.MODES``.
    """

    in_channels: int = 3
    out_channels: int | None = None
    resolution: int = 32
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1, 2)
    num_heads: int = 4
    context_dim: int | None = None
    pooled_dim: int | None = None
    dropout: float = 0.0
    norm_groups: int = 32
    gradient_checkpointing: bool = False
    dilated_levels: tuple[int, ...] = ()
    dilated_segment_lengths: tuple[int, ...] = ()
    dilated_dilation_rates: tuple[int, ...] = ()
    dilated_mode: str = "head_split"

    # Filled in __post_init__; not a constructor argument.
    widths: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(sorted(int(level) for level in self.attention_levels))
        if self.out_channels is None:
            self.out_channels = self.in_channels
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "num_heads", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(name, value, "must be a positive integer", "pass an int >= 1")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            _fail("channel_mult", self.channel_mult, "must be a non-empty tuple of positive ints",
                  "use e.g. (1, 2, 2)")
        levels = len(self.channel_mult)
        for level in self.attention_levels:
            if not 0 <= level < levels:
                _fail("attention_levels", self.attention_levels,
                      f"level {level} does not exist (levels are 0..{levels - 1})",
                      "list only indices into channel_mult")
        factor = self.downsample_factor
        if not isinstance(self.resolution, int) or self.resolution < factor or self.resolution % factor:
            nearest = max(factor, round(self.resolution / factor) * factor) if isinstance(self.resolution, int) else factor
            _fail("resolution", self.resolution,
                  f"must be a positive multiple of 2**(len(channel_mult)-1) = {factor}",
                  f"use {nearest}, or fewer levels in channel_mult")
        self.widths = tuple(self.base_channels * m for m in self.channel_mult)
        for width in self.widths:
            if width % self.norm_groups:
                _fail("norm_groups", self.norm_groups, f"must divide every level width {self.widths}",
                      "choose base_channels a multiple of norm_groups, or fewer groups")
        for level in self.attention_levels:
            if self.widths[level] % self.num_heads:
                _fail("num_heads", self.num_heads,
                      f"must divide the width {self.widths[level]} of attention level {level}",
                      "choose a divisor of that width")
        for name in ("context_dim", "pooled_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                _fail(name, value, "must be None or a positive integer", "pass the text encoder's width")
        if not 0.0 <= float(self.dropout) < 1.0:
            _fail("dropout", self.dropout, "must be in [0, 1)", "use 0.0 to disable dropout")
        if self.context_dim is not None and not self.attention_levels:
            _fail("attention_levels", self.attention_levels,
                  "is empty, so a text-conditioned model (context_dim set) would never read its context",
                  "add at least one attention level")
        self._check_dilated()

    def _check_dilated(self) -> None:
        self.dilated_levels = tuple(sorted(int(level) for level in self.dilated_levels))
        for level in self.dilated_levels:
            if level not in self.attention_levels:
                _fail("dilated_levels", self.dilated_levels,
                      f"level {level} has no self-attention (attention_levels={self.attention_levels})",
                      f"add {level} to attention_levels or remove it from dilated_levels")
        if not self.dilated_levels:
            for name in ("dilated_segment_lengths", "dilated_dilation_rates"):
                if getattr(self, name):
                    _fail(name, getattr(self, name), "has no effect because dilated_levels is empty",
                          "list the levels to dilate in dilated_levels, or leave this field empty")
            if self.dilated_mode != "head_split":
                _fail("dilated_mode", self.dilated_mode, "has no effect because dilated_levels is empty",
                      "list the levels to dilate in dilated_levels, or leave the default 'head_split'")
            self.dilated_segment_lengths = self.dilated_dilation_rates = ()
            return
        try:
            segments, rates = check_pattern(self.dilated_segment_lengths, self.dilated_dilation_rates)
        except (TypeError, ValueError) as error:
            _fail("dilated_segment_lengths/dilated_dilation_rates",
                  (self.dilated_segment_lengths, self.dilated_dilation_rates), str(error),
                  "give one positive segment length per positive dilation rate, e.g. (64, 256) and (1, 2)")
        self.dilated_segment_lengths, self.dilated_dilation_rates = segments, rates
        try:
            check_mode(self.dilated_mode)
        except ValueError:
            _fail("dilated_mode", self.dilated_mode, f"must be one of {MODES}", "use 'head_split' (the default)")
        if self.dilated_mode == "head_split" and self.num_heads < len(segments):
            _fail("num_heads", self.num_heads,
                  f"must be >= the {len(segments)} dilated patterns in dilated_mode='head_split' (one head "
                  "group per pattern)", "use more heads, fewer patterns, or dilated_mode='longnet'")

    @property
    def downsample_factor(self) -> int:
        """Total spatial reduction of the UNet: inputs must be divisible by it."""
        return 2 ** (len(self.channel_mult) - 1)

    def check_context_dim(self, encoder_dim: int | None, encoder_name: str = "text encoder") -> None:
        """Raise if a text encoder's output width does not match this model's ``context_dim``."""
        if encoder_dim != self.context_dim:
            raise ValueError(
                f"HighResModelConfig.context_dim={self.context_dim!r} does not match the {encoder_name}'s "
                f"output width {encoder_dim!r}; set context_dim={encoder_dim!r} or use a matching encoder"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HighResModelConfig":
        check_known_fields(cls, data)
        return cls(**data)
