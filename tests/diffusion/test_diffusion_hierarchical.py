"""Hierarchical (coarse-to-fine) sampling against closed forms: no levels is plain sampling, the re-noise step is
exactly ``up(x0) + sigma_start * noise`` with per-sample noise, and for Gaussian data with independent pixels the
final samples have the covariance the linear pipeline (upsample, re-noise, exact ODE) predicts."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_oracles import Gaussian, generators
from torch.nn import functional

from atlas.diffusion import broadcast, initial_noise, karras_sigmas, sample
from atlas.diffusion.hierarchical import (
    HierarchyLevel,
    LevelStepInfo,
    default_level_plan,
    level_sigmas,
    sample_hierarchical,
    upsample_and_renoise,
)

F64 = torch.float64
DATA = Gaussian(mu=0.3, std=0.5)


def nonlinear_denoise(x, sigma):
    """A batch-independent, nonlinear stand-in for a network (elementwise, so it works at any size)."""
    s = broadcast(sigma, x)
    return torch.tanh(x) * 0.25 / (0.25 + s**2) + 0.1 * torch.sin(3 * x) * s / (1 + s)


def constant(denoise):
    return lambda level, shape: denoise


def seeded(seeds):
    return generators(seeds)


@pytest.mark.parametrize("name,options", [("dpmpp_2m", {}), ("euler_ancestral", {}),
                                          ("heun", {"s_churn": 10.0, "s_tmax": 50.0})])
def test_no_levels_is_plain_sample(name, options):
    sigmas = karras_sigmas(8, dtype=F64)
    x = initial_noise((3, 2, 5, 6), sigmas[0], seeded([7, 8, 9]), dtype=F64)
    ours = sample_hierarchical(name, constant(nonlinear_denoise), x, sigmas, [], generators=seeded([1, 2, 3]),
                               **options)
    plain = sample(name, nonlinear_denoise, x, sigmas, generators=seeded([1, 2, 3]), **options)
    assert torch.equal(ours, plain)


def test_renoise_step_is_upsampled_image_plus_fresh_per_sample_noise():
    sigmas = karras_sigmas(6, dtype=F64)
    x = initial_noise((2, 3, 4, 4), sigmas[0], seeded([50, 51]), dtype=F64)
    starts = {}

    def record(info: LevelStepInfo):
        if info.level == 1 and info.index == 0:
            starts["x"] = info.x

    result = sample_hierarchical("dpmpp_2m", constant(nonlinear_denoise), x, sigmas, [HierarchyLevel(8, 1.5, 3)],
                                 generators=seeded([5, 6]), upsample="bilinear", return_intermediates=True,
                                 callback=record)
    # dpmpp_2m draws nothing, so the re-noising is each generator's first draw.
    noise = torch.stack([torch.randn((3, 8, 8), generator=g, dtype=F64) for g in seeded([5, 6])])
    upsampled = functional.interpolate(result.levels[0], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(starts["x"], upsampled + 1.5 * noise, rtol=0, atol=1e-12)


def test_renoise_moments_on_a_big_batch():
    torch.manual_seed(0)
    image = torch.randn(1, 2, 4, 4, dtype=F64)
    batch, sigma_start = 20000, 0.7
    out = upsample_and_renoise(image.expand(batch, -1, -1, -1), (8, 8), sigma_start, None, "nearest")
    expected_mean = image.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[0]
    assert (out.mean(0) - expected_mean).abs().max() < 5 * sigma_start / math.sqrt(batch)
    assert (out.std(0) / sigma_start - 1).abs().max() < 5 / math.sqrt(2 * batch)
    flat = (out - expected_mean).reshape(batch, -1)
    correlation = torch.corrcoef(flat.T) - torch.eye(flat.shape[1], dtype=F64)
    assert correlation.abs().max() < 5 / math.sqrt(batch)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_upsampling_keeps_a_constant_image(mode):
    image = torch.full((2, 3, 5, 7), 0.42, dtype=F64)
    out = upsample_and_renoise(image, (10, 14), 1e-300, seeded([0, 1]), mode)
    torch.testing.assert_close(out, torch.full((2, 3, 10, 14), 0.42, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m"])
def test_an_image_does_not_depend_on_its_batch(name):
    sigmas = karras_sigmas(6, dtype=F64)
    seeds = [11, 12, 13, 14]
    x = initial_noise((4, 2, 4, 4), sigmas[0], seeded(seeds), dtype=F64)
    levels = [HierarchyLevel(8, 2.0, 4), HierarchyLevel((12, 16), 1.0, 3)]
    batched = sample_hierarchical(name, constant(nonlinear_denoise), x, sigmas, levels, generators=seeded(seeds))
    assert batched.shape == (4, 2, 12, 16)
    for i, seed in enumerate(seeds):
        alone = sample_hierarchical(name, constant(nonlinear_denoise), x[i:i + 1], sigmas, levels,
                                    generators=seeded([seed]))
        torch.testing.assert_close(alone[0], batched[i], rtol=0, atol=1e-12)


def upsampling_matrix(size_in: int, size_out: int, mode: str) -> torch.Tensor:
    """W (P_out, P_in) with up(x).flatten() = W x.flatten(): the upsampling of every basis image."""
    basis = torch.eye(size_in * size_in, dtype=F64).reshape(-1, 1, size_in, size_in)
    options = {} if mode == "nearest" else {"align_corners": False}
    return functional.interpolate(basis, size=(size_out, size_out), mode=mode, **options).reshape(size_in**2, -1).T


@pytest.mark.parametrize("mode,sigma_start", [("nearest", 0.3), ("bilinear", 0.3), ("bicubic", 0.3),
                                              ("bicubic", 3.0)])
def test_gaussian_data_final_covariance_is_the_closed_form(mode, sigma_start):
    """Pixels x0 ~ N(mu, s^2) independent.  Level 0 samples them; up gives mu + W (x0 - mu); re-noising adds
    sigma_start^2 I; the exact PF-ODE from sigma_start to 0 scales x - mu by a = s / sqrt(s^2 + sigma_start^2).
    So the final covariance is a^2 (s^2 W W^T + sigma_start^2 I) and the mean is mu: with nearest upsampling
    every pixel is exactly N(mu, s^2), and with a large sigma_start the coarse correlations fade."""
    torch.manual_seed(1)
    batch, coarse, fine = 20000, 3, 6
    sigmas = karras_sigmas(40, dtype=F64)
    x = initial_noise((batch, 1, coarse, coarse), sigmas[0], dtype=F64)
    out = sample_hierarchical("dpmpp_2m", constant(DATA.denoise), x, sigmas,
                              [HierarchyLevel(fine, sigma_start, 40)], upsample=mode)
    flat = out.reshape(batch, -1)
    s2 = DATA.std**2
    weights = upsampling_matrix(coarse, fine, mode)
    expected = s2 / (s2 + sigma_start**2) * (s2 * weights @ weights.T + sigma_start**2 * torch.eye(fine**2, dtype=F64))
    assert (flat.mean(0) - DATA.mu).abs().max() < 5 * DATA.std / math.sqrt(batch)
    covariance = torch.cov(flat.T)
    assert (covariance - expected).abs().max() < 6 * s2 * math.sqrt(2 / batch)
    if mode == "nearest":
        assert (covariance.diagonal() / s2 - 1).abs().max() < 5 * math.sqrt(2 / batch)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "heun", "unipc", "ddim"])
def test_point_mass_data_is_reached_exactly(name):
    target = torch.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=F64).reshape(2, 3, 8, 8)

    def denoise_for(level, shape):
        assert shape[-2:] == ((4, 4), (8, 8))[level]
        return lambda x, sigma: target[..., :shape[-2], :shape[-1]].expand(x.shape)

    sigmas = karras_sigmas(5, dtype=F64)
    x = initial_noise((2, 3, 4, 4), sigmas[0], seeded([0, 1]), dtype=F64)
    out = sample_hierarchical(name, denoise_for, x, sigmas, [HierarchyLevel(8, 4.0, 3)], generators=seeded([2, 3]))
    torch.testing.assert_close(out, target, rtol=0, atol=1e-12)


def test_callback_reports_level_and_step_and_factory_gets_each_shape():
    sigmas = karras_sigmas(5, dtype=F64)
    x = initial_noise((2, 1, 4, 4), sigmas[0], seeded([0, 1]), dtype=F64)
    seen, asked = [], []

    def denoise_for(level, shape):
        asked.append((level, shape))
        return nonlinear_denoise

    levels = [HierarchyLevel(8, 3.0, 3), HierarchyLevel((8, 12), 1.0, 2)]
    sample_hierarchical("euler", denoise_for, x, sigmas, levels, generators=seeded([0, 1]),
                        callback=lambda info: seen.append((info.level, info.num_levels, info.index, info.total,
                                                           tuple(info.x.shape[-2:]))))
    expected = ([(0, 3, i, 5, (4, 4)) for i in range(5)] + [(1, 3, i, 3, (8, 8)) for i in range(3)]
                + [(2, 3, i, 2, (8, 12)) for i in range(2)])
    assert seen == expected
    assert asked == [(0, (2, 1, 4, 4)), (1, (2, 1, 8, 8)), (2, (2, 1, 8, 12))]


def test_intermediates_and_a_truncated_grid_hand_on_the_clean_estimate():
    sigmas = karras_sigmas(6, dtype=F64)[:-2]  # ends at a positive sigma
    x = initial_noise((2, 1, 4, 4), sigmas[0], seeded([0, 1]), dtype=F64)
    result = sample_hierarchical("dpmpp_2m", constant(nonlinear_denoise), x, sigmas, [HierarchyLevel(8, 1.0, 3)],
                                 generators=seeded([0, 1]), return_intermediates=True)
    assert torch.equal(result.levels[0], sample("dpmpp_2m", nonlinear_denoise, x, sigmas, final_denoise=True))
    assert result.levels[1] is result.images and result.images.shape == (2, 1, 8, 8)


def test_level_sigmas_follow_the_base_grid_end():
    full = karras_sigmas(10, dtype=F64)
    grid = level_sigmas(full, 2.0, 4)
    assert grid.shape == (5,) and grid[0] == 2.0 and grid[-1] == 0 and grid[-2] == full[-2]
    torch.testing.assert_close(grid, karras_sigmas(4, 0.002, 2.0, dtype=F64), rtol=1e-12, atol=0)
    truncated = level_sigmas(full[:-1], 2.0, 4)  # the base grid ends at 0.002
    assert truncated.shape == (5,) and truncated[-1] == full[-2] and truncated[0] == 2.0
    assert level_sigmas(full, 2.0, 1).tolist() == [2.0, 0.0]
    assert level_sigmas(full[:-1], 2.0, 1).tolist() == [2.0, full[-2].item()]


def test_default_level_plan_doubles():
    assert default_level_plan(32, 1) == ()
    two = default_level_plan(32, 2)
    assert [level.size for level in two] == [(64, 64)]
    four = default_level_plan((16, 24), 4, sigma_start=1.5, steps=7)
    assert [level.size for level in four] == [(32, 48), (64, 96)]
    assert all(level.sigma_start == 1.5 and level.steps == 7 for level in four)
    with pytest.raises(ValueError, match="power of two"):
        default_level_plan(32, 3)


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 8, "sigma_start": 1.0, "steps": 0}, "steps"),
    ({"size": 8, "sigma_start": 1.0, "steps": 2.5}, "steps"),
    ({"size": 8, "sigma_start": 0.0, "steps": 3}, "sigma_start"),
    ({"size": 8, "sigma_start": float("nan"), "steps": 3}, "sigma_start"),
    ({"size": (8, 0), "sigma_start": 1.0, "steps": 3}, "size"),
    ({"size": (8, 8, 8), "sigma_start": 1.0, "steps": 3}, "size"),
])
def test_level_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HierarchyLevel(**kwargs)


@pytest.mark.parametrize("levels,options,match", [
    ([HierarchyLevel(8, 100.0, 3)], {}, r"sigma_start \(100.0\) must lie in"),
    ([HierarchyLevel(8, 0.001, 3)], {}, r"sigma_start \(0.001\) must lie in"),
    ([HierarchyLevel(4, 1.0, 3)], {}, "must be >= the previous"),
    ([HierarchyLevel((8, 2), 1.0, 3)], {}, "must be >= the previous"),
    ([HierarchyLevel(8, 1.0, 3), HierarchyLevel(6, 1.0, 3)], {}, "level 2 size"),
    ([HierarchyLevel(8, 1.0, 3)], {"upsample": "lanczos"}, "upsample='lanczos'"),
])
def test_plan_validation(levels, options, match):
    sigmas = karras_sigmas(5, dtype=F64)
    x = initial_noise((1, 1, 4, 4), sigmas[0], seeded([0]), dtype=F64)
    with pytest.raises(ValueError, match=match):
        sample_hierarchical("euler", constant(nonlinear_denoise), x, sigmas, levels, **options)


def test_plan_rejects_non_levels_and_non_images():
    sigmas = karras_sigmas(5, dtype=F64)
    x = initial_noise((1, 1, 4, 4), sigmas[0], seeded([0]), dtype=F64)
    with pytest.raises(TypeError, match="HierarchyLevel"):
        sample_hierarchical("euler", constant(nonlinear_denoise), x, sigmas, [(8, 1.0, 3)])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sample_hierarchical("euler", constant(nonlinear_denoise), x[0], sigmas, [HierarchyLevel(8, 1.0, 3)])
