"""Compose a training run from settings: dataset -> text encoder vocabulary -> model -> Trainer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from atlas.bundle import DiffusionSpec, ModelBundle
from atlas.conditioning.text_encoder import TextEncoderConfig, build_vocabulary, tokenize_words
from atlas.data import load_dataset
from atlas.models import HighResModelConfig
from atlas.training.config import TrainingConfig
import torch

from atlas.training.trainer import Trainer, step_seed

log = logging.getLogger(__name__)


def sample_prompts_for(captions: Sequence[str], limit: int = 8) -> list[str]:
    """A few distinct, short captions to draw the periodic sample grids with."""
    shortest = sorted({c for c in captions if c}, key=lambda c: (len(tokenize_words(c)), c))
    step = max(1, len(shortest) // limit)
    return shortest[::step][:limit]


def build_bundle(dataset: Any, training: TrainingConfig, model_overrides: dict[str, Any] | None = None,
                 text_overrides: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
                 ) -> ModelBundle:
    """A fresh model for ``dataset``: a text encoder over its caption vocabulary (none if it has no captions)."""
    captions = dataset.captions()
    vocabulary = build_vocabulary(captions)
    text_config = None
    if vocabulary:
        max_words = max(len(tokenize_words(c)) for c in captions)
        text_config = TextEncoderConfig(vocabulary=vocabulary, **{"max_length": max_words + 1,
                                                                  **(text_overrides or {})})
    model_fields = {"in_channels": dataset.channels, "resolution": training.resolution,
                    "context_dim": None if text_config is None else text_config.dim,
                    "pooled_dim": None if text_config is None else text_config.dim,
                    **(model_overrides or {})}
    diffusion = DiffusionSpec(prediction=training.prediction, sigma_data=0.5)
    return ModelBundle.build(HighResModelConfig(**model_fields), text_config, diffusion, metadata)


def train(training: TrainingConfig, out_dir: str | Path, *, model_overrides: dict[str, Any] | None = None,
          text_overrides: dict[str, Any] | None = None, resume: bool = False, command: str | None = None,
          progress: bool = True) -> Path:
    """Train on ``training.dataset`` and export the model to ``out_dir/model``; returns that folder.

    With ``resume=True`` the newest complete checkpoint under ``out_dir/checkpoints`` is continued exactly
    (same settings required; only ``steps`` may grow). Resuming with no checkpoint is an error.
    """
    out_dir = Path(out_dir)
    dataset = load_dataset(training.dataset, resolution=training.resolution, seed=training.seed,
                           size=training.dataset_size)
    if dataset.resolution != training.resolution:
        raise ValueError(f"dataset resolution {dataset.resolution} differs from the training resolution "
                         f"{training.resolution}")
    metadata = {"dataset": training.dataset, "training": training.to_dict()}
    if command:
        metadata["command"] = command
    torch.manual_seed(step_seed(training.seed, 0, stream=0))  # the initial weights depend on the seed only
    bundle = build_bundle(dataset, training, model_overrides, text_overrides, metadata)
    prompts = sample_prompts_for(dataset.captions()) if bundle.is_conditional else []
    trainer = Trainer(bundle, dataset, training, out_dir, sample_prompts=prompts, progress=progress)
    if resume:
        latest = Trainer.latest_checkpoint(out_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {out_dir / 'checkpoints'}; "
                                    f"start without --resume")
        trainer.load_state(latest)
        log.info("resumed from %s at step %d", latest, trainer.step)
    return trainer.run()
