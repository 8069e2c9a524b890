"""Tiled denoising (atlas.memory.tiling) against closed forms and untiled oracles.

Regression tests for what the public reference got wrong (notes/atlas-reference.md §2.8): prompts dropped by
the tile wrapper, pixel sizes applied to latents (so tiling never activated), per-tile statistics unmentioned.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from atlas.diffusion import Conditioning, Denoiser, classifier_free_guidance, get_sigmas, sample
from atlas.memory import (
    BLENDINGS,
    TiledDenoiser,
    TilingConfig,
    blend_weights,
    blend_window,
    tile_layout,
    tile_starts,
)

MODES = [True, False]  # sequential, batched


class PointwiseDenoiser(nn.Module):
    """A per-pixel denoiser: a 1x1 conv, a nonlinearity and a sigma term; counts its calls and batch sizes."""

    def __init__(self, channels: int = 3, out_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 1, dtype=torch.float64)
        self.batches: list[int] = []

    def forward(self, x, sigma):
        self.batches.append(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.conv(x) * (1 + sigma) + torch.tanh(x[:, :1]) * sigma


class ConditionedPointwise(nn.Module):
    """Per-pixel in x, per-sample in the conditioning; raises when the prompt is missing (never dropped)."""

    def forward(self, x, sigma, context=None, context_mask=None, pooled=None):
        if context is None or pooled is None:
            raise AssertionError("the conditioning did not reach the model")
        mask = torch.ones(context.shape[:2], dtype=torch.bool) if context_mask is None else context_mask
        text = (context * mask[..., None]).sum(1).mean(-1)  # (B,)
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return x * pooled[:, :1, None, None] + torch.sin(x) * text[:, None, None, None] + sigma


class ConditionedNetwork(nn.Module):
    """network(x_scaled, c_noise, **cond) for atlas.diffusion.Denoiser: pointwise, conditioned."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, dtype=torch.float64)

    def forward(self, x, c_noise, context=None, context_mask=None, pooled=None):
        text = (context * context_mask[..., None]).sum(1).mean(-1)
        return self.conv(x) * pooled[:, :1, None, None] + text[:, None, None, None] + c_noise[:, None, None, None]


def _conditioning(batch: int, tokens: int, seed: int) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, tokens, generator=g) > 0.3
    return Conditioning(context, mask, torch.randn(batch, 4, generator=g, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- configuration


def test_config_default_overlap_and_strides_of_the_documented_table():
    config = TilingConfig(512)
    assert config.tile_overlap == 0.125 and config.tile_stride is None and config.stride == 448
    assert config.blending == "hann" and config.sequential is True
    # The seed's overlap table: 512 at 10% -> 461, 12.5% -> 448, 640 at 15% -> 544, 512 at 20% -> 410.
    for tile, overlap, stride in [(512, 0.10, 461), (512, 0.125, 448), (640, 0.15, 544), (512, 0.20, 410),
                                  (1024, 0.10, 922), (64, 0.0, 64)]:
        assert TilingConfig(tile, tile_overlap=overlap).stride == stride
    assert TilingConfig(512, tile_stride=300).stride == 300
    # The seed's "Basic Configuration" passes a stride and the overlap it implies: accepted.
    assert TilingConfig(512, tile_stride=448, tile_overlap=0.125, blending="hann").stride == 448


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(tile_size=512, tile_stride=600), ValueError,
     r"tile_stride \(600\) must be <= tile_size \(512\); use tile_overlap=0.125 for the default"),
    (dict(tile_size=0), ValueError, r"tile_size must be a positive number of pixels, got 0"),
    (dict(tile_size=-8), ValueError, r"tile_size must be a positive number of pixels, got -8"),
    (dict(tile_size=512.0), TypeError, r"tile_size must be an int number of pixels, got 512.0 \(float\)"),
    (dict(tile_size=True), TypeError, r"tile_size must be an int"),
    (dict(tile_size=64, tile_stride=0), ValueError, r"tile_stride must be a positive number of pixels, got 0"),
    (dict(tile_size=64, tile_overlap=1.0), ValueError, r"tile_overlap must be a fraction in \[0, 1\), got 1.0"),
    (dict(tile_size=64, tile_overlap=-0.1), ValueError, r"tile_overlap must be a fraction in \[0, 1\), got -0.1"),
    (dict(tile_size=64, tile_overlap=float("nan")), ValueError, r"tile_overlap must be a fraction"),
    (dict(tile_size=64, tile_overlap="0.1"), ValueError, r"tile_overlap must be a fraction in \[0, 1\), got '0.1'"),
    (dict(tile_size=512, tile_stride=400, tile_overlap=0.125), ValueError,
     r"tile_stride \(400\) and tile_overlap \(0.125\) disagree: with tile_size 512 that overlap means a stride "
     r"of 448; pass only one of them"),
    (dict(tile_size=1, tile_overlap=0.6), ValueError, r"tile_overlap \(0.6\) leaves a stride of 0.4 < 1 pixel"),
    (dict(tile_size=64, blending="gaussian"), ValueError,
     r"unknown tile blending 'gaussian'; valid blendings are \['hann', 'linear', 'none'\]"),
    (dict(tile_size=64, sequential="yes"), TypeError, r"sequential must be True or False, got 'yes'"),
])
def test_config_validation_messages(kwargs, error, message):
    with pytest.raises(error, match=message):
        TilingConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(Exception):
        TilingConfig(64).tile_size = 32


