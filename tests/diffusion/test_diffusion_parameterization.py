"""Prediction types: exact conversions, preconditioning identities, the Denoiser wrapper (float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusion_oracles import Gaussian, exact_network

from atlas.diffusion import Denoiser, add_noise, convert, get_scalings, x0_to_score
from atlas.diffusion.parameterization import PREDICTIONS, QUANTITIES

F64 = torch.float64
SIGMAS = torch.tensor([0.002, 0.03, 0.5, 1.0, 7.0, 80.0], dtype=F64)


def state(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 3, 4, generator=g, dtype=F64)
    noise = torch.randn(6, 3, 4, generator=g, dtype=F64)
    return x0, noise, add_noise(x0, noise, SIGMAS)


@pytest.mark.parametrize("source, target", list(itertools.permutations(QUANTITIES, 2)))
def test_conversions_round_trip(source, target):
    x0, noise, x = state()
    value = convert(x0, "x0", source, x, SIGMAS)
    back = convert(convert(value, source, target, x, SIGMAS), target, source, x, SIGMAS)
    scale = value.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1.0)  # score is ~1/sigma: compare relatively
    assert ((back - value).abs() / scale).max().item() < 1e-10


def test_conversions_match_the_definitions():
    x0, noise, x = state(1)
    s = SIGMAS[:, None, None]
    alpha, sigma_vp = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)
    torch.testing.assert_close(convert(x0, "x0", "eps", x, SIGMAS), noise, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(convert(x0, "x0", "v", x, SIGMAS), alpha * noise - sigma_vp * x0)
    torch.testing.assert_close(convert(noise, "eps", "score", x, SIGMAS), -noise / s)
    torch.testing.assert_close(convert(noise, "eps", "x0", x, SIGMAS), x0)
    with pytest.raises(ValueError, match="unknown target quantity 'velocity'"):
        convert(x0, "x0", "velocity", x, SIGMAS)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_network_target_is_the_regression_target(prediction):
    """F* = (x0 - c_skip x) / c_out is the noise for "eps", v for "v", x0 for "x0"; D(F*) recovers x0 always."""
    x0, noise, x = state(2)
    denoiser = Denoiser(lambda x, c: x, prediction)
    target = denoiser.network_target(x0, noise, SIGMAS)
    s = SIGMAS[:, None, None]
    expected = {
        "eps": noise,
        "v": (noise - s * x0) / torch.sqrt(1 + s**2),
        "x0": x0,
        "edm": (x0 - 0.25 / (s**2 + 0.25) * x) / (s * 0.5 / torch.sqrt(s**2 + 0.25)),
        "flow": noise - x0,
    }[prediction]
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-9)
    c = get_scalings(prediction, SIGMAS)
    torch.testing.assert_close(c.c_skip[:, None, None] * x + c.c_out[:, None, None] * target, x0)


def test_scalings_table():
    s, sd = torch.tensor([0.7], dtype=F64), 0.5
    edm = get_scalings("edm", s, sd)
    assert edm.c_skip.item() == pytest.approx(sd**2 / (0.49 + sd**2))
    assert edm.c_out.item() == pytest.approx(0.7 * sd / math.sqrt(0.49 + sd**2))
    assert edm.c_in.item() == pytest.approx(1 / math.sqrt(0.49 + sd**2))
    for prediction in PREDICTIONS:
        assert get_scalings(prediction, s).c_noise.item() == pytest.approx(0.25 * math.log(0.7))
    assert get_scalings("eps", s).c_out.item() == pytest.approx(-0.7)
    assert get_scalings("v", s).c_skip.item() == pytest.approx(1 / 1.49)
    assert get_scalings("x0", s).c_skip.item() == 0.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_denoiser_with_exact_network_is_the_exact_denoiser(prediction):
    data = Gaussian(mu=2.0, std=0.5)
    denoiser = Denoiser(exact_network(data.denoise, prediction), prediction)
    _, _, x = state(3)
    torch.testing.assert_close(denoiser(x, SIGMAS), data.denoise(x, SIGMAS), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(denoiser(x, 0.5), data.denoise(x, torch.full((6,), 0.5, dtype=F64)))
    torch.testing.assert_close(denoiser(x, torch.tensor(0.5)), denoiser(x, 0.5))


def test_denoiser_passes_conditioning_and_scaled_input():
    seen = {}

    def network(x_scaled, c_noise, context=None):
        seen.update(x_scaled=x_scaled, c_noise=c_noise, context=context)
        return torch.zeros_like(x_scaled)

    x = torch.ones(2, 3, dtype=F64)
    Denoiser(network, "edm")(x, torch.tensor([1.0, 2.0], dtype=F64), context="tokens")
    torch.testing.assert_close(seen["c_noise"], 0.25 * torch.log(torch.tensor([1.0, 2.0], dtype=F64)))
    torch.testing.assert_close(seen["x_scaled"][:, 0], 1 / torch.sqrt(torch.tensor([1.25, 4.25], dtype=F64)))
    assert seen["context"] == "tokens"


def test_denoiser_validation():
    with pytest.raises(ValueError, match="unknown prediction type 'epsilon'"):
        Denoiser(lambda x, c: x, "epsilon")
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        Denoiser(lambda x, c: x, "edm", sigma_data=0.0)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        Denoiser(lambda x, c: x)(torch.zeros(2, 3), torch.ones(3))


def test_regression_score_scaling():
    """ATLAS's score was sqrt(alpha) times the true one (reference notes, section 2.1): ours is exact."""
    data = Gaussian(mu=2.0, std=0.5)
    _, _, x = state(4)
    x = x + 2.0
    torch.testing.assert_close(x0_to_score(data.denoise(x, SIGMAS), x, SIGMAS), data.score(x, SIGMAS),
                               rtol=1e-9, atol=1e-12)


def test_point_mass_round_trip():
    """Noising x0 and applying the exact denoiser of a point mass at x0 returns x0 at 20 random sigmas."""
    g = torch.Generator().manual_seed(5)
    sigma = torch.exp(torch.empty(20, dtype=F64).uniform_(math.log(0.002), math.log(80), generator=g))
    x0 = torch.randn(20, 8, generator=g, dtype=F64)
    x = add_noise(x0, torch.randn(20, 8, generator=g, dtype=F64), sigma)
    for prediction in PREDICTIONS:
        denoiser = Denoiser(exact_network(lambda x, s: x0, prediction), prediction)
        torch.testing.assert_close(denoiser(x, sigma), x0, rtol=1e-6, atol=1e-6)
