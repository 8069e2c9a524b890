"""GPU memory profiles: the six tiers and CPU, computed budgets under 0.9 x the tier, "auto" detection from
injected capabilities, name parsing and the printed table.

Regressions of the reference implementation (../shared/notes/atlas-reference.md §0 items 7-8, §7 item 9):
``gpu_memory="auto"`` raised; presets put full attention on 65,536 tokens; budgets were typed-in constants.
Each profile's budget costs a few estimator traces, so it is computed once per profile object (the
``GPUProfile.estimates`` cache) and shared by the module through the ``budgets`` fixture.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atlas.config.memory_estimate import estimate_memory
from atlas.config.profiles import (GPU_MEMORY_CHOICES, PROFILES, TEXT_TOKENS, GPUProfile, detect_gpu_profile,
                                   get_profile, list_profiles)
from atlas.config.sampler import SamplerConfig
from atlas.models import HighResLatentScoreModel
from atlas.runtime.hardware import Capabilities

GIB = 2 ** 30
MIB = 2 ** 20
GPU_TIERS = {"6GB": 6, "8GB": 8, "12GB": 12, "16GB": 16, "24GB": 24, "32GB": 32}
NAMES = list(GPU_TIERS) + ["CPU"]
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
MAX_FULL_ATTENTION_TOKENS = 1024


@pytest.fixture(scope="module")
def budgets() -> dict[str, float]:
    """Every profile's budget in MiB, computed once (the PROFILES objects cache their estimates)."""
    return {name: PROFILES[name].memory_budget_mb for name in NAMES}


