"""Sliced Wasserstein-2 and MMD against closed forms."""

import math

import numpy as np
import pytest
import torch

from atlas.eval.metrics import mmd, sliced_wasserstein2, wasserstein2_1d


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sw2_in_one_dimension_is_the_exact_w2():
    x = torch.randn(500, 1, generator=_generator(0)).double()
    y = 2.0 * torch.randn(500, 1, generator=_generator(1)).double() + 1.0
    exact = math.sqrt(float(((x.sort(dim=0).values - y.sort(dim=0).values) ** 2).mean()))
    assert sliced_wasserstein2(x, y, n_projections=8, generator=_generator(2)) == pytest.approx(exact, rel=1e-9)


def test_sw2_of_a_sample_with_itself_is_zero():
    x = torch.randn(200, 5, generator=_generator(0))
    assert sliced_wasserstein2(x, x, generator=_generator(1)) == 0.0
    assert sliced_wasserstein2(x, x[torch.randperm(200, generator=_generator(2))]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dimension", [2, 6])
def test_sw2_between_shifted_gaussians_matches_the_closed_form(dimension):
    samples = 4000
    shift = torch.zeros(dimension)
    shift[0] = 2.0
    x = torch.randn(samples, dimension, generator=_generator(0))
    y = torch.randn(samples, dimension, generator=_generator(1)) + shift
    sw2 = sliced_wasserstein2(x, y, n_projections=2000, generator=_generator(2))
    # SW2^2 = |m1 - m2|^2 / d; the tolerance covers ~4 standard errors of 2000 random directions.
    assert sw2**2 == pytest.approx(float(shift.pow(2).sum()) / dimension, rel=0.1)


def test_sw2_flattens_images_and_is_reproducible_with_a_generator():
    x = torch.rand(30, 3, 4, 4, generator=_generator(0))
    y = torch.rand(30, 3, 4, 4, generator=_generator(1))
    first = sliced_wasserstein2(x, y, generator=_generator(5))
    assert first == sliced_wasserstein2(x.reshape(30, -1), y.reshape(30, -1), generator=_generator(5))
    assert first > 0


def test_unequal_sizes_equal_the_replicated_equal_size_problem():
    # Each point of x repeated 3 times and each point of y twice is the same distribution.
    x = torch.randn(20, 1, generator=_generator(0)).double()
    y = torch.randn(30, 1, generator=_generator(1)).double() + 0.5
    unequal = wasserstein2_1d(x.sort(dim=0).values, y.sort(dim=0).values)
    equal = wasserstein2_1d(x.repeat(3, 1).sort(dim=0).values, y.repeat(2, 1).sort(dim=0).values)
    assert torch.allclose(unequal, equal, rtol=1e-12)


def test_unequal_sizes_match_a_fine_quantile_integral():
    # Brute force: integrate (F^-1(t) - G^-1(t))^2 on a fine grid of t.
    x = np.sort(np.random.default_rng(0).normal(size=7))
    y = np.sort(np.random.default_rng(1).normal(size=11))
    t = (np.arange(7 * 11 * 50) + 0.5) / (7 * 11 * 50)
    brute = np.mean((x[np.floor(t * 7).astype(int)] - y[np.floor(t * 11).astype(int)]) ** 2)
    ours = wasserstein2_1d(torch.tensor(x)[:, None], torch.tensor(y)[:, None])
    assert float(ours[0]) == pytest.approx(brute, rel=1e-9)


def test_sw2_validation_errors():
    with pytest.raises(ValueError, match="same number of features"):
        sliced_wasserstein2(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="1-D tensor"):
        sliced_wasserstein2(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="n_projections must be >= 1"):
        sliced_wasserstein2(torch.zeros(5, 3), torch.zeros(5, 3), n_projections=0)
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein2(torch.full((5, 3), float("nan")), torch.zeros(5, 3))


def test_mmd_of_identical_distributions_is_near_zero_and_shifted_is_clearly_positive():
    x = torch.randn(400, 3, generator=_generator(0))
    same = torch.randn(400, 3, generator=_generator(1))
    shifted = torch.randn(400, 3, generator=_generator(2)) + torch.tensor([1.0, 0.0, 0.0])
    null = mmd(x, same)
    alternative = mmd(x, shifted)
    assert abs(null) < 0.01
    assert alternative > 0.05 and alternative > 10 * abs(null)


def test_mmd_with_fixed_bandwidth_matches_a_direct_sum():
    x = torch.randn(6, 2, generator=_generator(0)).double()
    y = torch.randn(5, 2, generator=_generator(1)).double()
    h = 0.7

    def k(a, b):
        return math.exp(-float((a - b).pow(2).sum()) / (2 * h * h))

    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    assert mmd(x, y, bandwidth=h) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_mmd_validation_errors():
    with pytest.raises(ValueError, match="same number of features"):
        mmd(torch.zeros(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd(torch.randn(5, 3), torch.randn(5, 3), bandwidth=0.0)
    with pytest.raises(ValueError, match="median-heuristic bandwidth is 0"):
        mmd(torch.zeros(5, 3), torch.zeros(5, 3))
