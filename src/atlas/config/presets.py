"""Training presets: a GPU tier ("gpu:8gb") or a dataset ("dataset:cifar10") as editable configs.

    from atlas.config.presets import load_preset
    from atlas.examples.training_pipeline import run_training

    config = load_preset("gpu:8gb")
    config["dataset"].root = "./my_images"
    config["training"].epochs = 200
    run_training(config)

``load_preset`` returns a fresh dict each call:

=================  ==========================================================================================
key                value
=================  ==========================================================================================
"model"            :class:`HighResModelConfig` of the model to train (in_channels and context_dim follow the
                   dataset and the text encoder when training starts)
"training"         :class:`TrainingConfig` (editable: ``epochs``, ``steps``, ``lr``, ``batch_size``, ...)
"dataset"          :class:`DatasetConfig` (set ``root``; atlas never downloads)
"sampler"          :class:`SamplerConfig` for sampling the trained model
"kernel"           :class:`KernelConfig` of the Schrodinger-bridge coupling (used with ``coupling="sb"``)
"conditioning"     :class:`ConditioningConfig` (text encoder on or off, its width; guidance defaults)
"profile"          the :class:`GPUProfile` whose memory tier the preset fits
"resolution"       the training resolution; "max_batch_size": the sampling batch of the profile
"memory_budget_mb" the preset's estimated peak (max of a training step and a sampling step), <= 0.9 x tier
"output_dir"       where ``run_training`` writes (``runs/<preset>``)
=================  ==========================================================================================

GPU presets use the profile's own model (:mod:`atlas.config.profiles`) on a folder of your images. Dataset
presets size the model for the dataset's resolution and state the tier they fit; no preset puts full attention
on more than 1,024 tokens, and CelebA-HQ-1024 uses dilated attention at 64x64.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from atlas.config.profiles import PROFILES, GPUProfile, step_estimates
from atlas.config.sampler import ConditioningConfig
from atlas.data.presets import DatasetConfig, dataset_preset
from atlas.models import HighResModelConfig
from atlas.training.config import TrainingConfig

__all__ = ["PRESET_NAMES", "load_preset"]


@dataclass(frozen=True)
class _DatasetRecipe:
    """A dataset preset: which data, the tier whose budget it fits, its model and training settings."""

    dataset: str
    tier: str
    model: dict[str, Any]
    training: dict[str, Any]
    text_encoder: bool = True
    notes: str = ""


_UNET = dict(num_res_blocks=2, num_heads=8, norm_groups=32)
_RECIPES = {
    "cifar10": _DatasetRecipe(
        "cifar10", "6GB",
        model=dict(base_channels=128, channel_mult=(1, 2, 2, 2), attention_levels=(1,), **_UNET),
        training=dict(batch_size=128, grad_accum=2, lr=2e-4, precision="bf16")),
    "imagenet64": _DatasetRecipe(
        "imagenet64", "12GB",
        model=dict(base_channels=128, channel_mult=(1, 2, 3, 4), attention_levels=(1, 2, 3), **_UNET),
        training=dict(batch_size=64, grad_accum=2, lr=1e-4, precision="bf16")),
    "ffhq128": _DatasetRecipe(
        "ffhq128", "6GB",
        model=dict(base_channels=128, channel_mult=(1, 1, 2, 3, 4), attention_levels=(3, 4),
                   gradient_checkpointing=True, **_UNET),
        training=dict(batch_size=32, grad_accum=2, lr=1e-4, precision="bf16"), text_encoder=False),
    "lsun_bedroom256": _DatasetRecipe(
        "lsun_bedroom256", "12GB",
        model=dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), attention_levels=(4, 5),
                   gradient_checkpointing=True, **_UNET),
        training=dict(batch_size=32, grad_accum=4, lr=1e-4, precision="bf16"), text_encoder=False),
    "celebahq1024": _DatasetRecipe(
        "celebahq1024", "12GB",
        model=dict(base_channels=64, channel_mult=(1, 1, 2, 2, 4, 4, 4), attention_levels=(4, 5, 6),
                   dilated_levels=(4,), dilated_segment_lengths=(1024, 4096), dilated_dilation_rates=(1, 2),
                   gradient_checkpointing=True, **_UNET),
        training=dict(batch_size=8, grad_accum=8, lr=5e-5, precision="bf16"), text_encoder=False),
}
PRESET_NAMES = tuple([f"gpu:{name.lower()}" for name in PROFILES if name != "CPU"] + ["cpu"]
                     + [f"dataset:{name}" for name in _RECIPES])


def _training(fields: dict[str, Any], resolution: int, profile: GPUProfile) -> TrainingConfig:
    """``dataset`` is a placeholder here: run_training trains on the preset's DatasetConfig."""
    return TrainingConfig(resolution=resolution, dataset="shapes", coupling_kernel=profile.kernel,
                          device=profile.device_kind, **fields)


