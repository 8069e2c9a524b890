"""`validate_configs`: cross-checks between configuration objects, before any work starts.

Each config validates its own fields when it is built (ranges, types, choices). What only shows when configs
meet is checked here: errors raise ``ValueError``; risky but runnable combinations come back as warnings::

    issues = validate_configs(model_config=model_cfg, kernel_config=kernel_cfg, sampler_config=sampler_cfg,
                              conditioning_config=cond_cfg, gpu_profile=profile)
    for issue in issues:
        print(f"  - {issue}")
"""

from __future__ import annotations

from typing import Any, Optional

from atlas.config.kernel import KernelConfig
from atlas.config.memory_estimate import estimate_memory
from atlas.config.profiles import TEXT_TOKENS, GPUProfile, get_profile
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.models import HighResModelConfig
from atlas.runtime.precision import compute_dtype

__all__ = ["validate_configs"]

RFF_MIN_FEATURES = 1024  # mean kernel error ~ 0.7 / sqrt(D): 0.02 at 1024 (benchmarks/RESULTS.md, kernel_error)
EPSILON_RANGE = (1e-3, 10.0)  # relative to the median squared distance (docs/TRANSPORT.md)


def _check_type(name: str, value: Any, cls: type) -> None:
    if value is not None and not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__} or None, got {type(value).__name__}")


def validate_configs(model_config: Optional[HighResModelConfig] = None, kernel_config: Optional[KernelConfig] = None,
                     sampler_config: Optional[SamplerConfig] = None,
                     conditioning_config: Optional[ConditioningConfig] = None,
                     gpu_profile: GPUProfile | str | None = None, *, resolution: Optional[int] = None,
                     batch_size: Optional[int] = None) -> list[str]:
    """Check the configs against each other; returns warnings, raises ValueError/TypeError on errors.

    Args:
        model_config, kernel_config, sampler_config, conditioning_config: any of them may be None (not checked).
        gpu_profile: a GPUProfile or a name ("8GB", "auto"); enables the memory check of ``model_config``.
        resolution, batch_size: what will be generated (default: the model's resolution and the sampler's or
            profile's batch size); a given resolution also checks that tiles act at it.
    """
    _check_type("model_config", model_config, HighResModelConfig)
    _check_type("kernel_config", kernel_config, KernelConfig)
    _check_type("sampler_config", sampler_config, SamplerConfig)
    _check_type("conditioning_config", conditioning_config, ConditioningConfig)
    profile = None if gpu_profile is None else get_profile(gpu_profile)
    warnings: list[str] = []

    if model_config is not None and conditioning_config is not None:
        expected = conditioning_config.context_dim
        if model_config.context_dim != expected:
            raise ValueError(f"model_config.context_dim={model_config.context_dim} does not match the text encoder "
                             f"(conditioning_config.text_encoder={conditioning_config.text_encoder!r}, text_dim="
                             f"{conditioning_config.text_dim}); set context_dim={expected}")
        if expected is None and conditioning_config.guidance_scale not in (0.0, 1.0):
            warnings.append(f"guidance_scale={conditioning_config.guidance_scale} has no effect: the model is "
                            "unconditional (no text encoder)")

    if kernel_config is not None:
        low, high = EPSILON_RANGE
        if kernel_config.relative_epsilon and not low <= kernel_config.epsilon <= high:
            warnings.append(f"kernel_config.epsilon={kernel_config.epsilon} is outside [{low}, {high}] x the median "
                            "squared distance: below, Sinkhorn needs many iterations (use coupling='ot' for the "
                            "exact pairing); above, the coupling is nearly independent")
        if kernel_config.solver_type == "rff" and kernel_config.rff_features is not None \
                and kernel_config.rff_features < RFF_MIN_FEATURES:  # None: sized by KernelConfig.choose
            features = kernel_config.rff_features
            warnings.append(f"kernel_config.rff_features={features} is low for solver_type='rff': the mean kernel "
                            f"error is about 0.7/sqrt(D); use at least {RFF_MIN_FEATURES}, or solver_type='auto'")

    if sampler_config is not None:
        if sampler_config.enable_cuda_graphs and sampler_config.tile_size is not None \
                and not sampler_config.ultrahighres_sequential_tiles:
            warnings.append("enable_cuda_graphs with batched tiles: every tile count is a new shape and a new graph; "
                            "set ultrahighres_sequential_tiles=True so all tiles share one")
        if profile is not None and profile.device_kind == "cpu" and sampler_config.enable_cuda_graphs:
            warnings.append("enable_cuda_graphs is set but the profile is for a CPU; graphs need CUDA and will "
                            "not be used")
        if resolution is not None and sampler_config.tile_size is not None and sampler_config.tile_size >= resolution:
            warnings.append(f"tile_size={sampler_config.tile_size} is at least the image side ({resolution}): "
                            "tiling does nothing at this resolution")
        if model_config is not None and model_config.dilated_levels and sampler_config.enable_cuda_graphs:
            warnings.append("enable_cuda_graphs with dilated attention: its gather indices are computed on the host, "
                            "so capture falls back to eager (logged)")

    if profile is not None and model_config is not None:
        warnings.extend(_memory_warnings(model_config, sampler_config, conditioning_config, profile, resolution,
                                         batch_size))
    return warnings


def _memory_warnings(model: HighResModelConfig, sampler: Optional[SamplerConfig],
                     conditioning: Optional[ConditioningConfig], profile: GPUProfile, resolution: Optional[int],
                     batch_size: Optional[int]) -> list[str]:
    side = resolution or model.resolution
    batch = batch_size or (sampler.batch_size if sampler is not None and sampler.batch_size else profile.batch_size)
    precision = sampler.precision if sampler is not None and sampler.precision != "auto" else profile.precision
    guided = model.context_dim is not None and (conditioning is None or conditioning.guidance_scale not in (0, 1))
    estimate = estimate_memory(model, batch_size=batch, resolution=side, dtype=compute_dtype(precision),
                               mode="inference", guidance=guided,
                               tile=None if sampler is None else sampler.tiling_config(),
                               text_tokens=TEXT_TOKENS if model.context_dim is not None else None,
                               device="cuda" if profile.device_kind == "cuda" else "cpu")
    capacity_mb = profile.memory_gb * 1024
    if estimate.total_mb <= capacity_mb:
        return []
    return [f"estimated sampling memory {estimate.total_mb:,.0f} MB (batch {batch}, {side}px, {precision}) exceeds "
            f"the {profile.name} profile's {capacity_mb:,.0f} MB; reduce the batch size, enable tiling (tile_size) "
            "or use a larger profile"]