def test_pixel_to_latent_conversion(caplog):
    assert TilingConfig(512).in_latent_units(8) == TilingConfig(64, tile_overlap=0.125)
    assert TilingConfig(512).in_latent_units(8).stride == 56
    latent = TilingConfig(512, tile_stride=448, blending="linear", sequential=False).in_latent_units(8)
    assert (latent.tile_size, latent.stride, latent.blending, latent.sequential) == (64, 56, "linear", False)
    config = TilingConfig(96, tile_stride=40)
    assert config.in_latent_units(1) is config
    # A stride between latent pixels is rounded down (more overlap, never a gap) and said so.
    with caplog.at_level(logging.WARNING, logger="atlas.memory.tiling"):
        latent = TilingConfig(1024, tile_stride=922).in_latent_units(8)
    assert (latent.tile_size, latent.stride) == (128, 115)
    assert "tile_stride (922 pixels) is not a multiple of the autoencoder factor 8" in caplog.text


@pytest.mark.parametrize("config, factor, error, message", [
    (TilingConfig(500), 8, ValueError,
     r"tile_size \(500 pixels\) must be a multiple of the autoencoder factor \(8\).*use tile_size=496 or 504"),
    (TilingConfig(4, tile_stride=4), 8, ValueError,
     r"tile_size \(4 pixels\) must be a multiple of the autoencoder factor \(8\).*use tile_size=8 or 16"),
    (TilingConfig(64, tile_stride=4), 8, ValueError,
     r"tile_stride \(4 pixels\) is less than one latent pixel at autoencoder factor 8; use tile_stride >= 8"),
    (TilingConfig(8, tile_overlap=0.6), 8, ValueError, r"tile_overlap \(0.6\) leaves no stride for a tile of 1"),
    (TilingConfig(64), 0, ValueError, r"latent_factor must be a positive number"),
    (TilingConfig(64), 2.0, TypeError, r"latent_factor must be an int"),
])
def test_pixel_to_latent_errors(config, factor, error, message):
    with pytest.raises(error, match=message):
        config.in_latent_units(factor)


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("length, tile, stride, starts", [
    (37, 16, 11, [0, 11, 21]),
    (29, 16, 11, [0, 11, 13]),
    (64, 32, 32, [0, 32]),
    (65, 32, 32, [0, 32, 33]),
    (128, 64, 56, [0, 56, 64]),
    (10, 16, 8, [0]),
    (16, 16, 8, [0]),
    (17, 16, 1, [0, 1]),
    (5, 1, 1, [0, 1, 2, 3, 4]),
])
def test_tile_starts_closed_form(length, tile, stride, starts):
    assert tile_starts(length, tile, stride) == starts


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 37, 100, 257])
@pytest.mark.parametrize("tile, stride", [(16, 16), (16, 11), (16, 1), (7, 3), (32, 28)])
def test_tile_starts_count_flush_and_cover(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    expected = 1 if tile >= length else math.ceil((length - tile) / stride) + 1
    assert len(starts) == expected
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)  # last tile flush with the border
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))  # increasing, no gap
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered.all()


