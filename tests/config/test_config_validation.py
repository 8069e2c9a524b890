"""validate_configs: errors raise (with the fix in the message), risky combinations come back as warnings.

Each warning is checked by a key phrase, and each has a control case that does not warn, so a rule that fires
always (or never) fails here.
"""

from __future__ import annotations

import pytest
import torch

from atlas.config.kernel import KernelConfig
from atlas.config.memory_estimate import estimate_memory
from atlas.config.profiles import PROFILES, TEXT_TOKENS
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.config.validation import EPSILON_RANGE, RFF_MIN_FEATURES, validate_configs
from atlas.models import HighResModelConfig

from atlas_testing import tiny_model_config


def text_model(**overrides) -> HighResModelConfig:
    """A tiny model conditioned on the default text encoder (width 64)."""
    fields = dict(context_dim=64, pooled_dim=64, base_channels=16, channel_mult=(1, 2), attention_levels=(1,),
                  num_heads=4, resolution=32)
    fields.update(overrides)
    return tiny_model_config(**fields)


def one(warnings: list[str], phrase: str) -> str:
    matching = [w for w in warnings if phrase in w]
    assert len(matching) == 1, (phrase, warnings)
    return matching[0]


# -- consistent configs ----------------------------------------------------------------------------------
def test_nothing_given_is_nothing_to_check():
    assert validate_configs() == []


def test_consistent_defaults_give_no_warnings():
    assert validate_configs(text_model(), KernelConfig(), SamplerConfig(), ConditioningConfig()) == []
    unconditional = tiny_model_config(context_dim=None, pooled_dim=None)
    assert validate_configs(unconditional, KernelConfig(), SamplerConfig(),
                            ConditioningConfig(text_encoder="none", guidance_scale=1.0)) == []


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_is_consistent_with_itself(name):
    profile = PROFILES[name]
    # At twice its resolution, where the profile's tiles act.
    assert validate_configs(profile.model_config(), profile.kernel, profile.sampler_config(),
                            profile.conditioning_config(), profile, resolution=2 * profile.resolution) == []
    assert validate_configs(profile.model_config(), gpu_profile=name) == []  # by name too


# -- errors ----------------------------------------------------------------------------------------------
def test_context_dim_that_does_not_match_the_text_encoder_raises_naming_the_fix():
    with pytest.raises(ValueError, match=r"model_config.context_dim=32 does not match the text encoder.*"
                                         r"text_dim=64\); set context_dim=64"):
        validate_configs(text_model(context_dim=32, pooled_dim=32), conditioning_config=ConditioningConfig())
    with pytest.raises(ValueError, match=r"context_dim=None does not match.*set context_dim=64"):
        validate_configs(tiny_model_config(context_dim=None, pooled_dim=None),
                         conditioning_config=ConditioningConfig())
    with pytest.raises(ValueError, match=r"text_encoder='none'.*set context_dim=None"):
        validate_configs(text_model(), conditioning_config=ConditioningConfig(text_encoder="none"))
    assert validate_configs(text_model(context_dim=32, pooled_dim=32),
                            conditioning_config=ConditioningConfig(text_dim=32)) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"model_config": {"context_dim": 64}}, "model_config must be a HighResModelConfig or None, got dict"),
    ({"kernel_config": "rff"}, "kernel_config must be a KernelConfig or None, got str"),
    ({"sampler_config": {"batch_size": 4}}, "sampler_config must be a SamplerConfig or None, got dict"),
    ({"conditioning_config": SamplerConfig()},
     "conditioning_config must be a ConditioningConfig or None, got SamplerConfig"),
    ({"gpu_profile": 8}, "gpu_memory must be a str"),
])
def test_wrong_config_types_raise_type_error(kwargs, message):
    with pytest.raises(TypeError, match=message):
        validate_configs(**kwargs)


def test_unknown_profile_name_raises():
    with pytest.raises(ValueError, match="valid values are"):
        validate_configs(gpu_profile="7GB")


# -- warnings --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-4, 50.0])
def test_relative_epsilon_outside_the_range_warns(epsilon):
    warning = one(validate_configs(kernel_config=KernelConfig(epsilon=epsilon)), f"epsilon={epsilon}")
    assert f"outside [{EPSILON_RANGE[0]}, {EPSILON_RANGE[1]}]" in warning and "coupling='ot'" in warning


def test_epsilon_inside_the_range_or_absolute_does_not_warn():
    for epsilon in EPSILON_RANGE + (0.1,):
        assert validate_configs(kernel_config=KernelConfig(epsilon=epsilon)) == []
    assert validate_configs(kernel_config=KernelConfig(epsilon=50.0, relative_epsilon=False)) == []