@functools.lru_cache(maxsize=None)
def _dataset_budget(name: str) -> float:
    recipe = _RECIPES[name]
    config = _build_dataset_preset(name, with_budget=False)
    training = config["training"]
    estimates = step_estimates(config["model"], micro_batch=training.micro_batch_size,
                               inference_batch=PROFILES[recipe.tier].batch_size, precision=training.precision,
                               device="cuda", ema=training.ema_decay > 0)
    return max(e.total_mb for e in estimates.values())


def _build_dataset_preset(name: str, with_budget: bool = True) -> dict[str, Any]:
    recipe = _RECIPES[name]
    profile = PROFILES[recipe.tier]
    dataset = dataset_preset(recipe.dataset)
    conditioning = ConditioningConfig(text_encoder="vocab" if recipe.text_encoder else "none",
                                      guidance_scale=7.5 if recipe.text_encoder else 1.0)
    if not recipe.text_encoder:
        dataset = replace(dataset, captions="none")
    context = conditioning.context_dim
    model = HighResModelConfig(in_channels=dataset.channels, resolution=dataset.resolution, context_dim=context,
                               pooled_dim=context, **recipe.model)
    training = _training(recipe.training, dataset.resolution, profile)
    config = _assemble(f"dataset:{name}", profile, model, training, dataset, conditioning)
    if with_budget:
        config["memory_budget_mb"] = _dataset_budget(name)
    return config


def _build_gpu_preset(profile: GPUProfile) -> dict[str, Any]:
    conditioning = profile.conditioning_config()
    dataset = DatasetConfig(name="folder", root=None, resolution=profile.resolution,
                            captions=None if profile.text_encoder else "none",
                            description="your images: a folder searched recursively; <stem>.txt next to an image "
                                        "is its caption")
    training = _training({"precision": profile.precision, **profile.training}, profile.resolution, profile)
    config = _assemble(f"gpu:{profile.name.lower()}" if profile.name != "CPU" else "cpu", profile,
                       profile.model_config(), training, dataset, conditioning)
    config["memory_budget_mb"] = profile.memory_budget_mb
    return config


def _assemble(name: str, profile: GPUProfile, model: HighResModelConfig, training: TrainingConfig,
              dataset: DatasetConfig, conditioning: ConditioningConfig) -> dict[str, Any]:
    return {"name": name, "model": model, "training": training, "dataset": dataset,
            "sampler": profile.sampler_config(), "kernel": training.coupling_kernel, "conditioning": conditioning,
            "profile": profile, "resolution": model.resolution, "max_batch_size": profile.batch_size,
            "output_dir": f"runs/{name.replace(':', '-')}"}


def load_preset(name: str) -> dict[str, Any]:
    """A fresh, editable preset (see the module docstring): "gpu:6gb" ... "gpu:32gb", "cpu", or
    "dataset:cifar10", "dataset:imagenet64", "dataset:ffhq128", "dataset:lsun_bedroom256", "dataset:celebahq1024".
    """
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str such as 'gpu:8gb', got {type(name).__name__}")
    key = name.strip().lower()
    if key == "cpu":
        return _build_gpu_preset(PROFILES["CPU"])
    if key.startswith("gpu:") and f"{key[4:].upper()}" in PROFILES and key != "gpu:cpu":
        return _build_gpu_preset(PROFILES[key[4:].upper()])
    if key.startswith("dataset:") and key[8:] in _RECIPES:
        return _build_dataset_preset(key[8:])
    raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(PRESET_NAMES)}")
