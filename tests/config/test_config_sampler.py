"""SamplerConfig and ConditioningConfig: validation messages (value given, valid choices, the fix), copies
with ``updated``, dict round trips, and what the tile and text fields turn into."""

from __future__ import annotations

import math

import pytest

from atlas.conditioning import TextEncoderConfig
from atlas.config.sampler import PRECISIONS, ConditioningConfig, SamplerConfig
from atlas.diffusion import SAMPLERS, SCHEDULES
from atlas.memory.tiling import BLENDINGS, TilingConfig


# -- SamplerConfig validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "SamplerConfig.batch_size=0 must be an integer >= 1 or None (all images at once)"),
    ({"batch_size": -2}, "SamplerConfig.batch_size=-2 must be an integer >= 1"),
    ({"batch_size": 2.0}, "SamplerConfig.batch_size=2.0 must be an integer >= 1"),
    ({"batch_size": True}, "SamplerConfig.batch_size=True must be an integer >= 1"),
    ({"timesteps": 0}, "SamplerConfig.timesteps=0 must be an integer >= 1; 20-50 is typical"),
    ({"cuda_graph_warmup_iters": -1}, "SamplerConfig.cuda_graph_warmup_iters=-1 must be an integer >= 0"),
    ({"cuda_graph_cache_size": 0}, "SamplerConfig.cuda_graph_cache_size=0 must be an integer >= 1"),
])
def test_counts_are_validated(kwargs, message):
    with pytest.raises(ValueError) as info:
        SamplerConfig(**kwargs)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("field, value, valid", [
    ("sampler", "ddpm_magic", SAMPLERS), ("schedule", "sigmoid", SCHEDULES), ("precision", "fp8", PRECISIONS),
    ("tile_blending", "gaussian", BLENDINGS),
])
def test_choices_list_the_valid_names(field, value, valid):
    kwargs = {field: value, **({"tile_size": 512} if field == "tile_blending" else {})}
    with pytest.raises(ValueError) as info:
        SamplerConfig(**kwargs)
    message = str(info.value)
    assert f"SamplerConfig.{field}={value!r}" in message
    for name in valid:
        assert repr(name) in message


def test_every_listed_choice_is_accepted():
    for name in SAMPLERS:
        assert SamplerConfig(sampler=name).sampler == name
    for name in SCHEDULES:
        assert SamplerConfig(schedule=name).schedule == name
    for precision in PRECISIONS:
        assert SamplerConfig(precision=precision).precision == precision
    for blending in BLENDINGS:
        assert SamplerConfig(tile_size=64, tile_blending=blending).tiling_config().blending == blending


def test_tile_stride_above_the_tile_size_has_the_specifications_message():
    with pytest.raises(ValueError) as info:
        SamplerConfig(tile_size=512, tile_stride=600)
    assert str(info.value) == "tile_stride (600) must be <= tile_size (512); use tile_overlap=0.125 for the default"


@pytest.mark.parametrize("overlap", [1.0, 1.5, -0.1])
def test_tile_overlap_must_be_in_zero_one(overlap):
    with pytest.raises(ValueError, match=rf"tile_overlap must be a fraction in \[0, 1\), got {overlap}"):
        SamplerConfig(tile_size=512, tile_overlap=overlap)


@pytest.mark.parametrize("field, value", [("tile_stride", 448), ("tile_overlap", 0.125)])
def test_stride_or_overlap_without_a_tile_size_raise(field, value):
    with pytest.raises(ValueError, match=rf"SamplerConfig.{field}={value!r} has no effect without tile_size; "
                                         r"set tile_size \(e.g. 512\)"):
        SamplerConfig(**{field: value})


def test_stride_and_overlap_together_must_agree():
    # The specification's example passes all three; 512 * (1 - 0.125) = 448.
    config = SamplerConfig(tile_size=512, tile_stride=448, tile_overlap=0.125)
    assert config.tiling_config().stride == 448
    with pytest.raises(ValueError, match=r"tile_stride \(400\) and tile_overlap \(0.125\) disagree: with tile_size "
                                         r"512 that overlap means a stride of 448; pass only one of them"):
        SamplerConfig(tile_size=512, tile_stride=400, tile_overlap=0.125)


def test_tile_size_must_be_a_positive_int():
    with pytest.raises(ValueError, match="tile_size must be a positive number"):
        SamplerConfig(tile_size=0)
    with pytest.raises(TypeError, match="tile_size must be an int"):
        SamplerConfig(tile_size=256.0)


