"""Memory estimates for atlas's UNet (`HighResLatentScoreModel`) that are measured, not typed in.

``estimate_memory(config, batch_size=..., resolution=...)`` builds the network on the ``meta`` device (no
memory) and counts parameters, gradients and optimizer state EXACTLY (the meta tensors' bytes; the state a
real ``torch.optim`` optimizer allocates). Activations come from tracing one eager step on meta
(:func:`atlas.memory.trace.trace_step`): a denoiser call under ``no_grad`` (inference), or forward, loss,
backward (gradient checkpointing's recomputations and dropout masks included), gradient clipping and
optimizer step (training). Attention kernels and autocast are modelled by the trace (its module docstring);
``attention_mb`` is what the chosen kernel adds to the peak over an ideal kernel without internals (a second
trace). What the trace cannot see is added explicitly: the sampler's state, tiles' full-size accumulators,
the EMA copy and the transport kernel's buffers (``kernel_buffers_bytes``).

Mixed precision. Training with ``dtype`` fp16/bf16 follows ``atlas.training.Trainer``: fp32 parameters,
gradients and AdamW state under autocast. Inference casts the network to ``dtype``, as the pipeline does.

EMA. ``ema=True`` (training; the Trainer's default) adds one copy of the network's parameters and buffers in
their dtype (fp32 in training), ``terms["ema_mb"]``, to the total without tracing it: ``atlas.training.EMA``
clones the state dict once and updates it in place after the optimizer step, so it is a constant with no
temporaries. The Trainer's EMA shadows the whole bundle; a text encoder's or autoencoder's share is not part
of a ``HighResModelConfig`` and is not counted here (nor are their parameters or optimizer state).
Sizes in MiB (``*_mb`` = bytes / 2**20).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from atlas.memory.tiling import TilingConfig, tile_layout
from atlas.memory.trace import (ATTENTION_KERNELS, OPTIMIZERS, TRACE_DEVICES, make_optimizer, optimizer_state,
                                tensor_bytes, trace_step)
from atlas.models import HighResLatentScoreModel, HighResModelConfig

__all__ = ["ATTENTION_KERNELS", "MemoryEstimate", "estimate_memory"]

MIB = float(1 << 20)
MODES = ("inference", "training")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Latent-size tensors a sampler holds across a denoiser call: Heun's x, denoised, d and x_next (the most of
# any atlas sampler; atlas.diffusion.samplers.sample_heun).
SAMPLER_LATENTS = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak device memory of one sampling step (inference) or one optimizer step (training), in MiB.

    ``total_mb`` is the peak of the traced timeline plus the explicit terms; the other fields are each
    part's own size (parameters, gradients, optimizer state: exact; activations: the most live at once with
    an ideal attention kernel; attention: what the chosen kernel adds to the peak). They need not add up to
    the total, because gradients, activations and optimizer temporaries do not all peak together;
    ``terms["at_peak_mb"]`` splits the traced peak itself.
    """

    model_params_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    attention_mb: float
    kernel_buffers_mb: float
    total_mb: float
    inputs: dict[str, Any] = field(default_factory=dict)
    terms: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Every field by name (the sizes, plus ``inputs`` and ``terms`` as dicts)."""
        return {f.name: dict(getattr(self, f.name)) if f.name in ("inputs", "terms") else getattr(self, f.name)
                for f in fields(self)}


# -- the network and its step ------------------------------------------------------------------------------
def _build_network(model_config: HighResModelConfig, dtype: torch.dtype) -> HighResLatentScoreModel:
    with torch.device("meta"):
        network = HighResLatentScoreModel(model_config)
    return network.to(dtype)


def _step_inputs(cfg: HighResModelConfig, batch: int, side: tuple[int, int], tokens: Optional[int],
                 dtype: torch.dtype, training: bool) -> Callable[[], tuple]:
    """Allocates ``(x, noise, sigma, cond)`` on meta: x (B, C, H, W), noise like x (training; else None),
    sigma (B,), cond the network's keyword tensors (context (B, T, D), context_mask (B, T), pooled (B, P))."""
    in_dtype = torch.float32 if training else dtype

    def make() -> tuple:
        x = torch.empty(batch, cfg.in_channels, *side, device="meta", dtype=in_dtype)
        noise = torch.empty_like(x) if training else None
        sigma = torch.empty(batch, device="meta", dtype=in_dtype)
        cond: dict[str, Tensor] = {}
        if cfg.context_dim is not None:
            cond["context"] = torch.empty(batch, tokens, cfg.context_dim, device="meta", dtype=in_dtype)
            # The network checks on the host that every row has a token, which a meta tensor cannot answer: the
            # (B, T) bool mask stays on the CPU and moves to meta at each attention call.
            cond["context_mask"] = torch.ones(batch, tokens, dtype=torch.bool)
        if cfg.pooled_dim is not None:
            cond["pooled"] = torch.empty(batch, cfg.pooled_dim, device="meta", dtype=in_dtype)
        return x, noise, sigma, cond

    return make


