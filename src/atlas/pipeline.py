"""Text-to-image generation with a `ModelBundle`: prompts -> conditioning -> sampler -> decoded images in [0, 1].

:class:`Pipeline` composes the layers once per model and settings (:class:`atlas.config.SamplerConfig`):
precision (autocast around the network), CUDA graphs, tiling (MultiDiffusion over overlapping tiles), coarse-to-
fine sampling above the native resolution, out-of-memory back-off, and decoding through the bundle's autoencoder.

Each image has its own random generator seeded with ``seed + index``, so an image does not depend on the batch it
was generated in (batch size, chunking, back-off and order of the other images leave it unchanged).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from atlas.bundle import ModelBundle
from atlas.config.sampler import SamplerConfig
from atlas.diffusion import (StepInfo, classifier_free_guidance, conditional_denoiser, get_sigmas, initial_noise,
                             sample)
from atlas.diffusion.hierarchical import HierarchyLevel, default_level_plan, sample_hierarchical
from atlas.config.memory_estimate import estimate_memory
from atlas.memory.guard import BackoffLog, run_with_backoff
from atlas.memory.tiling import TiledDenoiser, TilingConfig
from atlas.runtime.cuda_graphs import CUDAGraphModelWrapper
from atlas.runtime.hardware import Capabilities, detect_capabilities
from atlas.runtime.precision import AUTOCAST_DTYPES, AutocastNetwork, compute_dtype, resolve_precision

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "dpmpp_2m"
SIGMA_RANGE_SCHEDULES = ("karras", "exponential")


@dataclass
class GenerationResult:
    """images: (N, C, H, W) in [0, 1]; prompts[i], negative_prompts[i] and seeds[i] belong to image i.

    latents: the sampler's final states (N, C', h, w) before decoding (the images themselves for pixel models).
    intermediates: with ``return_intermediates``, the denoised estimate of every step, decoded to [0, 1].
    backoff: what the out-of-memory back-off did (None when it was off). stats: settings and timings.
    """

    images: Tensor
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    latents: Optional[Tensor] = None
    intermediates: Optional[list[Tensor]] = None
    backoff: Optional[BackoffLog] = None
    stats: dict[str, Any] = field(default_factory=dict)


def expand_prompts(prompts: Sequence[str] | str | None, negative_prompts: Sequence[str] | str | None,
                   num_samples: int) -> tuple[list[str], list[str]]:
    """One (prompt, negative prompt) pair per image, prompt-major: ``num_samples`` images per prompt."""
    if isinstance(prompts, str):
        prompts = [prompts]
    base = list(prompts) if prompts else [""]
    if negative_prompts is None:
        negatives = [""] * len(base)
    elif isinstance(negative_prompts, str):
        negatives = [negative_prompts] * len(base)
    else:
        negatives = list(negative_prompts)
        if len(negatives) == 1:
            negatives = negatives * len(base)
        if len(negatives) != len(base):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(base)} prompts; give one negative "
                             f"prompt per prompt, a single one for all, or none")
    return ([p for p in base for _ in range(num_samples)], [n for n in negatives for _ in range(num_samples)])


def to_unit_range(images: Tensor) -> Tensor:
    """Model-space images (about [-1, 1]) -> float32 [0, 1] on the CPU."""
    return ((images.float() + 1) / 2).clamp(0, 1).cpu()


class Pipeline:
    """Generation for one bundle with one :class:`SamplerConfig`; reusable across calls (graphs stay cached).

    Args:
        bundle: the model (network, text encoder, diffusion spec, optional autoencoder), on its device.
        config: generation settings.
        capabilities: the device's record (default: detected); decides ``precision="auto"``.
    """

    def __init__(self, bundle: ModelBundle, config: SamplerConfig | None = None, *,
                 capabilities: Capabilities | None = None):
        self.bundle = bundle.eval()
        self.config = config or SamplerConfig()
        self.capabilities = capabilities or detect_capabilities(bundle.device)
        self.precision = resolve_precision(self.config.precision, self.capabilities)
        network = bundle.network
        self.graphs: Optional[CUDAGraphModelWrapper] = None
        if self.config.enable_cuda_graphs:
            if bundle.device.type != "cuda":
                log.warning("enable_cuda_graphs: CUDA graphs need a CUDA device, this model is on %s; running eagerly",
                            bundle.device)
            self.graphs = CUDAGraphModelWrapper(network, warmup_iters=self.config.cuda_graph_warmup_iters,
                                                max_cache_size=self.config.cuda_graph_cache_size)
            network = self.graphs
        dtype = next(bundle.network.parameters()).dtype
        if self.precision != "fp32" and dtype != torch.float32:
            raise ValueError(f"precision={self.precision!r} autocasts float32 weights, but this model is {dtype}; "
                             "use precision='fp32' (or 'auto' on a CPU) with a model cast to another dtype")
        self.network = AutocastNetwork(network, AUTOCAST_DTYPES[self.precision])
        self.tiling = self._latent_tiling(self.config.tiling_config())

    # -- geometry ------------------------------------------------------------------------------------------------
    def _latent_side(self, resolution: int) -> int:
        """Image side in pixels -> the side the network samples at (checked against the UNet's divisibility)."""
        factor, unet = self.bundle.latent_factor, self.bundle.network.config.downsample_factor
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution={resolution!r} must be a positive number of pixels")
        if resolution % (factor * unet):
            fit = max(factor * unet, resolution // (factor * unet) * factor * unet)
            raise ValueError(f"resolution={resolution} must be a multiple of {factor * unet} for this model "
                             f"(autoencoder factor {factor} x UNet downsampling {unet}); use {fit}")
        return resolution // factor

    def _latent_tiling(self, tiling: Optional[TilingConfig]) -> Optional[TilingConfig]:
        if tiling is None:
            return None
        latent = tiling.in_latent_units(self.bundle.latent_factor)
        unet = self.bundle.network.config.downsample_factor
        if latent.tile_size % unet:
            raise ValueError(f"tile_size={tiling.tile_size} px is {latent.tile_size} in the model's units, not a "
                             f"multiple of its UNet downsampling {unet}; use tile_size="
                             f"{max(1, latent.tile_size // unet) * unet * self.bundle.latent_factor}")
        return latent

    def level_plan(self, latent_side: int) -> tuple[HierarchyLevel, ...]:
        """Refinement levels for a latent side above the native one (none at or below it, or when disabled)."""
        native = self.bundle.network.config.resolution
        if latent_side <= native or not self.config.hierarchical:
            return ()
        # Doublings of the native side while they stay below the target, then the target itself.
        template = default_level_plan(native, 2)[0]
        sizes, size = [], native * 2
        while size < latent_side:
            sizes.append(size)
            size *= 2
        levels = [HierarchyLevel(s, template.sigma_start, template.steps) for s in sizes + [latent_side]]
        return tuple(levels)

    def _fallback_tiling(self, latent_side: int) -> Optional[TilingConfig]:
        """The tiles the out-of-memory back-off switches to: half the image side (None if that is too small)."""
        unet = self.bundle.network.config.downsample_factor
        tile = (latent_side // 2) // unet * unet
        return None if tile < unet else TilingConfig(tile, tile_overlap=0.25, sequential=True)

    # -- sampling ------------------------------------------------------------------------------------------------
    def _sigmas(self, steps: int) -> Tensor:
        spec, schedule = self.bundle.diffusion, self.config.schedule
        span = {"sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max} if schedule in SIGMA_RANGE_SCHEDULES else {}
        if schedule == "flow":
            span = {"sigma_max": spec.sigma_max}
        dtype = next(self.bundle.network.parameters()).dtype
        return get_sigmas(schedule, steps, **span).to(self.bundle.device, dtype)

    def _denoise_fn(self, prompts: list[str], negatives: list[str], guidance_scale: float,
                    tiling: Optional[TilingConfig]):
        """The sampler's ``DenoiseFn``: the bundle's denoiser (tiled if asked) with prompts and guidance bound."""
        bundle = self.bundle
        denoiser = bundle.denoiser(self.network)
        base = denoiser if tiling is None else TiledDenoiser(denoiser, tiling)
        if not bundle.is_conditional:
            return conditional_denoiser(base, None)
        cond = bundle.encode(prompts)
        if guidance_scale == 1.0:
            return conditional_denoiser(base, cond)
        return classifier_free_guidance(base, cond, bundle.encode(negatives), guidance_scale)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str] | str | None = None, *,
                 negative_prompts: Sequence[str] | str | None = None, num_samples: int = 1,
                 steps: int | None = None, guidance_scale: float = 3.0, seed: int = 0,
                 resolution: int | None = None, callback: Callable[[StepInfo], None] | None = None,
                 return_intermediates: bool = False) -> GenerationResult:
        """Generate ``num_samples`` images per prompt (see :func:`generate` for the arguments)."""
        bundle, config = self.bundle, self.config
        steps = config.timesteps if steps is None else steps
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} must be an integer >= 1; 20-50 is typical")
        if not guidance_scale >= 0:
            raise ValueError(f"guidance_scale={guidance_scale} must be >= 0 (1 = no guidance)")
        if not bundle.is_conditional and negative_prompts:
            raise ValueError("negative prompts need a text-conditioned model; this one is unconditional")
        all_prompts, all_negatives = expand_prompts(prompts, negative_prompts, num_samples)
        if not bundle.is_conditional:
            bundle.encode(all_prompts)  # raises if any prompt is non-empty: prompts are never silently dropped
        side = bundle.native_resolution if resolution is None else resolution
        latent_side = self._latent_side(side)
        levels = self.level_plan(latent_side)
        if levels and steps < 2:
            raise ValueError(f"steps={steps}: generating above the native resolution ({bundle.native_resolution}px) "
                             "is coarse-to-fine and needs steps >= 2 (its refinement starts inside the native grid)")
        start_side = bundle.network.config.resolution if levels else latent_side
        sigmas = self._sigmas(steps)
        total, seeds = len(all_prompts), [seed + i for i in range(len(all_prompts))]
        channels, device = bundle.network.config.in_channels, bundle.device
        dtype = next(bundle.network.parameters()).dtype
        # Configured tiles act only on images larger than a tile; when they do not act here, the out-of-memory
        # back-off may still switch to tiles of half the image.
        tiles_act = self.tiling is not None and self.tiling.tile_size < latent_side
        fallback = None if tiles_act else self._fallback_tiling(latent_side)
        # Per chunk start: its final latents and per-step estimates (a chunk retried by the back-off overwrites
        # what its failed attempt left).
        chunk_latents: dict[int, Tensor] = {}
        chunk_steps: dict[int, list[Tensor]] = {}
        def run_chunk(start: int, stop: int, tiled: bool) -> Tensor:
            rows = slice(start, stop)
            steps_seen = chunk_steps[start] = []

            def report(info: StepInfo) -> None:
                if return_intermediates:
                    steps_seen.append(to_unit_range(bundle.decode(info.denoised)))
                if callback is not None:
                    callback(info)

            tiling = fallback if tiled and fallback is not None else self.tiling
            generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[rows]]
            x = initial_noise((stop - start, channels, start_side, start_side), sigmas[0].item(),
                              generators=generators, dtype=dtype, device=device)
            denoise = self._denoise_fn(all_prompts[rows], all_negatives[rows], guidance_scale, tiling)
            if levels:
                x = sample_hierarchical(config.sampler, lambda level, shape: denoise, x, sigmas, levels,
                                        generators=generators, callback=report)
            else:
                x = sample(config.sampler, denoise, x, sigmas, generators=generators, callback=report)
            chunk_latents[start] = x.cpu()
            return to_unit_range(bundle.decode(x))

        started = time.perf_counter()
        settings = {"batch_size": config.batch_size or total, "shape": (config.batch_size or total, channels,
                                                                          latent_side, latent_side),
                    "resolution": side, "mixed_precision": self.precision != "fp32",
                    "guidance_scale": guidance_scale, "tiling": tiles_act}
        if tiles_act:
            settings["tile_size"] = config.tile_size
        backoff = None
        if config.oom_backoff:
            images, backoff = run_with_backoff(run_chunk, total, config.batch_size or total,
                                               tiling_available=fallback is not None, settings=settings,
                                               device=device, logger=log)
        else:
            chunk = config.batch_size or total
            images = torch.cat([run_chunk(i, min(i + chunk, total), False) for i in range(0, total, chunk)])
        stats = {"precision": self.precision, "sampler": config.sampler, "steps": steps, "resolution": side,
                 "latent_resolution": latent_side, "levels": [level.size[0] for level in levels],
                 "tiling": None if self.tiling is None else asdict(self.tiling) | {"stride": self.tiling.stride},
                 "tiles_act": tiles_act, "seconds": time.perf_counter() - started}
        if self.graphs is not None:
            stats["cuda_graphs"] = self.graphs.stats()
        starts = sorted(chunk_latents)
        intermediates = None
        if return_intermediates:
            intermediates = [torch.cat([chunk_steps[s][k] for s in starts]) for k in range(len(chunk_steps[0]))]
        return GenerationResult(images, all_prompts, all_negatives, seeds, torch.cat([chunk_latents[s] for s in starts]),
                                intermediates, backoff, stats)

    # -- memory ----------------------------------------------------------------------------------------------------
    def estimate_memory_usage(self, batch_size: int, resolution: int, *, guidance_scale: float = 3.0
                              ) -> dict[str, Any]:
        """Estimated peak of one sampling step at ``batch_size`` images of ``resolution`` pixels, in MiB.

        The network's part is :func:`atlas.config.memory_estimate.estimate_memory` (a traced model: activations,
        attention kernels, classifier-free guidance doubling, tiles); the text encoder's and autoencoder's
        parameters are added exactly. Keys: model_params_mb, activations_mb, attention_mb, total_mb, and the
        estimator's other terms.
        """
        bundle = self.bundle
        self._latent_side(resolution)
        guided = bundle.is_conditional and guidance_scale not in (0.0, 1.0)
        device = "cuda" if bundle.device.type == "cuda" else "cpu"
        estimate = estimate_memory(
            bundle.network.config, batch_size=batch_size, resolution=resolution,
            dtype=compute_dtype(self.precision), mode="inference", guidance=guided,
            tile=self.config.tiling_config(), latent_factor=bundle.latent_factor, device=device,
            text_tokens=bundle.text_encoder.config.max_length if bundle.is_conditional else None)
        others = [m for m in (bundle.text_encoder, bundle.autoencoder) if m is not None]
        extra_mb = sum(p.numel() * p.element_size() for m in others for p in m.parameters()) / 2 ** 20
        report = estimate.as_dict()
        report.update(model_params_mb=estimate.model_params_mb + extra_mb, total_mb=estimate.total_mb + extra_mb,
                      batch_size=batch_size, resolution=resolution, precision=self.precision, guidance=guided)
        return report

    def check_memory(self, batch_size: int, resolution: int, *, guidance_scale: float = 3.0) -> list[str]:
        """Warn before work starts when the estimated peak exceeds the device's free memory; returns the
        warnings (empty when it fits or the free memory is unknown)."""
        free = self.capabilities.free_memory_bytes
        if free is None:
            return []
        estimate = self.estimate_memory_usage(batch_size, resolution, guidance_scale=guidance_scale)
        free_mb = free / 2 ** 20
        if estimate["total_mb"] <= free_mb:
            return []
        fixes = []
        if batch_size > 1:
            fixes.append(f"batch_size={max(1, int(batch_size * free_mb / estimate['total_mb']))} "
                         f"(now {batch_size})")
        if self.config.tile_size is None and resolution > self.bundle.native_resolution:
            fixes.append(f"tile_size={self.bundle.native_resolution}")
        elif self.config.tile_size is not None and not self.config.ultrahighres_sequential_tiles:
            fixes.append("ultrahighres_sequential_tiles=True (batched tiles hold every tile at once)")
        if self.precision == "fp32" and self.capabilities.device_kind == "cuda":
            fixes.append("precision='fp16' or 'bf16'")
        fixes.append(f"a smaller resolution (now {resolution})")
        message = (f"estimated peak memory {estimate['total_mb']:,.0f} MB for batch {batch_size} at {resolution}px "
                   f"exceeds the free memory {free_mb:,.0f} MB on {self.capabilities.name}; try "
                   + ", or ".join(fixes))
        log.warning(message)
        return [message]

    @torch.no_grad()
    def probe_batch(self, batch_size: int, resolution: int, *, guidance_scale: float = 3.0) -> None:
        """One guided denoiser call at ``batch_size`` images (what one sampling step allocates); raises the
        out-of-memory error when it does not fit. Used by ``batch_size="auto"``."""
        bundle = self.bundle
        latent_side = self._latent_side(resolution)
        x = torch.zeros(batch_size, bundle.network.config.in_channels, latent_side, latent_side,
                        device=bundle.device, dtype=next(bundle.network.parameters()).dtype)
        denoise = self._denoise_fn([""] * batch_size, [""] * batch_size, guidance_scale, self.tiling)
        denoise(x, torch.full((batch_size,), self.bundle.diffusion.sigma_max, device=x.device, dtype=x.dtype))
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    def clear_cache(self) -> None:
        """Release captured CUDA graphs and cached device memory (the next call recaptures)."""
        if self.graphs is not None:
            self.graphs.release()
        if self.bundle.device.type == "cuda":
            torch.cuda.empty_cache()


