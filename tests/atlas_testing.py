"""Shared test helpers: tiny models and bundles that build and run in milliseconds on a CPU."""

from __future__ import annotations

import torch

from atlas.bundle import DiffusionSpec, ModelBundle
from atlas.conditioning import TextEncoderConfig
from atlas.models import HighResModelConfig

TINY_VOCAB = ["a", "background", "blue", "circle", "on", "red", "square", "green"]


def tiny_model_config(**overrides) -> HighResModelConfig:
    fields = dict(in_channels=3, resolution=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), num_heads=2, norm_groups=4, context_dim=16, pooled_dim=16)
    fields.update(overrides)
    return HighResModelConfig(**fields)


def tiny_bundle(seed: int = 0, conditional: bool = True, dtype=torch.float32, **model_overrides) -> ModelBundle:
    torch.manual_seed(seed)
    if conditional:
        text = TextEncoderConfig(vocabulary=TINY_VOCAB, dim=16, num_layers=1, num_heads=2, max_length=8)
        config = tiny_model_config(**model_overrides)
    else:
        text = None
        config = tiny_model_config(context_dim=None, pooled_dim=None, **model_overrides)
    return ModelBundle.build(config, text, DiffusionSpec()).to(dtype)
