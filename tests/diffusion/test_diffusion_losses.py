"""Training losses: the EDM identity, min-SNR weights, training sigmas and condition dropout."""

from __future__ import annotations

import math

import pytest
import torch

from atlas.diffusion import (
    Conditioning,
    Denoiser,
    add_noise,
    condition_dropout,
    diffusion_loss,
    edm_loss,
    min_snr_weight,
    sample_sigmas_lognormal,
    sample_sigmas_vp,
)

F64 = torch.float64


def linear_net(x, c_noise, pooled=None):
    """An arbitrary (wrong) network: the identity must hold for any F."""
    out = 0.7 * x + 0.1 * c_noise[:, None, None]
    return out if pooled is None else out + pooled.mean(1)[:, None, None]


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(5, 3, 4, generator=g, dtype=F64)
    noise = torch.randn(5, 3, 4, generator=g, dtype=F64)
    sigma = torch.tensor([0.01, 0.2, 1.0, 5.0, 60.0], dtype=F64)
    return x0, noise, sigma


def test_edm_loss_is_lambda_weighted_denoising_error():
    x0, noise, sigma = batch()
    denoiser = Denoiser(linear_net, "edm", sigma_data=0.5)
    cond = Conditioning(pooled=torch.randn(5, 2, dtype=F64))
    denoised = denoiser(add_noise(x0, noise, sigma), sigma, **cond.as_kwargs())
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    expected = weight * (denoised - x0).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(edm_loss(denoiser, x0, sigma, noise, cond), expected)
    torch.testing.assert_close(diffusion_loss(denoiser, x0, sigma, noise, cond), expected)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_losses_regress_their_target(prediction):
    x0, noise, sigma = batch(1)
    zero = Denoiser(lambda x, c: torch.zeros_like(x), prediction)
    s = sigma[:, None, None]
    target = {"eps": noise, "v": (noise - s * x0) / torch.sqrt(1 + s**2), "x0": x0}[prediction]
    plain = diffusion_loss(zero, x0, sigma, noise, None)
    torch.testing.assert_close(plain, target.pow(2).mean(dim=(1, 2)))
    weighted = diffusion_loss(zero, x0, sigma, noise, None, min_snr_gamma=5.0)
    torch.testing.assert_close(weighted, plain * min_snr_weight(sigma, prediction, 5.0))


def test_min_snr_weights():
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=F64)  # SNR = 100, 1, 0.01
    torch.testing.assert_close(min_snr_weight(sigma, "eps", 5.0), torch.tensor([0.05, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(min_snr_weight(sigma, "v", 5.0), torch.tensor([5 / 101, 0.5, 0.01 / 1.01], dtype=F64))
    torch.testing.assert_close(min_snr_weight(sigma, "x0", 5.0), torch.tensor([5.0, 1.0, 0.01], dtype=F64))
    x0, noise, sigma = batch()
    with pytest.raises(ValueError, match="already weights its loss"):
        diffusion_loss(Denoiser(linear_net, "edm"), x0, sigma, noise, None, min_snr_gamma=5.0)


def test_loss_validation():
    x0, noise, sigma = batch()
    with pytest.raises(ValueError, match="prediction='edm'"):
        edm_loss(Denoiser(linear_net, "eps"), x0, sigma, noise)
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(5,\)"):
        diffusion_loss(Denoiser(linear_net), x0, sigma[:3], noise)
    with pytest.raises(ValueError, match="batch size 2 but x0 has 5"):
        diffusion_loss(Denoiser(linear_net), x0, sigma, noise, Conditioning(pooled=torch.zeros(2, 2)))


def test_training_sigma_distributions():
    g = torch.Generator().manual_seed(0)
    log_sigma = sample_sigmas_lognormal(200_000, generator=g, dtype=F64).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.01 and abs(log_sigma.std().item() - 1.2) < 0.01
    for schedule, top in (("vp_cosine", 100.0), ("vp_linear", 153.0)):
        sigma = sample_sigmas_vp(50_000, schedule, generator=g, dtype=F64)
        assert sigma.shape == (50_000,) and 0.0 < sigma.min().item() and sigma.max().item() < top
        # t ~ U(0.001, 1): the median t ~= 0.5 gives sigma = sqrt(1 / alpha_bar(0.5) - 1), written out in closed form
        half = {"vp_cosine": math.cos(0.508 / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2,
                "vp_linear": math.exp(-0.1 * 0.5 - 0.5 * 19.9 * 0.25)}[schedule]
        assert sigma.median().item() == pytest.approx(math.sqrt(1 / half - 1), rel=0.03)
    with pytest.raises(ValueError, match="valid names are"):
        sample_sigmas_vp(4, "karras")


def test_condition_dropout():
    g = torch.Generator().manual_seed(0)
    cond = Conditioning(torch.randn(6, 3, 2, generator=g), None, torch.randn(6, 4, generator=g))
    null = Conditioning(torch.zeros(1, 5, 2), torch.tensor([[True, False, False, False, False]]), torch.zeros(1, 4))
    kept = condition_dropout(cond, null, 0.0, generator=g)
    torch.testing.assert_close(kept.context[:, :3], cond.context)
    assert kept.context_mask.tolist() == [[True] * 3 + [False] * 2] * 6
    dropped = condition_dropout(cond, null, 1.0, generator=g)
    torch.testing.assert_close(dropped.context, null.context.expand(6, 5, 2))
    assert dropped.context_mask.tolist() == null.context_mask.expand(6, 5).tolist()
    assert dropped.pooled.abs().max().item() == 0.0
    big = Conditioning(pooled=torch.ones(20_000, 1))
    rate = condition_dropout(big, Conditioning(pooled=torch.zeros(1, 1)), 0.3, generator=g).pooled
    assert abs(1 - rate.mean().item() - 0.3) < 0.01
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        condition_dropout(cond, null, 1.5)
    with pytest.raises(ValueError, match="batch size 1 or 6"):
        condition_dropout(cond, Conditioning(torch.zeros(2, 5, 2), None, torch.zeros(2, 4)), 0.5)