def full_attention_tokens(model) -> dict[int, int]:
    """Tokens per full (not dilated) self-attention level: (resolution / 2**level)**2."""
    return {level: (model.resolution // 2 ** level) ** 2 for level in model.attention_levels
            if level not in model.dilated_levels}


def fake_caps(kind: str, free_gib: float | None, total_gib: float | None) -> Capabilities:
    """An injected device record: nothing here probes the machine."""
    cuda = kind == "cuda"
    return Capabilities(
        device_kind=kind, device_index=0 if kind != "cpu" else None, name=f"fake {kind}",
        compute_capability=(8, 6) if cuda else None,
        total_memory_bytes=None if total_gib is None else int(total_gib * GIB),
        free_memory_bytes=None if free_gib is None else int(free_gib * GIB),
        free_memory_source="mem_get_info" if free_gib is not None else "unavailable",
        bf16=cuda, fp16=cuda, tf32=cuda, cuda_graphs=cuda, flash_sdpa=cuda, cpu_count=2,
        torch_version=torch.__version__, cuda_version="12.1" if cuda else None)


def expected_tier(free_bytes: int | None, budgets: dict[str, float]) -> str:
    """The rule, from the budgets: the largest GPU tier whose budget fits, else the smallest tier."""
    if free_bytes is None:
        return "6GB"
    fitting = [name for name in GPU_TIERS if budgets[name] * MIB <= free_bytes]
    return max(fitting, key=GPU_TIERS.get) if fitting else min(GPU_TIERS, key=GPU_TIERS.get)


# -- the tiers -------------------------------------------------------------------------------------------
def test_six_gpu_tiers_and_a_cpu_profile():
    assert set(PROFILES) == set(NAMES)
    for name, gb in GPU_TIERS.items():
        assert PROFILES[name].memory_gb == gb and PROFILES[name].device_kind == "cuda"
    assert PROFILES["CPU"].device_kind == "cpu" and PROFILES["CPU"].precision == "fp32"
    assert not PROFILES["CPU"].enable_cuda_graphs
    assert set(GPU_MEMORY_CHOICES) == set(NAMES) | {"auto"}


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_positive_and_at_most_90_percent_of_the_tier(name, budgets):
    profile = PROFILES[name]
    assert 0 < budgets[name] <= 0.9 * profile.memory_gb * 1024, (name, budgets[name])


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_the_larger_of_a_training_and_a_sampling_estimate_of_its_own_settings(name, budgets):
    profile = PROFILES[name]
    estimates = profile.estimates
    assert set(estimates) == {"training", "inference"}
    assert budgets[name] == max(estimates["training"].total_mb, estimates["inference"].total_mb)
    train, infer = estimates["training"].inputs, estimates["inference"].inputs
    micro = profile.training["batch_size"] // profile.training.get("grad_accum", 1)
    dtype = str(profile.dtype).replace("torch.", "")
    assert (train["mode"], train["batch_size"], train["resolution"], train["dtype"]) == \
        ("training", micro, profile.resolution, dtype)
    assert (infer["mode"], infer["batch_size"], infer["resolution"], infer["dtype"]) == \
        ("inference", profile.batch_size, profile.resolution, dtype)
    assert infer["guidance"] == profile.text_encoder  # classifier-free guidance doubles a text model's batch
    # Lower bound independent of the trace: a training step holds fp32 parameters, gradients, two AdamW
    # moments and the EMA copy at once.
    with torch.device("meta"):
        params = sum(p.numel() for p in HighResLatentScoreModel(profile.model_config()).parameters())
    assert budgets[name] * MIB >= 5 * 4 * params


def test_cpu_budget_matches_direct_estimates_of_its_documented_settings(budgets):
    profile = PROFILES["CPU"]
    model = profile.model_config()
    train = estimate_memory(model, batch_size=profile.training["batch_size"], resolution=profile.resolution,
                            dtype=torch.float32, mode="training", text_tokens=TEXT_TOKENS, device="cpu")
    sample = estimate_memory(model, batch_size=profile.batch_size, resolution=profile.resolution,
                             dtype=torch.float32, mode="inference", guidance=True, text_tokens=TEXT_TOKENS,
                             device="cpu")
    assert budgets["CPU"] == pytest.approx(max(train.total_mb, sample.total_mb), rel=1e-9)


def test_budget_is_computed_from_the_model_not_typed_in(budgets):
    base = PROFILES["CPU"]
    bigger = dataclasses.replace(base, model={**base.model, "base_channels": 2 * base.model["base_channels"]})
    assert bigger.memory_budget_mb > budgets["CPU"]
    assert bigger.estimates["training"].model_params_mb > 3 * base.estimates["training"].model_params_mb


@pytest.mark.parametrize("name", NAMES)
def test_model_builds_on_meta_and_its_parameter_count_is_the_estimators(name, budgets):
    profile = PROFILES[name]
    with torch.device("meta"):
        network = HighResLatentScoreModel(profile.model_config())
    assert all(p.is_meta for p in network.parameters())
    count = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
    train, infer = profile.estimates["training"], profile.estimates["inference"]
    assert train.terms["parameter_count"] == sum(p.numel() for p in network.parameters())
    assert train.model_params_mb * MIB == 4 * count  # training keeps fp32 weights
    assert infer.model_params_mb * MIB == ITEMSIZE[profile.precision] * count  # sampling casts to the dtype
    assert network.config.context_dim == profile.conditioning_config().context_dim
    assert (network.config.context_dim is not None) == profile.text_encoder


@pytest.mark.parametrize("name", NAMES)
def test_no_full_attention_over_1024_tokens(name):
    model = PROFILES[name].model_config()
    tokens = full_attention_tokens(model)
    assert tokens, f"{name} has no attention level"
    assert max(tokens.values()) <= MAX_FULL_ATTENTION_TOKENS, (name, tokens)


def test_token_count_helper_against_the_reference_defect():
    # The reference's celeba1024 preset: full attention at 256x256 = 65,536 tokens (128 GiB per fp32 matrix).
    from atlas.models import HighResModelConfig

    reference_like = HighResModelConfig(resolution=1024, channel_mult=(1, 1, 2, 2), attention_levels=(2,))
    assert full_attention_tokens(reference_like) == {2: 65536}
    dilated = HighResModelConfig(resolution=1024, channel_mult=(1, 1, 2, 2), attention_levels=(2,),
                                 dilated_levels=(2,), dilated_segment_lengths=(1024,), dilated_dilation_rates=(1,))
    assert full_attention_tokens(dilated) == {}


@pytest.mark.parametrize("name", NAMES)
def test_sampler_config_carries_the_profile_settings(name):
    profile = PROFILES[name]
    sampler = profile.sampler_config()
    assert isinstance(sampler, SamplerConfig)
    assert (sampler.batch_size, sampler.precision, sampler.enable_cuda_graphs, sampler.tile_size) == \
        (profile.batch_size, profile.precision, profile.enable_cuda_graphs, profile.tile_size)
    assert sampler.ultrahighres_sequential_tiles  # tiles that bound memory
    assert profile.conditioning_config().text_encoder == ("vocab" if profile.text_encoder else "none")


# -- auto detection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, free_gib, total_gib", [
    ("cpu", 60, 64), ("cpu", None, None), ("mps", 30, 32), ("mps", None, None),
])
def test_cpu_and_mps_get_the_cpu_profile(kind, free_gib, total_gib):
    assert detect_gpu_profile(fake_caps(kind, free_gib, total_gib)).name == "CPU"


@pytest.mark.parametrize("free_gib", [1, 4, 6.5, 9, 13, 17, 25, 40])
def test_cuda_gets_the_largest_tier_whose_budget_fits_free_memory(free_gib, budgets):
    caps = fake_caps("cuda", free_gib, 48)
    chosen = detect_gpu_profile(caps)
    assert chosen.name == expected_tier(caps.free_memory_bytes, budgets)
    assert get_profile("auto", capabilities=caps) is chosen


def test_cuda_detection_ends_of_the_table(budgets):
    # Every budget is under 0.9 x 32 GiB, so 40 GiB free takes the top tier; 1 GiB fits none: the smallest.
    assert detect_gpu_profile(fake_caps("cuda", 40, 48)).name == "32GB"
    assert detect_gpu_profile(fake_caps("cuda", 1, 48)).name == "6GB"
    tiers = [GPU_TIERS[detect_gpu_profile(fake_caps("cuda", gib, 48)).name] for gib in (1, 4, 6.5, 9, 13, 17, 25, 40)]
    assert tiers == sorted(tiers)  # more free memory never picks a smaller tier


