"""Train from a preset: ``run_training(load_preset("gpu:8gb"))``, or from the command line::

    python -m atlas.examples.training_pipeline --preset dataset:cifar10 --data-root ./cifar10 --epochs 50
    python -m atlas.examples.training_pipeline --preset gpu:8gb --data-root ./my_images --steps 20000

A preset (:func:`atlas.config.presets.load_preset`) is a dict of editable configs; ``run_training`` checks that
they agree (resolution, text encoder vs model) and hands them to :func:`atlas.training.train`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from atlas.config.kernel import KernelConfig
from atlas.config.sampler import ConditioningConfig
from atlas.data.presets import DatasetConfig
from atlas.models import HighResModelConfig
from atlas.training.config import TrainingConfig
from atlas.training.run import train

__all__ = ["main", "resolve_preset", "run_training"]

# Fields the dataset and the text encoder decide when training starts (see atlas.training.run.build_bundle).
_DERIVED_MODEL_FIELDS = ("in_channels", "resolution", "context_dim", "pooled_dim")


def _get(config: dict[str, Any], key: str, cls: type) -> Any:
    if key not in config:
        raise KeyError(f"the preset has no {key!r} entry; start from atlas.config.presets.load_preset(...)")
    value = config[key]
    if not isinstance(value, cls):
        raise TypeError(f"config[{key!r}] must be a {cls.__name__}, got {type(value).__name__}")
    return value


def resolve_preset(config: dict[str, Any]) -> tuple[TrainingConfig, DatasetConfig, dict[str, Any],
                                                     dict[str, Any] | None]:
    """Check a preset's configs against each other and turn them into :func:`atlas.training.train`'s arguments:
    (training config with the kernel, dataset config, model overrides, text-encoder overrides or None)."""
    model = _get(config, "model", HighResModelConfig)
    training = _get(config, "training", TrainingConfig)
    dataset = _get(config, "dataset", DatasetConfig)
    kernel = _get(config, "kernel", KernelConfig)
    conditioning = _get(config, "conditioning", ConditioningConfig)
    if not (model.resolution == training.resolution == dataset.resolution):
        raise ValueError(f"resolutions disagree: model {model.resolution}, training {training.resolution}, dataset "
                         f"{dataset.resolution}; set config['model'].resolution, config['training'].resolution and "
                         f"config['dataset'].resolution to the same value")
    if conditioning.text_encoder == "none":
        if dataset.is_procedural:
            raise ValueError(f"conditioning.text_encoder='none' but the {dataset.name!r} dataset makes captions; "
                             "use text_encoder='vocab' or a folder dataset")
        dataset = replace(dataset, captions="none")  # an unconditional model: captions are not read
    training = replace(training, coupling_kernel=kernel)  # also re-validates fields edited in place
    overrides = {f.name: getattr(model, f.name) for f in fields(model)
                 if f.init and f.name not in _DERIVED_MODEL_FIELDS}
    return training, dataset, overrides, conditioning.text_overrides()


def _check_device(name: str, training: TrainingConfig, dataset: DatasetConfig) -> None:
    """A preset that trains on CUDA, on a machine without CUDA: stop before any work and say what to change.

    An unset dataset root is reported first (``DatasetConfig.build`` raises it before reading anything): it is
    the first thing to fix on any machine.
    """
    if torch.device(training.device).type != "cuda" or torch.cuda.is_available():
        return
    if not dataset.is_procedural and dataset.root is None:
        dataset.build()  # raises "root is not set; atlas never downloads data ..."
    raise RuntimeError(f"preset {name!r} trains on device {training.device!r} (precision {training.precision!r}), "
                       "but CUDA is not available here (torch.cuda.is_available() is False); for a CPU run start "
                       "from load_preset('cpu'), or set config['training'].device = 'cpu' and "
                       "config['training'].precision = 'fp32'")


def run_training(config: dict[str, Any], out_dir: str | Path | None = None, *, resume: bool = False,
                 progress: bool = True) -> Path:
    """Train the preset's model on its dataset; returns the exported model folder (``<out_dir>/model``).

    Args:
        config: a preset from ``load_preset`` (edited as you like: ``config["dataset"].root = ...``,
            ``config["training"].epochs = 200``, ``config["kernel"] = KernelConfig(...)``).
        out_dir: default ``config["output_dir"]``.
        resume: continue from the newest checkpoint in ``out_dir`` (same settings; only the run length may grow).
    """
    training, dataset, overrides, text = resolve_preset(config)
    _check_device(config.get("name", "?"), training, dataset)
    destination = Path(out_dir if out_dir is not None else config.get("output_dir", "runs/preset"))
    return train(training, destination, model_overrides=overrides, text_overrides=text, dataset=dataset,
                 resume=resume, progress=progress, command=f"run_training(load_preset({config.get('name', '?')!r}))")


def main(argv: Sequence[str] | None = None) -> int:
    from atlas.config.presets import PRESET_NAMES, load_preset

    parser = argparse.ArgumentParser(prog="python -m atlas.examples.training_pipeline",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, choices=PRESET_NAMES)
    parser.add_argument("--data-root", default=None, help="folder of your copy of the dataset (never downloaded)")
    parser.add_argument("--out", default=None, help="output folder (default: the preset's output_dir)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None)
    length.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the preset's training device)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configs and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_preset(args.preset)
    if args.data_root is not None:
        config["dataset"].root = args.data_root
    training = config["training"]
    if args.epochs is not None:
        training.epochs = args.epochs
    if args.steps is not None:
        training.steps, training.epochs = args.steps, None
    if args.device is not None:
        training.device = args.device
    if args.dry_run:
        for key in ("model", "training", "dataset", "sampler", "kernel", "conditioning"):
            print(f"{key}: {config[key]}")
        print(f"memory_budget_mb: {config['memory_budget_mb']:,.0f} (tier {config['profile'].name})")
        return 0
    exported = run_training(config, args.out, resume=args.resume)
    print(f"model written to {exported}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
