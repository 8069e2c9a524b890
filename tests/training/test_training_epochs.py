"""TrainingConfig.epochs (run length in passes over the data) and train() with a DatasetConfig."""

import json
from collections import Counter

import pytest
import torch
from PIL import Image

from atlas.checkpoint import load_model
from atlas.data import DatasetConfig, dataset_preset
from atlas.training import TrainingConfig, batch_indices, train

TINY_MODEL = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                  norm_groups=4)
TINY_TEXT = dict(dim=16, num_layers=1, num_heads=2)


@pytest.mark.parametrize("length,batch,epochs,steps", [(10, 4, 3, 9), (8, 4, 2, 4), (1, 32, 5, 5), (33, 32, 1, 2)])
def test_epochs_become_steps(length, batch, epochs, steps):
    config = TrainingConfig(batch_size=batch, epochs=epochs, steps=1000)
    resolved = config.for_dataset(length)
    assert resolved.steps == steps and resolved.epochs is None
    assert resolved == TrainingConfig(batch_size=batch, steps=steps)  # nothing else changes
    assert config.steps_per_epoch(length) == -(-length // batch)
    # The resolved run visits every image at least `epochs` times (batches slice per-epoch permutations).
    seen = Counter(i for step in range(steps) for i in batch_indices(length, config.seed, step, batch))
    assert set(seen) == set(range(length)) and min(seen.values()) >= epochs


def test_without_epochs_the_steps_stand():
    config = TrainingConfig(steps=7)
    assert config.for_dataset(100) is config


@pytest.mark.parametrize("epochs", [0, -2, 2.5, True, "3"])
def test_invalid_epochs(epochs):
    with pytest.raises(ValueError, match=f"epochs={epochs!r} must be a positive integer"):
        TrainingConfig(epochs=epochs)
    with pytest.raises(ValueError, match="dataset_length=0"):
        TrainingConfig(epochs=2).for_dataset(0)


def test_saved_configs_without_epochs_still_load():
    config = TrainingConfig(epochs=4, batch_size=8)
    assert TrainingConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in TrainingConfig(steps=12).to_dict().items() if k != "epochs"}
    assert TrainingConfig.from_dict(old) == TrainingConfig(steps=12) and TrainingConfig.from_dict(old).epochs is None


def _run(out, epochs, resume=False, **overrides):
    # 6 shapes at batch 4: 2 steps per epoch.
    config = TrainingConfig(dataset="shapes", dataset_size=6, resolution=16, epochs=epochs, batch_size=4,
                            checkpoint_every=1, log_every=1, warmup_steps=1, **overrides)
    return train(config, out, model_overrides=TINY_MODEL, text_overrides=TINY_TEXT, resume=resume, progress=False)


def _steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_runs_epochs_and_records_the_resolution(tmp_path):
    bundle = load_model(_run(tmp_path / "a", epochs=2, steps=999))
    assert _steps_logged(tmp_path / "a") == [1, 2, 3, 4]
    assert bundle.metadata["training"]["steps"] == 4 and bundle.metadata["training"]["epochs"] is None
    assert bundle.metadata["epochs"] == {"epochs": 2, "dataset_length": 6, "steps_per_epoch": 2, "steps": 4}
    assert bundle.metadata["dataset"] == "shapes"
    assert bundle.metadata["dataset_config"]["name"] == "shapes" and bundle.metadata["dataset_config"]["size"] == 6


def test_more_epochs_resume_exactly(tmp_path):
    straight = load_model(_run(tmp_path / "straight", epochs=2))
    _run(tmp_path / "b", epochs=1)
    resumed = load_model(_run(tmp_path / "b", epochs=2, resume=True))
    assert _steps_logged(tmp_path / "b") == [1, 2, 3, 4]
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(ValueError, match="training settings differ.*lr"):
        _run(tmp_path / "b", epochs=3, resume=True, lr=1e-3)


@pytest.fixture
def class_tree(tmp_path):
    colours = {"red_square": (200, 30, 30), "blue_circle": (30, 30, 200)}
    for index in range(4):
        name = list(colours)[index % 2]
        (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 20), colours[name]).save(tmp_path / "data" / name / f"{index}.png")
    return tmp_path / "data"


def test_train_on_a_dataset_config(tmp_path, class_tree):
    dataset = dataset_preset("cifar10")
    dataset.root, dataset.resolution = str(class_tree), 16
    training = TrainingConfig(resolution=16, epochs=1, batch_size=2, checkpoint_every=0, log_every=1)
    bundle = load_model(train(training, tmp_path / "run", dataset=dataset, model_overrides=TINY_MODEL,
                              text_overrides=TINY_TEXT, progress=False))
    # The class folders became the captions, so the text encoder knows exactly their words.
    assert bundle.is_conditional and bundle.text_encoder.config.vocabulary == ["blue", "circle", "red", "square"]
    assert bundle.metadata["dataset"] == f"folder:{class_tree}"
    assert bundle.metadata["training"]["dataset"] == f"folder:{class_tree}"
    assert bundle.metadata["training"]["steps"] == 2
    assert DatasetConfig.from_dict(bundle.metadata["dataset_config"]) == dataset


def test_dataset_config_must_match_the_training_resolution_and_have_a_root(tmp_path, class_tree):
    dataset = DatasetConfig(name="folder", root=str(class_tree), resolution=32)
    with pytest.raises(ValueError, match=r"resolution=32 differs from TrainingConfig.resolution=16"):
        train(TrainingConfig(resolution=16), tmp_path / "x", dataset=dataset, progress=False)
    with pytest.raises(ValueError, match="root is not set"):
        train(TrainingConfig(resolution=32), tmp_path / "y", dataset=dataset_preset("cifar10"), progress=False)
    with pytest.raises(TypeError, match="dataset must be a DatasetConfig"):
        train(TrainingConfig(), tmp_path / "z", dataset="shapes", progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
