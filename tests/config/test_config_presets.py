"""Training presets: every name loads into fresh, editable configs that ``run_training`` accepts.

Regressions of the reference implementation (../shared/notes/atlas-reference.md §0 item 8, §7 items 9 and 17):
its ``gpu:*`` bundles had no "dataset" key, so ``run_training`` raised KeyError; ``experiment:celeba1024`` put
full attention on 65,536 tokens; its budgets were typed-in constants. The module loads every preset once (each
budget costs a few estimator traces) and shares them through the ``presets`` fixture.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from atlas.checkpoint import load_model
from atlas.config.kernel import KernelConfig
from atlas.config.presets import PRESET_NAMES, load_preset
from atlas.config.profiles import PROFILES, GPUProfile
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.config.validation import validate_configs
from atlas.data.presets import DATASET_PRESETS, DatasetConfig
from atlas.examples.training_pipeline import main, resolve_preset, run_training
from atlas.models import HighResLatentScoreModel, HighResModelConfig
from atlas.training.config import TrainingConfig

MIB = 2 ** 20
DATASETS = ("cifar10", "imagenet64", "ffhq128", "lsun_bedroom256", "celebahq1024")
# The keys the module docstring documents, with the type of each value.
DOCUMENTED = {"model": HighResModelConfig, "training": TrainingConfig, "dataset": DatasetConfig,
              "sampler": SamplerConfig, "kernel": KernelConfig, "conditioning": ConditioningConfig,
              "profile": GPUProfile, "resolution": int, "max_batch_size": int, "memory_budget_mb": float,
              "output_dir": str}


@pytest.fixture(scope="module")
def presets() -> dict[str, dict]:
    return {name: load_preset(name) for name in PRESET_NAMES}


@pytest.fixture
def image_folder(tmp_path):
    """Four 16x16 PNGs with <stem>.txt captions."""
    root = tmp_path / "images"
    root.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "grey": (128, 128, 128)}
    for i, (word, rgb) in enumerate(colours.items()):
        image = Image.new("RGB", (20, 16), rgb)
        image.paste((255, 255, 255), (2 + i, 3, 9 + i, 10))
        image.save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a {word} square")
    return root


def shrink_for_cpu(config: dict, root) -> dict:
    """Seed example 4's edits, plus a tiny model at 16 px on the CPU so the run takes seconds."""
    config["dataset"].root = str(root)
    config["training"].epochs = 1
    model = config["model"]
    model.base_channels, model.channel_mult, model.num_res_blocks = 8, (1, 2), 1
    model.attention_levels, model.num_heads, model.norm_groups = (1,), 2, 4
    model.gradient_checkpointing, model.resolution = False, 16
    config["dataset"].resolution = 16
    training = config["training"]
    training.resolution, training.batch_size, training.grad_accum = 16, 2, 1
    training.device, training.precision, training.warmup_steps = "cpu", "fp32", 1
    return config


# -- loading ---------------------------------------------------------------------------------------------
def test_preset_names():
    assert set(PRESET_NAMES) == {f"gpu:{gb}gb" for gb in (6, 8, 12, 16, 24, 32)} | {"cpu"} | \
        {f"dataset:{name}" for name in DATASETS}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_loads_with_the_documented_keys(name, presets):
    config = presets[name]
    for key, cls in DOCUMENTED.items():
        assert isinstance(config[key], cls), (name, key, type(config[key]))
    # The reference's gpu bundles had no "dataset" key; every key run_training reads is present and agrees.
    model, training, dataset = config["model"], config["training"], config["dataset"]
    assert config["resolution"] == model.resolution == training.resolution == dataset.resolution
    assert config["max_batch_size"] == config["profile"].batch_size == config["sampler"].batch_size
    assert model.context_dim == config["conditioning"].context_dim
    assert training.coupling_kernel == config["kernel"]
    assert dataset.root is None  # atlas never points at (or downloads) data itself
    assert config["output_dir"] == f"runs/{name.replace(':', '-')}"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_passes_validation(name, presets):
    config = presets[name]
    assert validate_configs(config["model"], config["kernel"], config["sampler"], config["conditioning"]) == []
    if config["conditioning"].text_encoder == "none":  # an unconditional preset does not default to guidance
        assert config["conditioning"].guidance_scale == 1.0