def test_tile_starts_errors():
    with pytest.raises(ValueError, match=r"stride \(9\) must be <= tile \(8\)"):
        tile_starts(20, 8, 9)
    with pytest.raises(ValueError, match="length must be a positive number of pixels, got 0"):
        tile_starts(0, 8, 4)


def test_blend_window_closed_forms():
    i = torch.arange(7, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (i + 1) / 8)
    linear = 2 * torch.minimum(i + 1, 7 - i) / 8
    torch.testing.assert_close(blend_window(7, "hann"), hann, rtol=0, atol=1e-15)
    torch.testing.assert_close(blend_window(7, "linear"), linear, rtol=0, atol=1e-15)
    assert torch.equal(blend_window(7, "none"), torch.ones(7, dtype=torch.float64))
    for blending in ("hann", "linear"):
        window = blend_window(7, blending)
        assert window.min() > 0 and torch.equal(window, window.flip(0)) and window[3] == window.max()
        # Border sides are flattened to the peak; the inner side keeps its ramp.
        start = blend_window(7, blending, at_start=True)
        assert torch.equal(start[:4], torch.full((4,), float(window[3]), dtype=torch.float64))
        assert torch.equal(start[4:], window[4:])
        assert torch.equal(blend_window(7, blending, at_end=True), start.flip(0))
        assert torch.equal(blend_window(7, blending, True, True), torch.full((7,), float(window.max()),
                                                                               dtype=torch.float64))
    assert blend_window(1, "hann").item() == 1.0 and blend_window(1, "linear").item() == 1.0
    with pytest.raises(ValueError, match="unknown tile blending 'cosine'"):
        blend_window(4, "cosine")


@pytest.mark.parametrize("blending", BLENDINGS)
@pytest.mark.parametrize("height, width, tile, stride", [
    (37, 29, 16, 11), (64, 40, 32, 24), (17, 50, 16, 16), (9, 9, 5, 1), (10, 40, 16, 8), (33, 33, 32, 31),
])
def test_normalised_weights_sum_to_one_everywhere(blending, height, width, tile, stride):
    layout = tile_layout(height, width, tile, stride)
    weights = blend_weights(layout, blending)
    assert weights.shape == (len(layout), layout.tile_height, layout.tile_width)
    assert torch.isfinite(weights).all() and (weights > 0).all()
    total = torch.zeros(height, width, dtype=torch.float64)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for weight, (top, left) in zip(weights, layout.boxes()):
        assert top + layout.tile_height <= height and left + layout.tile_width <= width
        total[top:top + layout.tile_height, left:left + layout.tile_width] += weight
        covered[top:top + layout.tile_height, left:left + layout.tile_width] += 1
    assert (covered >= 1).all()
    torch.testing.assert_close(total, torch.ones(height, width, dtype=torch.float64), rtol=0, atol=1e-12)
    # A pixel covered by a single tile gets that tile's full output, whatever the window's value there.
    assert torch.allclose(total[covered == 1], torch.ones(()).double())


