"""Sigma grids, VP schedules and the single shared noise convention."""

from __future__ import annotations

import math

import pytest
import torch

from atlas.diffusion import (
    SCHEDULES,
    alpha_bar_to_sigma,
    convention,
    exponential_sigmas,
    from_vp,
    get_sigmas,
    karras_sigmas,
    losses,
    noise_level,
    samplers,
    schedules,
    sigma_to_alpha_bar,
    to_vp,
    vp_cosine_alpha_bar,
    vp_linear_alpha_bar,
)

F64 = torch.float64


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("n", [1, 2, 10, 300])
def test_grids_descend_and_append_zero(name, n):
    sigmas = get_sigmas(name, n, dtype=F64)
    assert sigmas.shape == (n + 1,) and sigmas[-1].item() == 0.0 and sigmas.dtype == F64
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert get_sigmas(name, n, append_zero=False).shape == (n,)


def test_grid_endpoints():
    k = karras_sigmas(10, 0.01, 50.0, 5.0, append_zero=False, dtype=F64)
    assert k[0].item() == pytest.approx(50.0) and k[-1].item() == pytest.approx(0.01)
    ramp = torch.linspace(0, 1, 10, dtype=F64)
    torch.testing.assert_close(k, (50 ** (1 / 5) + ramp * (0.01 ** (1 / 5) - 50 ** (1 / 5))) ** 5)
    e = exponential_sigmas(5, 0.1, 10.0, append_zero=False, dtype=F64)
    torch.testing.assert_close(e, torch.tensor([10.0, 10**0.5, 1.0, 10**-0.5, 0.1], dtype=F64))
    vp = get_sigmas("vp_linear", 4, append_zero=False, dtype=F64)
    assert vp[0].item() == pytest.approx(math.sqrt(math.exp(10.05) - 1))
    assert vp[-1].item() == pytest.approx(alpha_bar_to_sigma(vp_linear_alpha_bar(torch.tensor(1e-3, dtype=F64))).item())
    cos = get_sigmas("vp_cosine", 4, append_zero=False, dtype=F64)
    assert cos[0].item() == pytest.approx(alpha_bar_to_sigma(torch.tensor(1e-4, dtype=F64)).item())
    assert 0.004 < cos[-1].item() < 0.01


@pytest.mark.parametrize("alpha_bar_fn", [vp_linear_alpha_bar, vp_cosine_alpha_bar])
def test_vp_alpha_bar_monotone_with_right_ends(alpha_bar_fn):
    t = torch.linspace(0, 0.99, 2001, dtype=F64)
    alpha_bar = alpha_bar_fn(t)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert alpha_bar_fn(torch.tensor(0.0, dtype=F64)).item() == pytest.approx(1.0)
    assert alpha_bar_fn(torch.tensor(1.0, dtype=F64)).item() <= 1e-3


def test_schedule_validation_messages():
    with pytest.raises(ValueError, match="valid names are"):
        get_sigmas("linear", 10)
    with pytest.raises(ValueError, match="integer >= 1, got 0"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        exponential_sigmas(10, sigma_min=0.0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        karras_sigmas(10, rho=0.0)
    with pytest.raises(ValueError, match="t_min must lie in"):
        get_sigmas("vp_linear", 10, t_min=0.0)


def test_convention_round_trips():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.01, 1.0, 30.0], dtype=F64)
    x = torch.randn(3, 2, 5, generator=g, dtype=F64)
    torch.testing.assert_close(alpha_bar_to_sigma(sigma_to_alpha_bar(sigma)), sigma)
    torch.testing.assert_close(from_vp(to_vp(x, sigma), sigma), x)
    x0, noise = torch.randn(3, 2, 5, generator=g, dtype=F64), torch.randn(3, 2, 5, generator=g, dtype=F64)
    alpha_bar = sigma_to_alpha_bar(sigma)[:, None, None]
    torch.testing.assert_close(to_vp(convention.add_noise(x0, noise, sigma), sigma),
                               alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
    torch.testing.assert_close(noise_level(sigma), 0.25 * sigma.log())
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(3,\)"):
        convention.add_noise(x0, noise, torch.ones(2, dtype=F64))


def test_one_convention_is_shared(monkeypatch):
    """Training noises with, and samplers/VP schedules convert with, the functions of atlas.diffusion.convention."""
    assert losses.add_noise is convention.add_noise
    assert losses.alpha_bar_to_sigma is convention.alpha_bar_to_sigma
    assert samplers.convention is convention and schedules.convention is convention
    calls = []
    for name in ("sigma_to_alpha_bar", "alpha_bar_to_sigma", "from_vp"):
        original = getattr(convention, name)
        monkeypatch.setattr(convention, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    sigmas = get_sigmas("vp_cosine", 3, dtype=F64)
    get_sigmas("vp_linear", 3)
    samplers.sample_ddim(lambda x, s: torch.zeros_like(x), torch.ones(2, 2, dtype=F64), sigmas)
    assert calls.count("alpha_bar_to_sigma") == 2
    assert calls.count("sigma_to_alpha_bar") == 2 * 3 and calls.count("from_vp") == 3
