"""Brownian-bridge interpolants and the SB-CFM drift target (atlas.transport.bridge; atlas-reference.md P0-5)."""

from __future__ import annotations

import pytest
import torch

from atlas.transport.bridge import (
    brownian_bridge_mean,
    brownian_bridge_sample,
    brownian_bridge_variance,
    sb_cfm_target,
)

F64 = torch.float64


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_bridge_mean_and_variance_at_five_times(t):
    """Mean t*x1 + (1-t)*x0 and variance sigma_sq t (1-t), 20k samples, 3 % tolerance."""
    samples, sigma_sq = 20_000, 0.8
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64).expand(samples, 3)
    x1 = torch.tensor([3.0, 1.0, -0.5], dtype=F64).expand(samples, 3)
    x_t = brownian_bridge_sample(x0, x1, t, sigma_sq, generator=torch.Generator().manual_seed(int(10 * t)))
    mean = (1 - t) * x0[0] + t * x1[0]
    variance = sigma_sq * t * (1 - t)
    assert float((x_t.mean(0) - mean).abs().max()) < 0.03 * variance**0.5
    assert float((x_t.var(0) / variance - 1).abs().max()) < 0.03
    assert torch.allclose(brownian_bridge_mean(x0[:1], x1[:1], t)[0], mean)
    assert float(brownian_bridge_variance(t, sigma_sq)) == pytest.approx(variance)


def test_endpoints_are_exact_and_per_sample_times_broadcast():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(4, 2, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    assert torch.equal(brownian_bridge_sample(x0, x1, 0.0, 1.0, generator=g), x0)
    assert torch.equal(brownian_bridge_sample(x0, x1, 1.0, 1.0, generator=g), x1)
    t = torch.tensor([0.0, 1.0, 0.0, 1.0])
    out = brownian_bridge_sample(x0, x1, t, 2.0, generator=g)
    assert torch.equal(out[0], x0[0]) and torch.equal(out[1], x1[1])
    assert torch.equal(brownian_bridge_sample(x0, x1, 0.3, 0.0), brownian_bridge_mean(x0, x1, 0.3))


def test_sampling_is_deterministic_with_a_generator():
    x0, x1 = torch.zeros(8, 5), torch.ones(8, 5)
    first = brownian_bridge_sample(x0, x1, 0.4, 1.0, generator=torch.Generator().manual_seed(7))
    second = brownian_bridge_sample(x0, x1, 0.4, 1.0, generator=torch.Generator().manual_seed(7))
    other = brownian_bridge_sample(x0, x1, 0.4, 1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_sb_cfm_target_is_the_time_derivative_of_the_bridge_path():
    """x_t = mu_t + sqrt(sigma_sq t (1-t)) z at fixed z: d x_t / dt equals the SB-CFM target at x_t."""
    g = torch.Generator().manual_seed(1)
    x0, x1, z = (torch.randn(6, 4, generator=g, dtype=F64) for _ in range(3))
    sigma_sq, h = 0.7, 1e-6
    t = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.75, 0.95], dtype=F64)

    def path(s):
        return (1 - s)[:, None] * x0 + s[:, None] * x1 + (sigma_sq * s * (1 - s)).sqrt()[:, None] * z

    derivative = (path(t + h) - path(t - h)) / (2 * h)
    assert torch.allclose(sb_cfm_target(x0, x1, path(t), t), derivative, atol=1e-6)
    assert torch.allclose(sb_cfm_target(x0, x1, brownian_bridge_mean(x0, x1, t), t), x1 - x0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: brownian_bridge_sample(torch.zeros(2, 3), torch.zeros(2, 3), 1.5, 1.0), r"\[0, 1\]"),
        (lambda: brownian_bridge_sample(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, -1.0), "sigma_sq"),
        (lambda: brownian_bridge_sample(torch.zeros(2, 3), torch.zeros(3, 3), 0.5, 1.0), "same shape"),
        (lambda: brownian_bridge_sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.rand(3), 1.0), r"\(B,\)"),
        (lambda: sb_cfm_target(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0), "singular"),
        (lambda: sb_cfm_target(torch.zeros(2), torch.zeros(2), torch.zeros(3), 0.5), "x_t"),
    ],
)
def test_invalid_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