def test_too_few_random_features_warn():
    warning = one(validate_configs(kernel_config=KernelConfig(solver_type="rff", rff_features=64)),
                  "rff_features=64 is low")
    assert f"at least {RFF_MIN_FEATURES}" in warning
    assert validate_configs(kernel_config=KernelConfig(solver_type="rff", rff_features=RFF_MIN_FEATURES)) == []
    assert validate_configs(kernel_config=KernelConfig(solver_type="nystrom", rff_features=64)) == []


def test_rff_with_automatic_feature_count_does_not_warn():
    # rff_features=None means "sized automatically" (KernelConfig.choose picks at least RFF_MIN_FEATURES).
    kernel = KernelConfig(solver_type="rff")
    assert kernel.choose(256, 3072).params["num_features"] >= RFF_MIN_FEATURES
    assert validate_configs(kernel_config=kernel) == []


def test_cuda_graphs_with_batched_tiles_warn():
    sampler = SamplerConfig(enable_cuda_graphs=True, tile_size=256, ultrahighres_sequential_tiles=False)
    one(validate_configs(sampler_config=sampler), "ultrahighres_sequential_tiles=True")
    sequential = sampler.updated(ultrahighres_sequential_tiles=True)  # the default
    assert validate_configs(sampler_config=sequential) == []
    assert validate_configs(sampler_config=SamplerConfig(tile_size=256)) == []


def test_cuda_graphs_on_a_cpu_profile_warn():
    sampler = SamplerConfig(enable_cuda_graphs=True)
    one(validate_configs(sampler_config=sampler, gpu_profile="CPU"), "the profile is for a CPU")
    assert validate_configs(sampler_config=sampler, gpu_profile="16GB") == []
    assert validate_configs(sampler_config=SamplerConfig(), gpu_profile="CPU") == []


def test_tile_at_least_the_image_side_warns():
    model = text_model()  # 32 px
    tiles = SamplerConfig(tile_size=64)
    one(validate_configs(model, sampler_config=SamplerConfig(tile_size=32), resolution=32),
        "tiling does nothing at this resolution")
    one(validate_configs(model, sampler_config=tiles, resolution=48), "tile_size=64 is at least the image side (48)")
    assert validate_configs(model, sampler_config=SamplerConfig(tile_size=16), resolution=32) == []
    assert validate_configs(model, sampler_config=tiles, resolution=128) == []
    # Without a resolution, tiles for larger images are a setting, not a mistake (the GPU profiles carry them).
    assert validate_configs(model, sampler_config=tiles) == []


def test_dilated_attention_with_cuda_graphs_warns():
    dilated = text_model(dilated_levels=(1,), dilated_segment_lengths=(64,), dilated_dilation_rates=(1,))
    one(validate_configs(dilated, sampler_config=SamplerConfig(enable_cuda_graphs=True)), "dilated attention")
    assert validate_configs(dilated, sampler_config=SamplerConfig()) == []
    assert validate_configs(text_model(), sampler_config=SamplerConfig(enable_cuda_graphs=True)) == []


def test_guidance_on_an_unconditional_model_warns():
    unconditional = tiny_model_config(context_dim=None, pooled_dim=None)
    warning = one(validate_configs(unconditional, conditioning_config=ConditioningConfig(text_encoder="none")),
                  "has no effect")
    assert "guidance_scale=7.5" in warning and "unconditional" in warning
    for scale in (0.0, 1.0):
        assert validate_configs(unconditional, conditioning_config=ConditioningConfig(
            text_encoder="none", guidance_scale=scale)) == []


def test_estimated_memory_above_the_tier_warns():
    model = PROFILES["12GB"].model_config()  # 512 px, text-conditioned
    sampler = SamplerConfig(batch_size=32, precision="bf16")
    warning = one(validate_configs(model, sampler_config=sampler, gpu_profile="6GB"), "estimated sampling memory")
    # The number in the warning is the estimator's, for that batch with guidance (an independent call here).
    estimate = estimate_memory(model, batch_size=32, resolution=512, dtype=torch.bfloat16, mode="inference",
                               text_tokens=TEXT_TOKENS, device="cuda")
    assert estimate.total_mb > 6 * 1024
    assert f"{estimate.total_mb:,.0f} MB (batch 32, 512px, bf16) exceeds the 6GB profile's 6,144 MB" in warning
    assert "reduce the batch size" in warning and "tile_size" in warning
    # The same model at its own profile's batch fits its own tier.
    assert validate_configs(model, sampler_config=sampler.updated(batch_size=None), gpu_profile="12GB") == []