def test_borders_keep_weight():
    """The reference's hann is 0 at tile edges, so image-border pixels rested on a 1e-8 clamp. Here the tile
    window at the image border equals its peak, and low precision stays finite."""
    layout = tile_layout(37, 29, 16, 11)
    for blending in ("hann", "linear"):
        corner = blend_weights(layout, blending)[0]  # the top-left tile; its top-left block is covered only by it
        assert torch.equal(corner[:5, :5], torch.ones(5, 5, dtype=torch.float64))
    model = TiledDenoiser(lambda x, sigma: x * 3, TilingConfig(16, tile_stride=15))
    x = torch.randn(1, 2, 47, 31).to(torch.bfloat16)
    out = model(x, 1.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # Accumulated in float32: the normalised sum returns each bf16 value exactly.
    assert torch.equal(out, x * 3)


# ----------------------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("blending", BLENDINGS)
@pytest.mark.parametrize("sequential", MODES)
@pytest.mark.parametrize("shape, config", [
    ((2, 3, 37, 29), dict(tile_size=16, tile_stride=11)),
    ((1, 3, 64, 40), dict(tile_size=32, tile_overlap=0.25)),
    ((3, 3, 17, 50), dict(tile_size=16, tile_stride=16)),
    ((1, 3, 9, 13), dict(tile_size=5, tile_stride=1)),
    ((2, 3, 10, 40), dict(tile_size=16, tile_stride=8)),  # tile taller than the image: one row of tiles
])
def test_pointwise_model_tiled_equals_full(blending, sequential, shape, config):
    torch.manual_seed(0)
    model = PointwiseDenoiser()
    x = torch.randn(shape, dtype=torch.float64)
    sigma = torch.rand(shape[0], dtype=torch.float64) + 0.1
    tiled = TiledDenoiser(model, TilingConfig(**config, blending=blending, sequential=sequential))
    with torch.no_grad():
        full = model(x, sigma)
        out = tiled(x, sigma)
        out_scalar_sigma = tiled(x, 0.7)
        full_scalar_sigma = model(x, 0.7)
    assert out.dtype == torch.float64 and out.shape == full.shape
    assert (out - full).abs().max() < 1e-6
    assert (out_scalar_sigma - full_scalar_sigma).abs().max() < 1e-6


def test_output_channels_may_differ_from_input():
    model = PointwiseDenoiser(channels=3, out_channels=5)
    x = torch.randn(2, 3, 21, 19, dtype=torch.float64)
    with torch.no_grad():
        out = TiledDenoiser(model, TilingConfig(8, tile_stride=5, sequential=False))(x, 1.0)
        assert (out - model(x, 1.0)).abs().max() < 1e-6


@pytest.mark.parametrize("height, width", [(16, 16), (12, 16), (16, 9), (3, 5)])
def test_tile_covering_the_image_is_a_no_op(height, width):
    calls = []

    def denoiser(x, sigma, **cond):
        calls.append((x, sigma, cond))
        return torch.sin(x) * sigma[:, None, None, None]

    x = torch.randn(2, 3, height, width)
    sigma = torch.tensor([0.5, 2.0])
    context = torch.randn(2, 4, 6)
    for sequential in MODES:
        calls.clear()
        tiled = TiledDenoiser(denoiser, TilingConfig(16, tile_stride=4, sequential=sequential))
        out = tiled(x, sigma, context=context)
        assert len(calls) == 1 and calls[0][0] is x and calls[0][1] is sigma and calls[0][2]["context"] is context
        assert torch.equal(out, denoiser(x, sigma))
        assert tiled.last_call.tiles == 1 and tiled.last_call.denoiser_calls == 1


@pytest.mark.parametrize("height, width, tile, stride, grid", [
    (37, 29, 16, 11, (3, 3)),
    (64, 64, 32, 32, (2, 2)),
    (65, 64, 32, 32, (3, 2)),
    (128, 128, 64, 56, (3, 3)),
    (100, 17, 16, 1, (85, 2)),
    (10, 40, 16, 8, (1, 4)),
])
def test_tile_count_per_axis(height, width, tile, stride, grid):
    model = PointwiseDenoiser(channels=1, out_channels=1)
    x = torch.randn(2, 1, height, width, dtype=torch.float64)
    sequential = TiledDenoiser(model, TilingConfig(tile, tile_stride=stride))
    with torch.no_grad():
        sequential(x, 1.0)
    assert sequential.last_call.grid == grid
    assert model.batches == [2] * (grid[0] * grid[1])  # one call per tile with the batch
    model.batches.clear()
    batched = TiledDenoiser(model, TilingConfig(tile, tile_stride=stride, sequential=False))
    with torch.no_grad():
        batched(x, 1.0)
    assert model.batches == [2 * grid[0] * grid[1]]  # every tile of every sample in one call
    call = batched.last_call
    assert (call.grid, call.denoiser_calls, call.batch_per_call) == (grid, 1, 2 * grid[0] * grid[1])
    assert call.tile_size == (min(tile, height), min(tile, width)) and call.image_size == (height, width)
    assert batched.stats()["tiles_evaluated"] == 2 * grid[0] * grid[1]


def test_stats_accumulate_and_reset():
    tiled = TiledDenoiser(lambda x, sigma: x, TilingConfig(8, tile_stride=8))
    for _ in range(3):
        tiled(torch.randn(1, 1, 16, 24), 1.0)
    assert tiled.stats() == {"forward_calls": 3, "denoiser_calls": 18, "tiles_evaluated": 18,
                             "last_call": tiled.last_call}
    tiled.reset_stats()
    assert tiled.stats()["forward_calls"] == 0 and tiled.last_call is None


def test_pixel_sizes_are_converted_to_latent_units():
    """Reference bug: a 512-pixel tile applied to a 128-latent (a 1024-pixel image) never tiled."""
    model = PointwiseDenoiser(channels=4, out_channels=4)
    latent = torch.randn(1, 4, 128, 128, dtype=torch.float64)
    tiled = TiledDenoiser(model, TilingConfig(512), latent_factor=8)  # 64 latent pixels, stride 56
    with torch.no_grad():
        out = tiled(latent, 1.0)
        assert (out - model(latent, 1.0)).abs().max() < 1e-6
    assert tiled.last_call.grid == (3, 3) and tiled.last_call.tile_size == (64, 64)
    small = torch.randn(1, 4, 64, 64, dtype=torch.float64)  # a 512-pixel image: one tile
    tiled(small, 1.0)
    assert tiled.last_call.tiles == 1
    # Read as latent pixels (the reference's mistake) the same config covers the 128-latent: nothing tiles.
    as_latent = TiledDenoiser(model, TilingConfig(512), latent_factor=1)
    as_latent(latent, 1.0)
    assert as_latent.last_call.tiles == 1
    with pytest.raises(ValueError, match=r"tile_size \(500 pixels\) must be a multiple"):
        TiledDenoiser(model, TilingConfig(500), latent_factor=8)


@pytest.mark.parametrize("sequential", MODES)
def test_conditioning_reaches_every_tile(sequential):
    """Reference bug: the tile wrapper's forward(x, t) dropped the prompt."""
    seen = []

    def probe(x, sigma, context=None, pooled=None):
        seen.append((x.shape[0], context, pooled))
        # Every row must carry the conditioning row of the sample its tile came from: x encodes the sample index.
        sample = x[:, 0, 0, 0].round().long()
        assert torch.equal(context, base_context[sample]) and torch.equal(pooled, base_pooled[sample])
        return x + pooled[:, :1, None, None]

    base_context, base_pooled = torch.randn(3, 4, 6), torch.randn(3, 2)
    x = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 2, 20, 30).contiguous()
    tiled = TiledDenoiser(probe, TilingConfig(8, tile_stride=6, sequential=sequential))
    out = tiled(x, 1.0, context=base_context, pooled=base_pooled)
    assert len(seen) == tiled.last_call.denoiser_calls and tiled.last_call.tiles == 3 * 5
    torch.testing.assert_close(out, x + base_pooled[:, :1, None, None], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sequential", MODES)
def test_conditioned_pointwise_model_equals_untiled(sequential):
    model = ConditionedPointwise()
    cond = _conditioning(3, 5, seed=1)
    x = torch.randn(3, 2, 23, 31, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    tiled = TiledDenoiser(model, TilingConfig(12, tile_stride=7, blending="linear", sequential=sequential))
    out = tiled(x, sigma, **cond.as_kwargs())
    assert (out - model(x, sigma, **cond.as_kwargs())).abs().max() < 1e-6
    with pytest.raises(AssertionError, match="conditioning did not reach"):
        tiled(x, sigma)


@pytest.mark.parametrize("sequential", MODES)
def test_classifier_free_guidance_over_tiles_equals_untiled(sequential):
    model = ConditionedPointwise()
    cond, uncond = _conditioning(2, 5, seed=2), _conditioning(2, 3, seed=3)  # different token counts: padded
    x = torch.randn(2, 2, 19, 26, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    tiled = TiledDenoiser(model, TilingConfig(10, tile_overlap=0.3, sequential=sequential))
    guided = classifier_free_guidance(tiled, cond, uncond, 4.5)(x, sigma)
    expected = classifier_free_guidance(model, cond, uncond, 4.5)(x, sigma)
    assert (guided - expected).abs().max() < 1e-6
    assert tiled.last_call.batch_per_call == (4 if sequential else 4 * tiled.last_call.tiles)


@pytest.mark.parametrize("sequential", MODES)
def test_denoiser_of_a_network_under_guidance_through_a_sampler(sequential):
    torch.manual_seed(0)
    denoiser = Denoiser(ConditionedNetwork(), prediction="eps")
    cond, uncond = _conditioning(2, 4, seed=4), _conditioning(2, 4, seed=5)
    x = torch.randn(2, 2, 21, 18, dtype=torch.float64) * 10
    sigmas = get_sigmas("karras", 6, sigma_max=10.0).double()
    tiled = TiledDenoiser(denoiser, TilingConfig(8, tile_stride=5, sequential=sequential))
    with torch.no_grad():
        out = sample("heun", classifier_free_guidance(tiled, cond, uncond, 3.0), x, sigmas)
        expected = sample("heun", classifier_free_guidance(denoiser, cond, uncond, 3.0), x, sigmas)
    assert (out - expected).abs().max() < 1e-6
    assert tiled.stats()["forward_calls"] >= len(sigmas) - 1


def test_per_tile_statistics_closed_form():
    """A model with global statistics (GroupNorm, attention) sees per-tile statistics under tiling. With
    D(x) = the spatial mean of x and x = column index, each tile returns the mean of its columns."""

    def spatial_mean(x, sigma):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)

    x = torch.arange(32, dtype=torch.float64).expand(1, 1, 8, 32)
    out = TiledDenoiser(spatial_mean, TilingConfig(16, tile_stride=8, blending="none"))(x, 1.0)
    # Tiles over columns [0, 16), [8, 24), [16, 32) have means 7.5, 15.5, 23.5; "none" averages overlaps.
    expected = torch.tensor([7.5] * 8 + [11.5] * 8 + [19.5] * 8 + [23.5] * 8, dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected.expand(8, 32), rtol=0, atol=1e-12)
    assert not torch.allclose(out, spatial_mean(x, 1.0))  # the untiled model returns 15.5 everywhere


def test_real_unet_runs_tiled_with_prompts(bundle):
    torch.manual_seed(0)
    with torch.no_grad():  # the UNet's output layers start at zero; perturb them so the prompt shows
        for parameter in bundle.network.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    denoiser = bundle.denoiser()
    cond, uncond = bundle.encode(["red circle", "blue square"]), bundle.encode(["", ""])
    x = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = {}
        for sequential in MODES:
            tiled = TiledDenoiser(denoiser, TilingConfig(8, tile_stride=4, sequential=sequential))
            outputs[sequential] = classifier_free_guidance(tiled, cond, uncond, 5.0)(x, 2.0)
            assert tiled.last_call.grid == (2, 3)
        assert outputs[True].shape == x.shape and torch.isfinite(outputs[True]).all()
        torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-5, atol=1e-5)
        # The prompt matters through the tiles.
        other = classifier_free_guidance(TiledDenoiser(denoiser, TilingConfig(8, tile_stride=4)),
                                         bundle.encode(["green square", "red circle"]), uncond, 5.0)(x, 2.0)
        assert not torch.allclose(other, outputs[True])
        whole = TiledDenoiser(denoiser, TilingConfig(16))
        assert torch.equal(whole(x, 2.0, **cond.as_kwargs()), denoiser(x, 2.0, **cond.as_kwargs()))


def test_wrapper_argument_errors():
    tiled = TiledDenoiser(lambda x, sigma, **cond: x, TilingConfig(8, tile_stride=4))
    x = torch.randn(2, 1, 20, 20)
    with pytest.raises(ValueError, match=r"tiling needs x of shape \(B, C, H, W\), got \(2, 20, 20\)"):
        tiled(x[:, 0], 1.0)
    with pytest.raises(ValueError, match=r"sigma must be .* shape \(B,\) = \(2,\), got \(3,\)"):
        tiled(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"conditioning 'context' has shape \(3, 4, 5\) but x has batch 2"):
        tiled(x, 1.0, context=torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"the denoiser returned shape \(2, 1, 4, 4\) for tiles of shape"):
        TiledDenoiser(lambda x, sigma: x[:, :, ::2, ::2], TilingConfig(8, tile_stride=4))(x, 1.0)
    with pytest.raises(TypeError, match="config must be a TilingConfig, got dict"):
        TiledDenoiser(lambda x, sigma: x, {"tile_size": 8})


def test_non_tensor_and_none_conditioning_pass_through():
    def denoiser(x, sigma, pooled=None, scale=1.0):
        assert pooled is None
        return x * scale

    x = torch.randn(1, 1, 20, 20, dtype=torch.float64)
    for sequential in MODES:
        tiled = TiledDenoiser(denoiser, TilingConfig(8, tile_stride=4, sequential=sequential))
        torch.testing.assert_close(tiled(x, 1.0, pooled=None, scale=2.0), 2 * x, rtol=0, atol=1e-12)
