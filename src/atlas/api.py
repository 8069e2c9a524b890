"""The easy API: ``atlas.create_sampler(...).generate(...)``.

    import atlas
    sampler = atlas.create_sampler()                # the bundled demo model, settings for this machine
    images = sampler.generate(["a red circle"], num_samples=4)   # (4, 3, 32, 32) in [0, 1]

A thin face over the layers: the GPU profile (:mod:`atlas.config.profiles`) gives the defaults, the checkpoint
gives the architecture, and :class:`atlas.pipeline.Pipeline` does the work (precision, CUDA graphs, tiling,
coarse-to-fine above the native resolution, out-of-memory back-off). Nothing is silently ignored: unknown options
raise TypeError, fallbacks are logged and recorded in ``sampler.last_result``.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from atlas.bundle import ModelBundle
from atlas.checkpoint import load_model, read_checkpoint_config
from atlas.config.profiles import GPUProfile, get_profile
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.demo import demo_checkpoint_path
from atlas.images import save_images
from atlas.io import cache_dir
from atlas.memory.autotune import autotune_batch_size
from atlas.pipeline import GenerationResult, Pipeline, expand_prompts
from atlas.runtime.hardware import Capabilities, detect_capabilities

__all__ = ["EasySampler", "create_sampler"]

log = logging.getLogger(__name__)

SAMPLER_OPTIONS = tuple(f.name for f in fields(SamplerConfig) if f.name != "batch_size")
CONDITIONING_OPTIONS = ("guidance_scale", "negative_prompt")
# Names of the specification that atlas deliberately does not offer, and why (raised as AttributeError).
NOT_OFFERED = {
    "clear_kernel_cache": "atlas keeps no kernel cache: transport kernels are built from each training batch and "
                          "nothing is solved at sampling time (docs/TRANSPORT.md); sampler.clear_cache() releases "
                          "CUDA graphs and cached GPU memory",
}


def _batch_cache_path() -> Path:
    return cache_dir() / "batch_sizes.json"


class EasySampler:
    """A loaded model with settings for this machine. Build it with :func:`create_sampler`.

    Attributes:
        bundle: the model; profile: the GPU profile in use; sampler: the :class:`Pipeline` doing the work
        (``sampler.sampler.estimate_memory_usage(...)`` works as in the specification); conditioning: defaults
        for guidance; resolution: default image side; last_result: the :class:`GenerationResult` of the last
        call (prompts, seeds, back-off log, stats).
    """

    def __init__(self, bundle: ModelBundle, pipeline: Pipeline, profile: GPUProfile,
                 conditioning: ConditioningConfig, resolution: int, checkpoint: Path,
                 auto_batch: bool = False):
        self.bundle, self.sampler, self.profile = bundle, pipeline, profile
        self.conditioning, self.resolution, self.checkpoint = conditioning, resolution, checkpoint
        self.auto_batch = auto_batch
        self.last_result: Optional[GenerationResult] = None

    @property
    def config(self) -> SamplerConfig:
        return self.sampler.config

    def generate(self, prompts: Sequence[str] | str | None = None, negative_prompts: Sequence[str] | str | None = None,
                 num_samples: int = 1, timesteps: Optional[int] = None, guidance_scale: Optional[float] = None,
                 seed: Optional[int] = None, return_intermediates: bool = False,
                 resolution: Optional[int] = None, callback=None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Generate ``num_samples`` images per prompt; returns (N, C, H, W) in [0, 1] (N = prompts x num_samples).

        Args:
            prompts: one prompt, a list, or None (unconditional / the empty prompt).
            negative_prompts: one for all prompts or one per prompt (default: the configured negative prompt).
            timesteps: sampler steps (default: the sampler config's ``timesteps``, 50).
            guidance_scale: classifier-free guidance weight (default: create_sampler's ``guidance_scale``, else the
                checkpoint's recommendation — 3 for the bundled demo — else 7.5; 1 = no guidance).
            seed: image i uses seed + i (default: a random seed, recorded in ``last_result.seeds``).
            return_intermediates: also return the denoised estimate of every step, decoded (a list of tensors).
            resolution: image side in pixels (default: the model's native side). Above it the model generates
                coarse-to-fine; tiles are used when ``tile_size`` is set or the memory back-off needs them.
            callback: called with a ``StepInfo`` after every sampler step (e.g. a progress bar).
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1 (images per prompt), e.g. "
                             "num_samples=4")
        if seed is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
        if negative_prompts is None and self.conditioning.negative_prompt and self.bundle.is_conditional:
            negative_prompts = self.conditioning.negative_prompt
        side = resolution or self.resolution
        guidance = self.conditioning.guidance_scale if guidance_scale is None else guidance_scale
        if self.auto_batch:
            self._autotune(side, guidance)
        if self.config.memory_check:
            self.check_memory(len(expand_prompts(prompts, None, num_samples)[0]), side)
        result = self.sampler.generate(prompts, negative_prompts=negative_prompts, num_samples=num_samples,
                                       steps=timesteps, guidance_scale=guidance, seed=seed, resolution=side,
                                       return_intermediates=return_intermediates, callback=callback)
        self.last_result = result
        return (result.images, result.intermediates) if return_intermediates else result.images

    def save(self, images: Tensor, out_dir: str | Path) -> list[Path]:
        """Save ``images`` as PNGs (+ grid.png) named by prompt and seed of the last call when they match it."""
        result = self.last_result
        matches = result is not None and result.images.shape == images.shape and torch.equal(result.images, images)
        return save_images(images, out_dir, result.prompts if matches else None, result.seeds if matches else None)

    def estimate_memory_usage(self, batch_size: int = 1, resolution: Optional[int] = None) -> dict[str, Any]:
        """Estimated peak memory of one sampling step (MiB): model_params_mb, activations_mb, total_mb, ..."""
        return self.sampler.estimate_memory_usage(batch_size, resolution or self.resolution,
                                                  guidance_scale=self.conditioning.guidance_scale)

    def check_memory(self, num_images: int, resolution: int) -> list[str]:
        """Warn (and return the warnings) when the estimated peak exceeds the device's free memory."""
        return self.sampler.check_memory(min(num_images, self.config.batch_size or num_images), resolution,
                                         guidance_scale=self.conditioning.guidance_scale)

    def clear_cache(self) -> None:
        """Release CUDA graphs and cached device memory."""
        self.sampler.clear_cache()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: say why the specification's names are absent.
        if name in NOT_OFFERED:
            raise AttributeError(f"EasySampler has no {name}(): {NOT_OFFERED[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _autotune(self, resolution: int, guidance_scale: float) -> None:
        """batch_size="auto": the largest batch whose sampling step fits, cached on disk per model and settings."""
        files = read_checkpoint_config(self.checkpoint)["files"]
        caps = self.sampler.capabilities
        key = {"model": files["model.safetensors"]["sha256"], "resolution": resolution,
               "precision": self.sampler.precision, "device": f"{caps.device_kind}:{caps.name}",
               "guidance": guidance_scale != 1.0, "tile_size": self.config.tile_size}

        def probe(batch: int) -> None:
            self.sampler.probe_batch(batch, resolution, guidance_scale=guidance_scale)

        batch = autotune_batch_size(probe, max_batch=64, cache_path=_batch_cache_path(), key=key)
        if batch != self.config.batch_size:
            log.info("batch_size='auto': %d images per forward pass at %dpx", batch, resolution)
            self.sampler.config = self.config.updated(batch_size=batch)


def create_sampler(checkpoint: str | Path | None = None, gpu_memory: str = "auto", device: str | None = None,
                   batch_size: int | str | None = None, resolution: int | None = None,
                   **options: Any) -> EasySampler:
    """Load a model and pick settings for this machine.

    Args:
        checkpoint: a folder written by ``atlas train`` (config.json + model.safetensors); None = the bundled demo.
            The architecture always comes from the checkpoint's own config.
        gpu_memory: "auto" (detected from the device's free memory), "6GB", "8GB", "12GB", "16GB", "24GB",
            "32GB" or "CPU": the profile that gives the defaults (batch size, precision, tiles, CUDA graphs).
        device: "cuda", "cuda:1", "cpu", ... (default: CUDA when available, else CPU).
        batch_size: images per forward pass (default: the profile's), or "auto" (largest that fits, cached).
        resolution: default image side in pixels (default: the model's native side).
        **options: :class:`SamplerConfig` fields (sampler, schedule, timesteps, precision, tile_size, tile_stride,
            tile_overlap, tile_blending, enable_cuda_graphs, ...) and ``guidance_scale`` / ``negative_prompt``.
    """
    unknown = sorted(set(options) - set(SAMPLER_OPTIONS) - set(CONDITIONING_OPTIONS))
    if unknown:
        raise TypeError(f"create_sampler() got unknown option(s) {unknown}; valid options are "
                        f"{sorted(SAMPLER_OPTIONS + CONDITIONING_OPTIONS)} plus checkpoint, gpu_memory, device, "
                        f"batch_size and resolution")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    capabilities: Capabilities = detect_capabilities(device)
    profile = get_profile(gpu_memory, capabilities)
    path = Path(checkpoint) if checkpoint is not None else demo_checkpoint_path()
    bundle = load_model(path, device=device)
    auto_batch = batch_size == "auto"
    if isinstance(batch_size, str) and not auto_batch:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer, None or 'auto'")
    sampler_options = {k: v for k, v in options.items() if k in SAMPLER_OPTIONS}
    precision = sampler_options.pop("precision", "auto" if profile.device_kind != capabilities.device_kind
                                    else profile.precision)
    config = profile.sampler_config().updated(precision=precision, **sampler_options)
    if profile.device_kind != capabilities.device_kind and "enable_cuda_graphs" not in sampler_options:
        config = config.updated(enable_cuda_graphs=False)
    if not auto_batch:
        config = config.updated(batch_size=profile.batch_size if batch_size is None else batch_size)
    # Guidance: the option, else the checkpoint's own recommendation (metadata "sampling"), else 7.5.
    recommended = {k: v for k, v in (bundle.metadata.get("sampling") or {}).items() if k in CONDITIONING_OPTIONS}
    conditioning = ConditioningConfig(**{**recommended,
                                         **{k: v for k, v in options.items() if k in CONDITIONING_OPTIONS}})
    pipeline = Pipeline(bundle, config, capabilities=capabilities)
    if config.verbose_logging:
        logging.getLogger("atlas").setLevel(logging.INFO)
    side = bundle.native_resolution if resolution is None else resolution
    pipeline._latent_side(side)  # validate the default resolution now, not at the first generate()
    log.info("create_sampler: %s on %s, profile %s, %s", path, device, profile.name, config)
    return EasySampler(bundle, pipeline, profile, conditioning, side, path, auto_batch=auto_batch)

