"""Checkpoints on disk: a folder with ``config.json`` plus safetensors files, rebuilt from the files alone.

Layout of a checkpoint folder::

    config.json            format, versions, model / text-encoder / diffusion configs, metadata, and the
                           SHA-256 of every other file (written last, so it vouches for the set)
    model.safetensors      the weights generation uses (the EMA weights in an exported model)
    ema.safetensors        (training checkpoints) EMA weights
    optimizer.safetensors  (training checkpoints) optimizer tensors; the rest of its state is in config.json
                           under "training_state"

Every file is written atomically, and a whole folder is first written under a temporary name and then
renamed into place, so an interrupted save never leaves a half-written checkpoint under the real name and
never destroys the previous one. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atlas import __version__
from atlas.bundle import ModelBundle
from atlas.io import atomic_write_bytes, atomic_write_json, read_json, read_verified_tensors, sha256_bytes, \
    tensors_to_bytes

FORMAT = "atlas-checkpoint"
FORMAT_VERSION = 1
CONFIG = "config.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class TrainingCheckpoint:
    """What a resume needs besides the model weights."""

    ema_state: dict[str, torch.Tensor] | None
    optimizer_tensors: dict[str, torch.Tensor] | None
    training_state: dict[str, Any]


def save_checkpoint(directory: str | Path, bundle: ModelBundle, *,
                    weights: dict[str, torch.Tensor] | None = None,
                    ema_state: dict[str, torch.Tensor] | None = None,
                    optimizer_tensors: dict[str, torch.Tensor] | None = None,
                    training_state: dict[str, Any] | None = None) -> Path:
    """Save ``bundle`` (with ``weights`` instead of its own state when given) to ``directory``.

    An existing checkpoint at ``directory`` is replaced only after the new one is complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    state = bundle.state_dict() if weights is None else weights
    files: dict[str, tuple[dict[str, torch.Tensor], dict[str, str] | None]] = {MODEL: (state, None)}
    if ema_state is not None:
        files[EMA] = (ema_state, None)
    if optimizer_tensors is not None:
        files[OPTIMIZER] = (optimizer_tensors, None)

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        recorded = {}
        for name, (tensors, metadata) in files.items():
            data = tensors_to_bytes(tensors, metadata)
            atomic_write_bytes(staging / name, data)
            recorded[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "atlas_version": __version__,
                  **bundle.config_dict(), "files": recorded}
        if training_state is not None:
            config["training_state"] = training_state
        atomic_write_json(staging / CONFIG, config)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a checkpoint folder."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint {directory} does not exist; pass a folder written by `atlas train` "
                                f"(it holds config.json and model.safetensors)")
    if not directory.is_dir():
        raise ValueError(f"checkpoint {directory} is a file; atlas checkpoints are folders holding config.json "
                         f"and model.safetensors")
    config = read_json(directory / CONFIG, f"checkpoint {directory}")
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG} is not an atlas checkpoint config (format={config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory} has checkpoint format version {config.get('format_version')!r}; this atlas "
                         f"({__version__}) reads version {FORMAT_VERSION}")
    for key in ("model", "diffusion", "files"):
        if key not in config:
            raise ValueError(f"{directory / CONFIG} lacks the {key!r} section; the file is incomplete")
    return config


def _read_file(directory: Path, config: dict[str, Any], name: str) -> dict[str, torch.Tensor] | None:
    entry = config["files"].get(name)
    if entry is None:
        return None
    return read_verified_tensors(directory / name, entry.get("sha256"), f"checkpoint {directory}")


def load_model(directory: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = False) -> ModelBundle:
    """Rebuild a `ModelBundle` from a checkpoint folder alone.

    Args:
        use_ema: load ``ema.safetensors`` instead of ``model.safetensors`` (training checkpoints only).
    """
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    try:
        bundle = ModelBundle.from_config_dict(config)
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG} describes an invalid model: {error}") from error
    name = EMA if use_ema else MODEL
    state = _read_file(directory, config, name)
    if state is None:
        raise FileNotFoundError(f"checkpoint {directory} has no {name}" +
                                ("; it was exported without EMA weights, load it with use_ema=False" if use_ema else ""))
    load_weights(bundle, state, f"{directory / name}")
    bundle.eval()
    return bundle.to(device)


def load_weights(bundle: ModelBundle, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a flat state dict into ``bundle`` strictly, with an error that lists what did not match."""
    expected = bundle.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            details.append("wrong shapes " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:5]))
        raise ValueError(f"weights in {source} do not match the model described by its config.json: "
                         + "; ".join(details))
    bundle.load_state_dict(state, strict=True)


def load_training_checkpoint(directory: str | Path) -> tuple[ModelBundle, TrainingCheckpoint]:
    """Load a training checkpoint (model weights + EMA + optimizer + trainer state) for an exact resume."""
    directory = Path(directory)
    bundle = load_model(directory)
    bundle.train()
    config = read_checkpoint_config(directory)
    if "training_state" not in config:
        raise ValueError(f"{directory} is an exported model, not a training checkpoint; it cannot be resumed")
    return bundle, TrainingCheckpoint(_read_file(directory, config, EMA), _read_file(directory, config, OPTIMIZER),
                                      config["training_state"])