@torch.no_grad()
def generate(bundle: ModelBundle, prompts: Sequence[str] | str | None = None, *,
             negative_prompts: Sequence[str] | str | None = None, num_samples: int = 1, steps: int = 25,
             sampler: str = DEFAULT_SAMPLER, guidance_scale: float = 3.0, seed: int = 0,
             schedule: str = "karras", batch_size: int | None = None, resolution: int | None = None,
             callback: Callable[[StepInfo], None] | None = None, **options: Any) -> GenerationResult:
    """Generate ``num_samples`` images per prompt with ``bundle`` (a one-off :class:`Pipeline`).

    Args:
        prompts: prompts for a text-conditioned model (None or [] = unconditional: the empty prompt).
        negative_prompts: replaces the empty prompt on the unconditional side of classifier-free guidance.
        guidance_scale: w in D = D_uncond + w (D_cond - D_uncond); 1 disables guidance.
        steps: sampler steps (the grid has steps + 1 sigmas ending at 0).
        batch_size: images per forward pass (None = all at once); results do not depend on it.
        resolution: image side in pixels (default: the model's native resolution; above it, coarse-to-fine).
        **options: further :class:`SamplerConfig` fields (tile_size, precision, oom_backoff, ...).
    """
    config = SamplerConfig(sampler=sampler, schedule=schedule, batch_size=batch_size, **options)
    return Pipeline(bundle, config).generate(prompts, negative_prompts=negative_prompts, num_samples=num_samples,
                                             steps=steps, guidance_scale=guidance_scale, seed=seed,
                                             resolution=resolution, callback=callback)