# -- tiling_config ---------------------------------------------------------------------------------------
def test_tiling_config_maps_the_fields():
    assert SamplerConfig().tiling_config() is None
    batched = SamplerConfig(tile_size=256, tile_blending="linear", ultrahighres_sequential_tiles=False).tiling_config()
    assert isinstance(batched, TilingConfig)
    assert (batched.tile_size, batched.blending, batched.sequential) == (256, "linear", False)
    assert SamplerConfig(tile_size=256).tiling_config().sequential  # the default bounds memory by the tile
    assert batched.stride == round(256 * (1 - 0.125))  # the default overlap
    sequential = SamplerConfig(tile_size=256, tile_stride=200, ultrahighres_sequential_tiles=True).tiling_config()
    assert (sequential.sequential, sequential.stride) == (True, 200)
    assert SamplerConfig(tile_size=100, tile_overlap=0.5).tiling_config().stride == 50


# -- updated, to_dict, from_dict -------------------------------------------------------------------------
def test_updated_returns_a_validated_copy():
    base = SamplerConfig()
    changed = base.updated(batch_size=4, timesteps=20)
    assert (changed.batch_size, changed.timesteps) == (4, 20)
    assert (base.batch_size, base.timesteps) == (None, 50)
    with pytest.raises(ValueError, match="SamplerConfig.batch_size=0"):
        base.updated(batch_size=0)


def test_updated_with_an_unknown_field_lists_the_fields():
    with pytest.raises(TypeError) as info:
        SamplerConfig().updated(num_steps=10, guidance=3)
    message = str(info.value)
    assert "unknown SamplerConfig option(s) ['guidance', 'num_steps']" in message
    for name in ("sampler", "timesteps", "batch_size", "tile_size", "tile_overlap", "enable_cuda_graphs"):
        assert repr(name) in message


def test_dict_round_trip():
    config = SamplerConfig(sampler="heun", schedule=sorted(SCHEDULES)[0], timesteps=12, batch_size=3,
                           precision="bf16", enable_cuda_graphs=True, cuda_graph_warmup_iters=1,
                           cuda_graph_cache_size=4, tile_size=128, tile_overlap=0.25, tile_blending="none",
                           ultrahighres_sequential_tiles=True, hierarchical=False, oom_backoff=False,
                           memory_check=False, verbose_logging=True)
    data = config.to_dict()
    assert data["tile_overlap"] == 0.25 and data["sampler"] == "heun"
    assert SamplerConfig.from_dict(data) == config
    assert SamplerConfig.from_dict({}) == SamplerConfig()
    with pytest.raises(TypeError, match="unknown SamplerConfig option"):
        SamplerConfig.from_dict({**data, "cfg": 7})


def test_frozen():
    with pytest.raises(AttributeError):
        SamplerConfig().batch_size = 2


# -- ConditioningConfig ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [-1.0, math.nan, math.inf, "7.5"])
def test_guidance_scale_must_be_a_finite_number_at_least_zero(scale):
    with pytest.raises(ValueError, match=r"guidance_scale=.* must be a finite number >= 0 \(1 = no guidance"):
        ConditioningConfig(guidance_scale=scale)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"negative_prompt": None}, TypeError, "negative_prompt must be a str, got NoneType"),
    ({"text_encoder": "clip"}, ValueError, "text_encoder='clip' must be one of ('vocab', 'none')"),
    ({"text_dim": 0}, ValueError, "ConditioningConfig.text_dim=0 must be an integer >= 1"),
    ({"text_layers": -1}, ValueError, "ConditioningConfig.text_layers=-1 must be an integer >= 0"),
])
def test_conditioning_fields_are_validated(kwargs, error, message):
    with pytest.raises(error) as info:
        ConditioningConfig(**kwargs)
    assert message in str(info.value)


def test_context_dim_follows_the_text_encoder():
    assert ConditioningConfig().context_dim == 64
    assert ConditioningConfig(text_dim=32).context_dim == 32
    assert ConditioningConfig(text_encoder="none", text_dim=32).context_dim is None
    assert ConditioningConfig(guidance_scale=0.0).guidance_scale == 0.0


@pytest.mark.parametrize("text_dim, text_layers", [(64, 2), (32, 0), (6, 1), (1, 3)])
def test_text_overrides_build_a_text_encoder_of_the_context_width(text_dim, text_layers):
    conditioning = ConditioningConfig(text_dim=text_dim, text_layers=text_layers)
    overrides = conditioning.text_overrides()
    assert (overrides["dim"], overrides["num_layers"]) == (text_dim, text_layers)
    encoder = TextEncoderConfig(vocabulary=["a", "red", "square"], **overrides)  # heads divide the width
    assert encoder.dim == conditioning.context_dim
    assert ConditioningConfig(text_encoder="none").text_overrides() is None


def test_conditioning_round_trip():
    config = ConditioningConfig(guidance_scale=3.0, negative_prompt="blurry", text_dim=32, text_layers=1)
    assert ConditioningConfig(**config.to_dict()) == config
