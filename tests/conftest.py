"""Shared fixtures: tiny models and bundles that build and run in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist every worker gets one thread: oversubscribed OpenMP threads on a 2-core machine spin
# and slow everything down several-fold.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))

from atlas.bundle import DiffusionSpec, ModelBundle  # noqa: E402
from atlas.conditioning import TextEncoderConfig  # noqa: E402
from atlas.models import HighResModelConfig  # noqa: E402

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


@pytest.fixture
def bundle() -> ModelBundle:
    return tiny_bundle()