@pytest.mark.parametrize("name", [n for n in PRESET_NAMES if not n.startswith("dataset:")])
def test_gpu_presets_are_their_profiles(name, presets):
    config = presets[name]
    profile = PROFILES["CPU" if name == "cpu" else name[4:].upper()]
    assert config["profile"] is profile
    assert config["model"] == profile.model_config()
    assert config["memory_budget_mb"] == profile.memory_budget_mb
    assert config["training"].precision == profile.precision
    assert config["training"].batch_size == profile.training["batch_size"]


def test_each_load_returns_fresh_objects(presets):
    first = load_preset("gpu:8gb")
    first["training"].epochs = 200
    first["dataset"].root = "./my_images"
    first["model"].base_channels = 8
    first["output_dir"] = "elsewhere"
    first["memory_budget_mb"] = 0.0
    second = load_preset("gpu:8gb")
    for key in ("model", "training", "dataset"):
        assert second[key] is not first[key]
        assert second[key] == presets["gpu:8gb"][key]
    assert second["training"].epochs is None and second["dataset"].root is None
    assert second["model"].base_channels == PROFILES["8GB"].model["base_channels"]
    assert second["output_dir"] == "runs/gpu-8gb" and second["memory_budget_mb"] > 0

    data = load_preset("dataset:cifar10")
    data["dataset"].root = "./cifar"
    data["training"].lr = 1.0
    assert DATASET_PRESETS["cifar10"].root is None
    again = load_preset("dataset:cifar10")
    assert again["dataset"].root is None and again["training"].lr != 1.0


@pytest.mark.parametrize("bad", ["gpu:10gb", "gpu:cpu", "dataset:mnist", "8gb", "experiment:celeba1024", ""])
def test_unknown_presets_list_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        load_preset(bad)
    assert repr(bad) in str(info.value)
    for name in PRESET_NAMES:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="preset name must be a str"):
        load_preset(8)


def test_names_are_case_and_space_insensitive(presets):
    assert load_preset(" GPU:8GB ")["model"] == presets["gpu:8gb"]["model"]
    assert load_preset("Dataset:CIFAR10")["name"] == "dataset:cifar10"


