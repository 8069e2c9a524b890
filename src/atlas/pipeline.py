"""Text-to-image generation with a `ModelBundle`: prompts -> conditioning -> sampler -> images in [0, 1].

Each image has its own random generator seeded with ``seed + index``, so an image does not depend on the
batch it was generated in (batch size, chunking and order of the other images leave it unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from atlas.bundle import ModelBundle
from atlas.diffusion import (SAMPLERS, StepInfo, classifier_free_guidance, conditional_denoiser, get_sigmas,
                             initial_noise, sample)

DEFAULT_SAMPLER = "dpmpp_2m"
SIGMA_RANGE_SCHEDULES = ("karras", "exponential")


@dataclass
class GenerationResult:
    """images: (N, C, H, W) in [0, 1]; prompts[i], negative_prompts[i] and seeds[i] belong to image i."""

    images: Tensor
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]


def _expand_prompts(prompts: Sequence[str] | None, negative_prompts: Sequence[str] | str | None,
                    num_samples: int) -> tuple[list[str], list[str]]:
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


@torch.no_grad()
def generate(bundle: ModelBundle, prompts: Sequence[str] | str | None = None, *,
             negative_prompts: Sequence[str] | str | None = None, num_samples: int = 1, steps: int = 25,
             sampler: str = DEFAULT_SAMPLER, guidance_scale: float = 3.0, seed: int = 0,
             schedule: str = "karras", batch_size: int | None = None, resolution: int | None = None,
             callback: Callable[[StepInfo], None] | None = None) -> GenerationResult:
    """Generate ``num_samples`` images per prompt.

    Args:
        prompts: prompts for a text-conditioned model (None or [] = unconditional: the empty prompt).
        negative_prompts: replaces the empty prompt on the unconditional side of classifier-free guidance.
        guidance_scale: w in D = D_uncond + w (D_cond - D_uncond); 1 disables guidance.
        steps: sampler steps (the grid has steps + 1 sigmas ending at 0).
        batch_size: images per forward pass (None = all at once); results do not depend on it.
        resolution: side length (default: the model's native resolution).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1; 20-30 is typical")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not one of {sorted(SAMPLERS)}")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale} must be >= 0 (1 = no guidance)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 or None")
    if not bundle.is_conditional and negative_prompts:
        raise ValueError("negative prompts need a text-conditioned model; this one is unconditional")
    all_prompts, all_negatives = _expand_prompts(prompts, negative_prompts, num_samples)
    if not bundle.is_conditional:
        bundle.encode(all_prompts)  # raises if any prompt is non-empty: prompts are never silently dropped

    config = bundle.network.config
    side = resolution or config.resolution
    device, dtype = bundle.device, next(bundle.network.parameters()).dtype
    spec = bundle.diffusion
    # Karras and exponential grids span the model's trained sigma range, the flow grid starts at its top; VP grids
    # carry their own range.
    span = {"sigma_min": spec.sigma_min, "sigma_max": spec.sigma_max} if schedule in SIGMA_RANGE_SCHEDULES else {}
    if schedule == "flow":
        span = {"sigma_max": spec.sigma_max}
    sigmas = get_sigmas(schedule, steps, **span).to(device, dtype)
    denoiser = bundle.denoiser()
    total = len(all_prompts)
    chunk = batch_size or total
    seeds = [seed + i for i in range(total)]
    outputs = []
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[start:stop]]
        x = initial_noise((stop - start, config.in_channels, side, side), sigmas[0].item(), generators=generators,
                          dtype=dtype, device=device)
        if bundle.is_conditional:
            cond = bundle.encode(all_prompts[start:stop])
            if guidance_scale == 1.0:
                denoise = conditional_denoiser(denoiser, cond)
            else:
                uncond = bundle.encode(all_negatives[start:stop])
                denoise = classifier_free_guidance(denoiser, cond, uncond, guidance_scale)
        else:
            denoise = conditional_denoiser(denoiser, None)
        x = sample(sampler, denoise, x, sigmas, generators=generators, callback=callback)
        outputs.append(((x.float() + 1) / 2).clamp(0, 1).cpu())
    return GenerationResult(torch.cat(outputs), all_prompts, all_negatives, seeds)
