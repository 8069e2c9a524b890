"""Pipeline features: latent models decode through their autoencoder, coarse-to-fine with tiles keeps the peak
bounded by the tile, precision, and per-image independence through every path."""

import pytest
import torch

from atlas.bundle import ModelBundle
from atlas.config.sampler import SamplerConfig
from atlas.memory.ledger import measure_peak_bytes
from atlas.models.autoencoder import ConvAutoencoder, ConvAutoencoderConfig
from atlas.pipeline import Pipeline

from atlas_testing import tiny_bundle, tiny_model_config

PROMPT = ["a red circle"]


def _perturbed(bundle):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in bundle.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return bundle.eval()


def _latent_bundle():
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=4, downsample_factor=4, base_channels=8))
    base = tiny_bundle()
    return _perturbed(ModelBundle.build(tiny_model_config(in_channels=4), base.text_encoder.config, base.diffusion,
                                        autoencoder=autoencoder))


def test_latent_model_samples_latents_and_returns_decoded_images():
    bundle = _latent_bundle()
    result = Pipeline(bundle, SamplerConfig(precision="fp32")).generate(PROMPT, num_samples=2, steps=2, seed=0)
    assert result.latents.shape == (2, 4, 8, 8) and result.images.shape == (2, 3, 32, 32)
    expected = ((bundle.decode(result.latents).float() + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(result.images, expected, rtol=0, atol=1e-6)


def test_latent_model_tiles_are_given_in_pixels():
    bundle = _latent_bundle()
    pipeline = Pipeline(bundle, SamplerConfig(precision="fp32", tile_size=16, tile_overlap=0.5))
    assert pipeline.tiling.tile_size == 4  # 16 px / factor 4
    calls = []
    bundle.network.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape[2:])))
    pipeline.generate(PROMPT, steps=1, seed=0)
    assert set(calls) == {(4, 4)}
    with pytest.raises(ValueError, match="multiple of the autoencoder factor|multiple"):
        Pipeline(bundle, SamplerConfig(precision="fp32", tile_size=18))


def test_coarse_to_fine_with_tiles_keeps_the_peak_bounded_by_the_tile():
    bundle = _perturbed(tiny_bundle())

    def peak(resolution, tile):
        tiles = {} if tile is None else dict(tile_size=tile, tile_overlap=0.25, ultrahighres_sequential_tiles=True)
        pipeline = Pipeline(bundle, SamplerConfig(precision="fp32", **tiles))
        return measure_peak_bytes(lambda: pipeline.generate(PROMPT, steps=2, seed=0, resolution=resolution), "cpu")

    image_bytes = {r: 3 * r * r * 4 for r in (16, 32)}  # one float32 image of the sampler's state
    untiled_growth = peak(32, None) - peak(16, None)
    tiled_growth = peak(32, 8) - peak(16, 8)
    # Tiled, only full-size images (state, denoised, the fp32 accumulators; x2 for guidance) grow with the image;
    # untiled, every activation of the network does (here ~10x more).
    assert tiled_growth <= 16 * (image_bytes[32] - image_bytes[16])
    assert untiled_growth > 3 * tiled_growth


def test_every_path_keeps_images_independent_of_the_batch():
    bundle = _perturbed(tiny_bundle().double())
    config = dict(precision="fp32", tile_size=4, tile_overlap=0.5)
    kwargs = dict(num_samples=3, steps=2, seed=11, resolution=16)
    batched = Pipeline(bundle, SamplerConfig(**config)).generate(PROMPT, **kwargs).images
    single = Pipeline(bundle, SamplerConfig(batch_size=1, **config)).generate(PROMPT, **kwargs).images
    torch.testing.assert_close(single, batched, rtol=0, atol=1e-12)


def test_coarse_to_fine_needs_two_steps():
    with pytest.raises(ValueError, match="coarse-to-fine and needs steps >= 2"):
        Pipeline(tiny_bundle(), SamplerConfig(precision="fp32")).generate(PROMPT, steps=1, resolution=16)


def test_reduced_precision_needs_a_float32_model():
    with pytest.raises(ValueError, match="precision='bf16' autocasts float32 weights, but this model is torch.float64"):
        Pipeline(tiny_bundle().double(), SamplerConfig(precision="bf16"))
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        Pipeline(tiny_bundle(), SamplerConfig(precision="fp16"))


def test_bf16_runs_the_network_in_bf16_and_returns_float32_images():
    bundle = _perturbed(tiny_bundle())
    dtypes = []
    bundle.network.conv_in.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    result = Pipeline(bundle, SamplerConfig(precision="bf16")).generate(PROMPT, steps=2, seed=0)
    assert set(dtypes) == {torch.bfloat16} and result.images.dtype == torch.float32
    reference = Pipeline(bundle, SamplerConfig(precision="fp32")).generate(PROMPT, steps=2, seed=0).images
    assert 0 < (result.images - reference).abs().max() < 0.1


def test_back_off_can_tile_when_the_configured_tiles_do_not_act():
    # A GPU profile's tiles (e.g. 256 px) do nothing on a small image; out of memory, the back-off still tiles.
    bundle = _perturbed(tiny_bundle())
    pipeline = Pipeline(bundle, SamplerConfig(precision="fp32", tile_size=64, batch_size=1))
    seen = []

    def refuse_whole_images(module, args):
        seen.append(tuple(args[0].shape[2:]))
        if args[0].shape[-1] >= 16:
            raise torch.OutOfMemoryError("injected: out of memory")

    bundle.network.register_forward_pre_hook(refuse_whole_images)
    result = pipeline.generate(PROMPT, steps=2, seed=0, resolution=16)
    assert result.backoff.tiling_enabled and not result.stats["tiles_act"]
    assert seen[-1] == (8, 8) and result.images.shape == (1, 3, 16, 16)