def _denoiser_step(network: HighResLatentScoreModel) -> Callable[..., Tensor]:
    """Inference (noise None): one denoiser call ``c_skip x + c_out F(c_in x, c_noise)`` (EDM preconditioning).
    Training: the same on ``x0 + sigma noise``, and a weighted MSE loss against x0."""

    def step(x: Tensor, noise: Optional[Tensor], sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        scale = sigma[:, None, None, None]
        if noise is None:  # inference: the denoised estimate
            return x * scale + network(x * scale, sigma, **cond) * scale
        noisy = x + scale * noise
        denoised = noisy * scale + network(noisy * scale, sigma, **cond).float() * scale
        return (scale * (denoised - x) ** 2).mean()

    return step


# -- arguments ---------------------------------------------------------------------------------------------
def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _network_side(cfg: HighResModelConfig, resolution: Union[int, tuple[int, int]],
                  latent_factor: int) -> tuple[int, int]:
    sides = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(sides) != 2 or not all(_positive_int(s) for s in sides):
        raise ValueError(f"resolution={resolution!r} must be a positive int or (height, width) in pixels")
    if not _positive_int(latent_factor) or any(s % latent_factor for s in sides):
        raise ValueError(f"resolution {sides} must be divisible by latent_factor={latent_factor!r} (the "
                         "autoencoder's downsampling; 1 for pixel-space models)")
    side = (sides[0] // latent_factor, sides[1] // latent_factor)
    factor = cfg.downsample_factor
    if side[0] % factor or side[1] % factor:
        raise ValueError(f"the network input {side} (resolution {sides} / latent_factor {latent_factor}) must be "
                         f"divisible by the network's downsample factor {factor}; use a multiple of "
                         f"{factor * latent_factor} pixels (or a tile size that is)")
    return side


def estimate_memory(model_config: HighResModelConfig, *, batch_size: int, resolution: Union[int, tuple[int, int]],
                    dtype: torch.dtype = torch.float32, mode: str = "inference", attention: str = "sdpa",
                    guidance: Optional[bool] = None, tile: Optional[TilingConfig] = None,
                    optimizer: Optional[str] = None, kernel_buffers_bytes: int = 0,
                    text_tokens: Optional[int] = None, latent_factor: int = 1, device: str = "cuda",
                    ema: Optional[bool] = None) -> MemoryEstimate:
    """Peak device memory of a sampling step (``mode="inference"``) or a training step (``"training"``).

    Args:
        model_config: a ``HighResModelConfig``.
        batch_size: images per sampling call, or the training micro-batch.
        resolution: image side (or (height, width)) in pixels; the network sees ``resolution / latent_factor``.
        dtype: inference: the dtype the network is cast to; training: the autocast compute dtype (parameters,
            gradients and optimizer state stay fp32, as in ``atlas.training.Trainer``).
        attention: one of :data:`ATTENTION_KERNELS` (:mod:`atlas.memory.trace`).
        guidance: classifier-free guidance doubles the network batch; default True for a text-conditioned model
            in inference, False otherwise (training and unconditional models cannot use it).
        tile: inference only: tiled denoising (the network sees tiles; full-size fp32 accumulators are added).
        optimizer: training only: "adamw" (default), "adam", "sgd" (no momentum) or "none".
        kernel_buffers_bytes: bytes of the transport coupling's kernel operator, added as they are.
        text_tokens: the text encoder's token count T (its ``max_length``); required iff the model reads text.
        latent_factor: the autoencoder's downsampling factor (1 for pixel-space models).
        device: whose kernels to model, "cuda" or "cpu" (SDPA backend, CPU thread blocks, foreach optimizer).
        ema: training only: add the Trainer's EMA shadow copy (default True, the Trainer's default; module
            docstring: the network's parameters and buffers, not traced).
    """
    cfg = model_config
    for name, value, choices in (("mode", mode, MODES), ("attention", attention, ATTENTION_KERNELS),
                                 ("dtype", dtype, DTYPES), ("device", device, TRACE_DEVICES)):
        _check_choice(name, value, choices)
    training, conditional = mode == "training", cfg.context_dim is not None
    if tile is not None and not isinstance(tile, TilingConfig):
        raise TypeError(f"tile must be an atlas.memory.tiling.TilingConfig, got {type(tile).__name__}")
    for ok, message in (
        (_positive_int(batch_size), f"batch_size={batch_size!r} must be a positive integer"),
        (isinstance(kernel_buffers_bytes, int) and kernel_buffers_bytes >= 0,
         f"kernel_buffers_bytes={kernel_buffers_bytes!r} must be an int >= 0 (bytes)"),
        (not conditional or _positive_int(text_tokens), f"text_tokens={text_tokens!r}: this model reads text "
         f"(context_dim={cfg.context_dim}); pass the text encoder's max_length (77 for CLIP)"),
        (conditional or text_tokens is None, f"text_tokens={text_tokens!r} given for an unconditional model"),
        (training or (optimizer is None and ema is None), f"optimizer={optimizer!r} and ema={ema!r} apply to "
         "mode='training' only; leave them None for inference"),
        (not (training and tile is not None), "tile applies to mode='inference' only; pass tile=None"),
        (not guidance or (conditional and not training), f"guidance=True needs a text-conditioned model in "
         f"inference (mode={mode!r}, context_dim={cfg.context_dim}); pass guidance=False"),
    ):
        if not ok:
            raise ValueError(message)
    guidance = (conditional and not training) if guidance is None else bool(guidance)
    optimizer = (optimizer or "adamw") if training else None
    _check_choice("optimizer", optimizer, OPTIMIZERS + (None,))
    ema = (True if ema is None else bool(ema)) if training else False
    side = _network_side(cfg, resolution, latent_factor)

    net_batch = batch_size * (2 if guidance else 1)
    trace_batch, trace_side, tiles, tile_bytes, elem = net_batch, side, 1, 0, dtype.itemsize
    if tile is not None:
        latent_tile = tile.in_latent_units(latent_factor)
        layout = tile_layout(side[0], side[1], latent_tile.tile_size, latent_tile.stride)
        if len(layout) > 1:
            tiles, trace_side = len(layout), _network_side(cfg, (layout.tile_height, layout.tile_width), 1)
            trace_batch = net_batch if tile.sequential else net_batch * tiles
            full, tile_px, out_channels = side[0] * side[1], trace_side[0] * trace_side[1], cfg.out_channels
            # TiledDenoiser: the full input, the fp32 accumulator and its final cast, per-tile weights, and
            # two fp32 tile temporaries (cast and weighted) while accumulating.
            tile_bytes = (net_batch * cfg.in_channels * full * elem + net_batch * out_channels * full * (4 + elem)
                          + tiles * tile_px * 4 + 2 * net_batch * out_channels * tile_px * 4)

    threads = torch.get_num_threads() if device == "cpu" else 1
    network = _build_network(cfg, torch.float32 if training else dtype).train(training)
    opt = make_optimizer(optimizer, network, foreach=device == "cuda") if training else None
    autocast = dtype if training and dtype != torch.float32 else None
    make_inputs = _step_inputs(cfg, trace_batch, trace_side, text_tokens, dtype, training)
    step = _denoiser_step(network)
    # the ideal kernel has no internals: the difference of the two peaks is attention_mb
    traced, ideal = (trace_step(network, make_inputs, step, attention=kernel, device=device, threads=threads,
                                autocast_dtype=autocast, training=training, optimizer=opt)
                     for kernel in (attention, "ideal"))
    peak, ideal_peak = traced.peak_bytes, ideal.peak_bytes
    ideal_parts = ideal.ledger.category_peaks("meta", ideal.relabel)

    param_bytes = tensor_bytes([*network.parameters(), *network.buffers()])
    grad_bytes = tensor_bytes([p for p in network.parameters() if p.requires_grad]) if training else 0
    sampler_bytes = 0 if training else SAMPLER_LATENTS * batch_size * cfg.in_channels * side[0] * side[1] * elem
    ema_bytes = param_bytes if ema else 0
    total = peak + sampler_bytes + tile_bytes + ema_bytes + kernel_buffers_bytes
    terms = {
        "parameter_count": sum(t.numel() for t in network.parameters()), "network_batch": net_batch,
        "network_side": side, "tiles": tiles, "traced_batch": trace_batch, "traced_side": trace_side,
        "traced_peak_mb": peak / MIB, "ideal_attention_peak_mb": ideal_peak / MIB,
        "peak_phase": traced.ledger.peak_phase("meta"),
        "at_peak_mb": {k: v / MIB for k, v in traced.ledger.breakdown_at_peak("meta", traced.relabel).items()},
        "optimizer_step_temporaries_mb": ideal_parts.get("optimizer_step", 0) / MIB,
        "sampler_state_mb": sampler_bytes / MIB, "tile_buffers_mb": tile_bytes / MIB, "ema_mb": ema_bytes / MIB,
        "attention_calls": traced.attention_calls, "cpu_threads": threads if device == "cpu" else None,
    }
    inputs = dict(batch_size=batch_size, resolution=resolution, dtype=str(dtype).replace("torch.", ""), mode=mode,
                  attention=attention, guidance=guidance, tile=tile, optimizer=optimizer,
                  kernel_buffers_bytes=kernel_buffers_bytes, text_tokens=text_tokens, latent_factor=latent_factor,
                  device=device, ema=ema)
    optimizer_bytes = tensor_bytes(optimizer_state(opt))
    return MemoryEstimate(
        model_params_mb=param_bytes / MIB, gradients_mb=grad_bytes / MIB, optimizer_mb=optimizer_bytes / MIB,
        activations_mb=ideal_parts.get("activations", 0) / MIB, attention_mb=(peak - ideal_peak) / MIB,
        kernel_buffers_mb=kernel_buffers_bytes / MIB, total_mb=total / MIB, inputs=inputs, terms=terms)