# -- budgets and attention -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_budget_fits_90_percent_of_the_tier_and_counts_the_training_state(name, presets):
    config = presets[name]
    tier_mb = config["profile"].memory_gb * 1024
    assert 0 < config["memory_budget_mb"] <= 0.9 * tier_mb, (name, config["memory_budget_mb"], tier_mb)
    # Not a typed-in constant: at least fp32 weights, gradients, two AdamW moments and the EMA copy.
    with torch.device("meta"):
        params = sum(p.numel() for p in HighResLatentScoreModel(config["model"]).parameters())
    assert config["memory_budget_mb"] * MIB >= 5 * 4 * params


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_no_full_attention_over_1024_tokens(name, presets):
    model = presets[name]["model"]
    full = {level: (model.resolution // 2 ** level) ** 2 for level in model.attention_levels
            if level not in model.dilated_levels}
    assert full and max(full.values()) <= 1024, (name, full)


def test_celebahq1024_is_1024px_with_dilated_attention_at_64x64(presets):
    model = presets["dataset:celebahq1024"]["model"]
    assert model.resolution == 1024
    dilated = {level: (model.resolution // 2 ** level) ** 2 for level in model.dilated_levels}
    assert 4096 in dilated.values()


def test_dataset_presets_use_their_datasets(presets):
    for name in DATASETS:
        config = presets[f"dataset:{name}"]
        assert config["dataset"].name == name
        assert config["resolution"] == DATASET_PRESETS[name].resolution


# -- run_training ----------------------------------------------------------------------------------------
def test_seed_example_trains_and_exports_a_loadable_model(tmp_path, image_folder):
    config = load_preset("gpu:8gb")
    config["dataset"].root = str(image_folder)
    config["training"].epochs = 200
    assert config["training"].epochs == 200  # the example's edit sticks; the run below is shortened
    shrink_for_cpu(config, image_folder)
    exported = run_training(config, tmp_path / "run", progress=False)
    bundle = load_model(exported)
    assert bundle.network.config.resolution == 16 and bundle.network.config.base_channels == 8
    assert bundle.text_encoder is not None  # gpu:8gb trains a text encoder on the sidecar captions
    assert bundle.text_encoder.dim == config["conditioning"].text_dim == bundle.network.config.context_dim
    assert bundle.metadata["epochs"] == {"epochs": 1, "dataset_length": 4, "steps_per_epoch": 2, "steps": 2}
    assert bundle.metadata["command"] == "run_training(load_preset('gpu:8gb'))"
    assert bundle.network.conv_out.weight.abs().sum() > 0  # zero-initialised: the optimizer steps ran


def test_preset_without_text_encoder_exports_an_unconditional_model(tmp_path, image_folder):
    config = shrink_for_cpu(load_preset("gpu:6gb"), image_folder)
    assert config["conditioning"].text_encoder == "none"
    bundle = load_model(run_training(config, tmp_path / "run", progress=False))
    assert bundle.text_encoder is None and bundle.network.config.context_dim is None  # captions are ignored


def test_conditioning_none_switches_the_text_encoder_off(tmp_path, image_folder):
    config = shrink_for_cpu(load_preset("cpu"), image_folder)
    config["conditioning"] = ConditioningConfig(text_encoder="none")
    _, dataset, overrides, text = resolve_preset(config)
    assert text is None and dataset.captions == "none"
    assert "context_dim" not in overrides and overrides["base_channels"] == 8


def test_root_not_set_is_a_clear_error(tmp_path):
    config = load_preset("dataset:cifar10")
    with pytest.raises(ValueError, match=r"root is not set; atlas never downloads data") as info:
        run_training(config, tmp_path / "run", progress=False)
    assert "config['dataset'].root" in str(info.value) and "CIFAR-10" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_missing_root_folder_is_a_clear_error(tmp_path):
    config = load_preset("cpu")
    config["dataset"].root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training(config, tmp_path / "run", progress=False)


def test_resolutions_that_disagree_are_an_error(tmp_path, image_folder):
    config = load_preset("cpu")
    config["dataset"].root = str(image_folder)
    config["training"].resolution = 32
    with pytest.raises(ValueError, match="resolutions disagree: model 64, training 32, dataset 64"):
        run_training(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("key", ["dataset", "model", "training", "kernel", "conditioning"])
def test_a_missing_key_names_load_preset(key, tmp_path):
    config = load_preset("cpu")
    del config[key]
    with pytest.raises(KeyError, match=rf"no '{key}' entry.*load_preset"):
        run_training(config, tmp_path / "run", progress=False)


def test_a_wrong_type_is_an_error(tmp_path):
    config = load_preset("cpu")
    config["dataset"] = {"root": "x"}
    with pytest.raises(TypeError, match=r"config\['dataset'\] must be a DatasetConfig, got dict"):
        run_training(config, tmp_path / "run", progress=False)


def test_no_text_encoder_with_the_captioned_shapes_dataset_is_an_error(tmp_path):
    config = load_preset("cpu")
    config["dataset"] = DatasetConfig(name="shapes", resolution=64, channels=3)
    config["conditioning"] = ConditioningConfig(text_encoder="none")
    with pytest.raises(ValueError, match="text_encoder='none' but the 'shapes' dataset makes captions"):
        run_training(config, tmp_path / "run", progress=False)


def test_edited_fields_are_validated_again(tmp_path, image_folder):
    config = load_preset("cpu")
    config["dataset"].root = str(image_folder)
    config["training"].precision = "fp16"  # needs CUDA; the preset trains on the CPU
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        run_training(config, tmp_path / "run", progress=False)


# -- the command line ------------------------------------------------------------------------------------
def test_dry_run_prints_the_configs(capsys, presets):
    assert main(["--preset", "dataset:cifar10", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for key in ("model", "training", "dataset", "sampler", "kernel", "conditioning"):
        assert f"\n{key}: " in f"\n{out}"
    budget = presets["dataset:cifar10"]["memory_budget_mb"]
    assert f"memory_budget_mb: {budget:,.0f} (tier 6GB)" in out


def test_dry_run_applies_the_flags(capsys, tmp_path):
    assert main(["--preset", "cpu", "--data-root", str(tmp_path), "--epochs", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"root='{tmp_path}'" in out and "epochs=3" in out


def test_command_line_rejects_unknown_presets_listing_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--preset", "gpu:10gb", "--dry-run"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "gpu:10gb" in err and all(name in err for name in PRESET_NAMES)