@pytest.mark.parametrize("total_gib", [5, 12, 24])
def test_unknown_free_memory_falls_back_to_total(total_gib, budgets):
    caps = fake_caps("cuda", None, total_gib)
    assert detect_gpu_profile(caps).name == expected_tier(int(total_gib * GIB), budgets)


def test_unknown_free_and_total_memory_gives_the_smallest_tier():
    assert detect_gpu_profile(fake_caps("cuda", None, None)).name == "6GB"


def test_auto_does_not_raise_on_this_machine(budgets):
    # The reference raised ValueError for its documented gpu_memory="auto".
    assert isinstance(get_profile("auto"), GPUProfile)


# -- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, name", [
    ("8GB", "8GB"), ("8gb", "8GB"), ("8", "8GB"), (" 12 GB ", "12GB"), ("32GB", "32GB"), ("6gb", "6GB"),
    ("cpu", "CPU"), ("CPU", "CPU"),
])
def test_get_profile_parses_names(text, name):
    assert get_profile(text) is PROFILES[name]


def test_get_profile_passes_a_profile_through_and_auto_uses_the_capabilities():
    custom = dataclasses.replace(PROFILES["8GB"], batch_size=2)
    assert get_profile(custom) is custom
    assert get_profile("auto", capabilities=fake_caps("cpu", 8, 16)) is PROFILES["CPU"]
    assert get_profile("AUTO", capabilities=fake_caps("mps", 8, 16)) is PROFILES["CPU"]


@pytest.mark.parametrize("bad", ["7GB", "8 GiB", "gpu:8gb", "", "big"])
def test_get_profile_rejects_unknown_names_listing_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        get_profile(bad)
    message = str(info.value)
    assert repr(bad) in message
    for choice in GPU_MEMORY_CHOICES:
        assert repr(choice) in message


@pytest.mark.parametrize("bad", [8, 8.0, None, ["8GB"]])
def test_get_profile_rejects_non_strings(bad):
    with pytest.raises(TypeError, match="gpu_memory must be a str"):
        get_profile(bad)


# -- the printed table -----------------------------------------------------------------------------------
def test_list_profiles_prints_the_specifications_format(capsys, budgets):
    returned = list_profiles()
    out = capsys.readouterr().out
    assert returned == list(PROFILES.values())
    lines = out.splitlines()
    assert lines[0] == "Available GPU Memory Profiles:"
    assert set(lines[1]) == {"="}
    for profile in returned:
        start = lines.index(f"{profile.name}:")
        block = lines[start + 1:start + 11]
        side = profile.resolution
        expected = [f"  Description: {profile.description}", f"  Resolution: {side}x{side}",
                    f"  Batch size: {profile.batch_size}",
                    f"  Mixed precision: {profile.precision != 'fp32'} ({profile.precision})",
                    f"  Text encoder enabled: {profile.text_encoder}"]
        assert block[:5] == expected, profile.name
        assert any(line.startswith(f"  Kernel solver: {profile.kernel.solver_type}") for line in block)
        assert any(line.startswith("  CUDA graphs: ") for line in block)
        budget_line = f"  Memory budget (estimated): {budgets[profile.name]:,.0f} MB of {profile.memory_gb:g} GB"
        assert budget_line in block


def test_list_profiles_can_return_without_printing(capsys):
    assert list_profiles(print_table=False) == list(PROFILES.values())
    assert capsys.readouterr().out == ""


def test_budget_is_kept_on_disk_keyed_by_settings_and_code(tmp_path, monkeypatch):
    import dataclasses

    from atlas.config import profiles as module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = dataclasses.replace(module.PROFILES["CPU"])  # a new object: nothing cached in memory
    computed = fresh.memory_budget_mb
    assert (tmp_path / "atlas" / "profile_budgets.json").is_file()
    again = dataclasses.replace(module.PROFILES["CPU"])
    monkeypatch.setattr(module, "_estimates", lambda profile: pytest.fail("recomputed despite the disk cache"))
    assert again.memory_budget_mb == computed
    # Other settings, or other estimator code, are another key: computed, not read.
    monkeypatch.setattr(module, "_source_fingerprint", lambda: "other code")
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        dataclasses.replace(module.PROFILES["CPU"]).memory_budget_mb


def test_unreadable_budget_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, caplog):
    import dataclasses

    from atlas.config import profiles as module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "profile_budgets.json").write_text("{not json")
    budget = dataclasses.replace(module.PROFILES["CPU"]).memory_budget_mb
    assert budget > 0 and "ignoring the unreadable profile budget cache" in caplog.text
    assert module._budget_key(module.PROFILES["CPU"]) in (tmp_path / "atlas" / "profile_budgets.json").read_text()
