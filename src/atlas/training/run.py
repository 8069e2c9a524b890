"""Compose a training run from settings: dataset -> text encoder vocabulary -> model -> Trainer."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from atlas.bundle import DiffusionSpec, ModelBundle
from atlas.conditioning.text_encoder import TextEncoderConfig, build_vocabulary, tokenize_words
from atlas.data import DatasetConfig
from atlas.models import HighResModelConfig
from atlas.training.config import TrainingConfig
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
          progress: bool = True, dataset: DatasetConfig | None = None) -> Path:
    """Train on ``training.dataset`` (or ``dataset``) and export the model to ``out_dir/model``; returns that folder.

    Args:
        dataset: a DatasetConfig to train on instead of ``training.dataset``/``training.dataset_size``; its
            resolution must equal ``training.resolution``. The saved training config then records
            ``dataset.spec`` and ``dataset.size`` in those fields, and the model metadata the whole
            DatasetConfig under "dataset_config".

    ``training.epochs``, when set, becomes ``steps = epochs * ceil(len(dataset) / batch_size)``
    (``TrainingConfig.for_dataset``); the trainer runs, saves and resumes that resolved config. With
    ``resume=True`` the newest complete checkpoint under ``out_dir/checkpoints`` is continued exactly (same
    settings required; only the run length, ``steps`` or ``epochs``, may grow). Resuming with no checkpoint is
    an error.
    """
    out_dir = Path(out_dir)
    if dataset is None:
        dataset = DatasetConfig.from_spec(training.dataset, resolution=training.resolution,
                                          size=training.dataset_size)
    elif not isinstance(dataset, DatasetConfig):
        raise TypeError(f"dataset must be a DatasetConfig or None (then training.dataset is used), got "
                        f"{type(dataset).__name__}")
    else:
        if dataset.resolution != training.resolution:
            raise ValueError(f"DatasetConfig(name={dataset.name!r}).resolution={dataset.resolution} differs from "
                             f"TrainingConfig.resolution={training.resolution}; set both to the same value")
        training = replace(training, dataset=dataset.spec, dataset_size=dataset.size)
        log.info("training on %s (DatasetConfig %s)", dataset.spec, dataset.name)
    images = dataset.build(seed=training.seed)
    if images.resolution != training.resolution:
        raise ValueError(f"dataset resolution {images.resolution} differs from the training resolution "
                         f"{training.resolution}")
    requested_epochs = training.epochs
    training = training.for_dataset(len(images))
    metadata: dict[str, Any] = {"dataset": training.dataset, "dataset_config": dataset.to_dict(),
                                "training": training.to_dict()}
    if requested_epochs is not None:
        metadata["epochs"] = {"epochs": requested_epochs, "dataset_length": len(images),
                              "steps_per_epoch": training.steps_per_epoch(len(images)), "steps": training.steps}
        log.info("epochs=%d over %d images at batch_size=%d: %d steps per epoch, %d steps", requested_epochs,
                 len(images), training.batch_size, training.steps_per_epoch(len(images)), training.steps)
    if command:
        metadata["command"] = command
    torch.manual_seed(step_seed(training.seed, 0, stream=0))  # the initial weights depend on the seed only
    bundle = build_bundle(images, training, model_overrides, text_overrides, metadata)
    prompts = sample_prompts_for(images.captions()) if bundle.is_conditional else []
    trainer = Trainer(bundle, images, training, out_dir, sample_prompts=prompts, progress=progress)
    if resume:
        latest = Trainer.latest_checkpoint(out_dir)
        if latest is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {out_dir / 'checkpoints'}; "
                                    f"start without --resume")
        trainer.load_state(latest)
        log.info("resumed from %s at step %d", latest, trainer.step)
    return trainer.run()
