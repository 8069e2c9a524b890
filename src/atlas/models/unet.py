"""`HighResLatentScoreModel`: the UNet network F(x_in, c_noise, context) that a Denoiser wraps.

The network knows nothing of samplers or schedules: it maps a (preconditioned) input and a per-sample noise
level to an output of the same shape. `atlas.diffusion.Denoiser` turns it into D(x, sigma, cond).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from atlas.attention import ImprovedDilatedAttention

from .blocks import AttentionBlock, Downsample, ResBlock, Upsample, sinusoidal_embedding
from .config import HighResModelConfig


class _Level(nn.Module):
    """One residual block, optionally followed by an attention block."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, mask)


class HighResLatentScoreModel(nn.Module):
    """UNet over pixels or latents with self-attention, text cross-attention and a noise embedding.

    Self-attention is full attention, or dilated attention at ``config.dilated_levels`` (the fast
    ``ImprovedDilatedAttention`` path; it computes the same function as the reference ``DilatedAttention``).

    Call signature: ``model(x, noise_level, context=None, context_mask=None, pooled=None)``
        x: (B, in_channels, H, W), H and W divisible by ``config.downsample_factor``.
        noise_level: (B,) the preconditioning's c_noise.
        context: (B, T, context_dim) token states; required iff the model is text-conditioned.
        context_mask: (B, T) bool, True for real tokens.
        pooled: (B, pooled_dim) pooled text vector; required iff ``config.pooled_dim`` is set.
    Returns (B, out_channels, H, W).
    """

    def __init__(self, config: HighResModelConfig):
        super().__init__()
        self.config = config
        cfg = config
        emb_dim = 4 * cfg.base_channels
        self.noise_features = cfg.base_channels
        self.noise_mlp = nn.Sequential(
            nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.pooled_proj = nn.Linear(cfg.pooled_dim, emb_dim) if cfg.pooled_dim else None

        def level_block(in_ch: int, out_ch: int, level: int) -> _Level:
            attn = None
            if level in cfg.attention_levels:
                dilated = None
                if level in cfg.dilated_levels:
                    dilated = ImprovedDilatedAttention(cfg.dilated_segment_lengths, cfg.dilated_dilation_rates,
                                                       mode=cfg.dilated_mode)
                attn = AttentionBlock(out_ch, cfg.num_heads, cfg.norm_groups, cfg.context_dim, dilated)
            return _Level(ResBlock(in_ch, out_ch, emb_dim, cfg.norm_groups, cfg.dropout), attn)

        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_widths = [cfg.widths[0]]
        ch = cfg.widths[0]
        last = len(cfg.widths) - 1
        for level, width in enumerate(cfg.widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(level_block(ch, width, level))
                ch = width
                skip_widths.append(ch)
            if level < last:
                self.down.append(Downsample(ch))
                skip_widths.append(ch)
        self.mid = nn.ModuleList([level_block(ch, ch, last), _Level(
            ResBlock(ch, ch, emb_dim, cfg.norm_groups, cfg.dropout), None)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.widths))):
            width = cfg.widths[level]
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(level_block(ch + skip_widths.pop(), width, level))
                ch = width
            if level > 0:
                self.up.append(Upsample(ch))
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # -- validation at the boundary -------------------------------------------------------------------
    def _check_inputs(self, x: Tensor, noise_level: Tensor, context: Tensor | None,
                      context_mask: Tensor | None, pooled: Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W); got {tuple(x.shape)}")
        factor = cfg.downsample_factor
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} must be divisible by {factor} "
                f"(2**(len(channel_mult)-1)); pad or resize to a multiple of {factor}"
            )
        if noise_level.shape != (x.shape[0],):
            raise ValueError(f"noise_level must have shape ({x.shape[0]},); got {tuple(noise_level.shape)}")
        if cfg.context_dim is None:
            if context is not None:
                raise ValueError("this model is unconditional (context_dim=None) but a context was given; "
                                 "train a text-conditioned model or drop the prompt")
        else:
            if context is None:
                raise ValueError(
                    "this model is text-conditioned but no context was given; for unconditional output pass "
                    "the text encoder's encoding of the empty prompt \"\""
                )
            if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.context_dim:
                raise ValueError(
                    f"context must have shape ({x.shape[0]}, T, {cfg.context_dim}); got {tuple(context.shape)}"
                )
            if context_mask is not None:
                if context_mask.shape != context.shape[:2] or context_mask.dtype != torch.bool:
                    raise ValueError(f"context_mask must be a bool tensor of shape {tuple(context.shape[:2])}; "
                                     f"got {context_mask.dtype} {tuple(context_mask.shape)}")
                # The value check syncs with the device, which CUDA-graph capture forbids: while capturing, the
                # eager warm-up calls of the same inputs have already checked it.
                capturing = context_mask.is_cuda and torch.cuda.is_current_stream_capturing()
                if not capturing and not bool(context_mask.any(dim=1).all()):
                    raise ValueError("context_mask has a row with no valid token; every prompt needs at least "
                                     "one (the encoder's start token)")
        if cfg.pooled_dim is None:
            if pooled is not None:
                raise ValueError("a pooled text vector was given but this model has pooled_dim=None")
        elif pooled is None or pooled.shape != (x.shape[0], cfg.pooled_dim):
            got = None if pooled is None else tuple(pooled.shape)
            raise ValueError(f"pooled must have shape ({x.shape[0]}, {cfg.pooled_dim}); got {got}")

    def forward(self, x: Tensor, noise_level: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, pooled: Tensor | None = None) -> Tensor:
        self._check_inputs(x, noise_level, context, context_mask, pooled)
        emb = self.noise_mlp(sinusoidal_embedding(noise_level, self.noise_features).to(x.dtype))
        if self.pooled_proj is not None:
            emb = emb + self.pooled_proj(pooled)

        use_checkpoint = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()

        def run(block: nn.Module, h: Tensor) -> Tensor:
            if isinstance(block, (Downsample, Upsample)):
                return block(h)
            if use_checkpoint:
                return checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
            return block(h, emb, context, context_mask)

        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = run(block, h)
            skips.append(h)
        for block in self.mid:
            h = run(block, h)
        for block in self.up:
            if isinstance(block, _Level):
                h = torch.cat([h, skips.pop()], dim=1)
            h = run(block, h)
        return self.conv_out(F.silu(self.norm_out(h)))
