"""The autoencoder interface and latent bundles: shapes, factor, config round trip, checkpoint round trip."""

import pytest
import torch

from atlas.bundle import ModelBundle
from atlas.checkpoint import load_model, save_checkpoint
from atlas.models.autoencoder import Autoencoder, ConvAutoencoder, ConvAutoencoderConfig, build_autoencoder

from atlas_testing import tiny_bundle, tiny_model_config


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_conv_autoencoder_shapes_follow_the_factor(factor):
    ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=4, downsample_factor=factor, base_channels=8))
    images = torch.rand(2, 3, 32, 24) * 2 - 1
    latents = ae.encode(images)
    assert latents.shape == (2, 4, 32 // factor, 24 // factor) == ae.latent_shape(2, 32, 24)
    assert ae.decode(latents).shape == images.shape


def test_scaling_factor_scales_latents_and_is_undone_by_decode():
    torch.manual_seed(0)
    plain = ConvAutoencoder(ConvAutoencoderConfig(base_channels=8))
    scaled = ConvAutoencoder(ConvAutoencoderConfig(base_channels=8, scaling_factor=0.25))
    scaled.load_state_dict(plain.state_dict())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(scaled.encode(images), 0.25 * plain.encode(images))
    latents = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(scaled.decode(0.25 * latents), plain.decode(latents))


@pytest.mark.parametrize("fields,match", [
    (dict(downsample_factor=3), "power of two"),
    (dict(downsample_factor=1), "power of two"),
    (dict(latent_channels=0), "latent_channels=0"),
    (dict(scaling_factor=0.0), "scaling_factor"),
])
def test_config_validation(fields, match):
    with pytest.raises(ValueError, match=match):
        ConvAutoencoderConfig(**fields)


def test_wrong_sizes_and_channels_say_what_to_do():
    ae = ConvAutoencoder(ConvAutoencoderConfig(downsample_factor=4, base_channels=8))
    with pytest.raises(ValueError, match="not a multiple of the autoencoder's downsampling factor 4"):
        ae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"decode expects \(B, 4, H, W\)"):
        ae.decode(torch.zeros(1, 3, 8, 8))


def test_build_round_trip_and_unknown_type():
    ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=2, downsample_factor=2, base_channels=8))
    again = build_autoencoder(ae.to_config())
    assert isinstance(again, ConvAutoencoder) and again.config == ae.config
    with pytest.raises(ValueError, match="unknown autoencoder type 'kl'"):
        build_autoencoder({"type": "kl"})
    with pytest.raises(ValueError, match="invalid 'conv' autoencoder config"):
        build_autoencoder({"type": "conv", "width": 3})


def test_base_class_methods_raise_not_implemented():
    with pytest.raises(NotImplementedError, match="must implement encode"):
        Autoencoder().encode(torch.zeros(1))


def _latent_bundle():
    torch.manual_seed(0)
    ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=4, downsample_factor=4, base_channels=8))
    base = tiny_bundle()
    network_config = tiny_model_config(in_channels=4)
    return ModelBundle.build(network_config, base.text_encoder.config, base.diffusion, autoencoder=ae)


def test_latent_bundle_reports_pixel_geometry_and_decodes():
    bundle = _latent_bundle()
    assert (bundle.latent_factor, bundle.native_resolution, bundle.image_channels) == (4, 32, 3)
    assert bundle.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 32, 32)
    pixel = tiny_bundle()
    x = torch.randn(1, 3, 8, 8)
    assert pixel.decode(x) is x and pixel.latent_factor == 1 and pixel.native_resolution == 8


def test_latent_channels_must_match_the_network():
    ae = ConvAutoencoder(ConvAutoencoderConfig(latent_channels=4, base_channels=8))
    base = tiny_bundle()
    with pytest.raises(ValueError, match="build the network with in_channels=4"):
        ModelBundle.build(tiny_model_config(), base.text_encoder.config, base.diffusion, autoencoder=ae)


def test_checkpoint_round_trip_keeps_the_autoencoder(tmp_path):
    bundle = _latent_bundle()
    save_checkpoint(tmp_path / "m", bundle)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.autoencoder, ConvAutoencoder) and loaded.autoencoder.config == bundle.autoencoder.config
    latents = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(loaded.decode(latents), bundle.eval().decode(latents), rtol=0, atol=0)
