"""Samplers against closed-form oracles (float64): they sample the data distribution, converge at their order,
and give every sample the same result whatever batch it is in."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_oracles import Gaussian, exact_network, generators, two_component_mixture

from atlas.diffusion import (
    SAMPLERS,
    Denoiser,
    ancestral_step,
    initial_noise,
    karras_sigmas,
    randn_per_sample,
    sample,
    sample_ddim,
    sample_euler,
    sample_heun,
    sample_unipc,
)

F64 = torch.float64
ALL = sorted(SAMPLERS)
STOCHASTIC_OPTIONS = {
    "heun": {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0},
    "ddim": {"eta": 1.0},
    "euler_ancestral": {},
    "dpmpp_2m_sde": {},
}
# Steps at which each sampler meets |mean - mu| < 0.03 and |std / s - 1| < 0.05 on N(2, 0.5^2) with the default
# Karras grid.  First-order methods carry an O(1/n) bias that is 5.6 % (Euler, DDIM) and 11 % (Euler ancestral)
# at 50 steps: test_first_order_bias_is_the_schemes_own checks that value against the closed-form recursion.
STEPS = {"euler": 100, "ddim": 100, "euler_ancestral": 200, "heun": 50, "dpmpp_2m": 50, "dpmpp_2m_sde": 50,
         "unipc": 50, "flow_heun": 50}


def gaussian_run(name: str, prediction: str, steps: int, seed: int = 0, **options) -> torch.Tensor:
    data = Gaussian(mu=2.0, std=0.5)
    denoiser = Denoiser(exact_network(data.denoise, prediction), prediction)
    sigmas = karras_sigmas(steps, dtype=F64)
    torch.manual_seed(seed)
    x = initial_noise((4096, 16), sigmas[0], dtype=F64)
    return sample(name, denoiser, x, sigmas, **options)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", ALL)
def test_samplers_reach_the_gaussian(name, prediction):
    out = gaussian_run(name, prediction, STEPS[name])
    assert abs(out.mean().item() - 2.0) < 0.03
    assert abs(out.std().item() / 0.5 - 1.0) < 0.05


@pytest.mark.parametrize("name", ["heun", "flow_heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc"])
def test_second_order_samplers_reach_the_gaussian_in_50_steps_edm(name):
    out = gaussian_run(name, "edm", 50)
    assert abs(out.mean().item() - 2.0) < 0.03
    assert abs(out.std().item() / 0.5 - 1.0) < 0.05


def test_first_order_bias_is_the_schemes_own():
    """At 50 steps Euler and Euler-ancestral miss std by the amount their own recursion predicts, no more."""
    data, sigmas = Gaussian(), karras_sigmas(50, dtype=F64).tolist()
    # Euler: x_out - mu = gain (x_T - mu); ancestral: Var(x_out) from the linear recursion, x_T = sigma_max z.
    gain, var = 1.0, sigmas[0] ** 2
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        shrink = sigma / (data.std**2 + sigma**2)  # (x - D) / sigma = shrink (x - mu)
        gain *= 1 + (sigma_next - sigma) * shrink
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
        var = (1 + (sigma_down - sigma) * shrink) ** 2 * var + sigma_up**2
    out_euler = gaussian_run("euler", "eps", 50)
    out_ancestral = gaussian_run("euler_ancestral", "eps", 50)
    torch.manual_seed(0)
    x_start = initial_noise((4096, 16), sigmas[0], dtype=F64)
    torch.testing.assert_close(out_euler, data.mu + gain * (x_start - data.mu), rtol=1e-9, atol=1e-9)
    assert abs(out_ancestral.std().item() / math.sqrt(var) - 1) < 0.01  # sampling error ~0.3 %
    assert 0.05 < 1 - gain * sigmas[0] / 0.5 < 0.06 and 0.10 < 1 - math.sqrt(var) / 0.5 < 0.12


@pytest.mark.parametrize("name", ALL)
def test_prediction_type_does_not_change_samples(name):
    options = STOCHASTIC_OPTIONS.get(name, {})
    outs = [gaussian_run(name, p, 20, seed=3, **options) for p in ("eps", "x0", "v", "edm")]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "unipc"])
def test_mixture_component_weights(name):
    mixture = two_component_mixture()
    sigmas = karras_sigmas(40, dtype=F64)
    torch.manual_seed(1)
    x = initial_noise((8192, 2), sigmas[0], dtype=F64)
    out = sample(name, mixture.denoise, x, sigmas)
    weights = torch.bincount(mixture.assign(out), minlength=2).to(F64) / out.shape[0]
    assert abs(weights[0].item() - 0.3) < 0.03 and abs(weights[1].item() - 0.7) < 0.03
    for k in range(2):  # and each mode has the right spread
        members = out[mixture.assign(out) == k]
        assert abs(members.std(0).mean().item() / mixture.stds[k].item() - 1) < 0.1


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("flow_heun", 2), ("dpmpp_2m", 2)])
def test_convergence_order(name, order):
    """PF-ODE for Gaussian data is linear: x(sigma) = mu + sqrt((s^2 + sigma^2)/(s^2 + sigma_T^2)) (x_T - mu)."""
    data = Gaussian()
    x_start = initial_noise((64, 4), 80.0, generators(range(64)), dtype=F64)
    errors = []
    for steps in (25, 50, 100):
        sigmas = karras_sigmas(steps, sigma_min=0.05, append_zero=False, dtype=F64)
        exact = data.ode_solution(x_start, 80.0, 0.05)
        errors.append((sample(name, data.denoise, x_start, sigmas) - exact).abs().max().item())
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.6 * 2**order < coarse / fine < 1.4 * 2**order, errors


def convergence_errors(name, step_counts=(25, 50, 100), **options) -> list[float]:
    data = Gaussian()
    x_start = initial_noise((64, 4), 80.0, generators(range(64)), dtype=F64)
    exact = data.ode_solution(x_start, 80.0, 0.05)
    errors = []
    for steps in step_counts:
        sigmas = karras_sigmas(steps, sigma_min=0.05, append_zero=False, dtype=F64)
        errors.append((sample(name, data.denoise, x_start, sigmas, **options) - exact).abs().max().item())
    return errors


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_converges_at_predictor_order_plus_one(order):
    """UniP-p with UniC-p is of order p + 1 (Zhao et al. 2023, Thm. 3.1): halving h divides the error by 2^(p+1).

    The corrector's coefficients come from the phi-function system, so a wrong coefficient shows up here as a
    lower rate.  Observed ratios: ~4 (order 1), ~8.5 (order 2), ~17 (order 3).
    """
    errors = convergence_errors("unipc", order=order)
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.6 * 2 ** (order + 1) < coarse / fine < 1.4 * 2 ** (order + 1), errors


def test_unipc_is_at_least_second_order_and_beats_dpmpp_2m():
    unipc, dpmpp = convergence_errors("unipc"), convergence_errors("dpmpp_2m")
    for coarse, fine in zip(unipc, unipc[1:]):
        assert coarse / fine > 0.9 * 4, unipc
    assert all(u < d for u, d in zip(unipc[1:], dpmpp[1:])), (unipc, dpmpp)


@pytest.mark.parametrize("append_zero", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_one_denoiser_call_per_step(order, append_zero):
    data, calls, infos = Gaussian(), [], []
    sigmas = karras_sigmas(9, append_zero=append_zero, dtype=F64)
    x = initial_noise((3, 2), sigmas[0], generators([0, 1, 2]), dtype=F64)

    def counting(x, sigma):
        calls.append(sigma[0].item())
        return data.denoise(x, sigma)

    out = sample("unipc", counting, x, sigmas, order=order, callback=infos.append)
    steps = len(sigmas) - 1
    assert len(calls) == steps and calls == pytest.approx(sigmas[:steps].tolist())
    assert [i.index for i in infos] == list(range(steps)) and infos[-1].total == steps
    if append_zero:  # the step to sigma = 0 returns the last denoised value
        torch.testing.assert_close(out, infos[-1].denoised, rtol=0, atol=0)


def test_unipc_is_exact_for_a_point_mass():
    """D = x0 for every x: all differences vanish and each step is the exact x0 + sigma_next / sigma (x - x0)."""
    x0 = torch.tensor([[1.5, -0.5], [0.2, 3.0]], dtype=F64)
    sigmas = karras_sigmas(7, sigma_min=0.1, append_zero=False, dtype=F64)
    x = initial_noise((2, 2), sigmas[0], generators([4, 5]), dtype=F64)
    for order in (1, 2, 3):
        out = sample_unipc(lambda x, sigma: x0.expand_as(x), x, sigmas, order=order)
        torch.testing.assert_close(out, x0 + (x - x0) * (sigmas[-1] / sigmas[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [0, 4, 2.0, "2", True])
def test_unipc_rejects_bad_order(order):
    x, sigmas = torch.zeros(2, 3), karras_sigmas(4)
    with pytest.raises(ValueError, match="unipc order must be 1, 2 or 3"):
        sample("unipc", Gaussian().denoise, x, sigmas, order=order)


def test_ddim_eta0_equals_euler():
    data = Gaussian()
    sigmas = karras_sigmas(10, dtype=F64)
    x = initial_noise((16, 3), sigmas[0], generators(range(16)), dtype=F64)
    torch.testing.assert_close(sample_ddim(data.denoise, x, sigmas), sample_euler(data.denoise, x, sigmas),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_batch_independence(name):
    mixture = two_component_mixture()
    sigmas = karras_sigmas(12, dtype=F64)
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    options = STOCHASTIC_OPTIONS.get(name, {})
    x = initial_noise((8, 2), sigmas[0], generators(seeds), dtype=F64)
    batch = sample(name, mixture.denoise, x, sigmas, generators=generators(seeds), **options)
    for i in (0, 5):
        x_i = initial_noise((1, 2), sigmas[0], generators([seeds[i]]), dtype=F64)
        alone = sample(name, mixture.denoise, x_i, sigmas, generators=generators([seeds[i]]), **options)
        assert (alone[0] - batch[i]).abs().max().item() <= 1e-6


def test_randn_per_sample_rows_follow_their_generator():
    rows = randn_per_sample((3, 5), generators([1, 2, 3]), F64)
    torch.testing.assert_close(rows[1], torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64))
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        randn_per_sample((3, 5), generators([1, 2]), F64)


def test_regression_time_direction_and_euler_sign():
    """ATLAS ran its schedule backwards and stepped with the wrong sign (reference notes, section 2.1)."""
    with pytest.raises(ValueError, match="strictly descending"):
        sample_euler(Gaussian().denoise, torch.zeros(2, 3, dtype=F64), karras_sigmas(5, dtype=F64).flip(0))
    # A point mass at x0 has D = x0; one Euler step is then exact: x_next = x0 + sigma_next / sigma (x - x0).
    x0 = torch.tensor([[1.5, -0.5]], dtype=F64)
    x = x0 + 3.0 * torch.tensor([[0.3, 2.0]], dtype=F64)
    step = sample_euler(lambda x, sigma: x0.expand_as(x), x, torch.tensor([3.0, 1.0], dtype=F64))
    torch.testing.assert_close(step, x0 + (x - x0) / 3.0)


def test_final_denoise_and_callback():
    data = Gaussian()
    sigmas = karras_sigmas(6, append_zero=False, dtype=F64)
    x = initial_noise((4, 2), sigmas[0], generators(range(4)), dtype=F64)
    infos, calls = [], []

    def counting(x, sigma):
        calls.append(sigma)
        return data.denoise(x, sigma)

    plain = sample("heun", counting, x, sigmas, callback=infos.append)
    assert len(calls) == 2 * 5 and [i.index for i in infos] == list(range(5)) and infos[0].total == 5
    assert infos[-1].sigma_next.item() == pytest.approx(sigmas[-1].item())
    finished = sample("heun", data.denoise, x, sigmas, final_denoise=True)
    torch.testing.assert_close(finished, data.denoise(plain, sigmas[-1].expand(4)))
    with_zero = torch.cat([sigmas, sigmas.new_zeros(1)])
    torch.testing.assert_close(sample("euler", data.denoise, x, with_zero, final_denoise=True),
                               sample("euler", data.denoise, x, with_zero))


def test_heun_nfe_and_churn_only_inside_window():
    data, calls = Gaussian(), []
    sigmas = karras_sigmas(8, dtype=F64)
    x = initial_noise((2, 2), sigmas[0], generators([0, 1]), dtype=F64)
    sample_heun(lambda x, s: calls.append(1) or data.denoise(x, s), x, sigmas)
    assert len(calls) == 2 * 8 - 1
    no_window = sample_heun(data.denoise, x, sigmas, s_churn=40.0, s_tmin=1e6, generators=generators([0, 1]))
    torch.testing.assert_close(no_window, sample_heun(data.denoise, x, sigmas))


def test_validation_messages():
    x, sigmas = torch.zeros(2, 3), karras_sigmas(4)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        sample("dpm", Gaussian().denoise, x, sigmas)
    with pytest.raises(TypeError, match="unknown option"):
        sample("euler", Gaussian().denoise, x, sigmas, eta=0.5)
    with pytest.raises(ValueError, match="at least 2 values"):
        sample("euler", Gaussian().denoise, x, sigmas[:1])
    with pytest.raises(ValueError, match=">= 0"):
        sample("euler", Gaussian().denoise, x, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="got 3 for batch size 2"):
        sample("euler_ancestral", Gaussian().denoise, x, sigmas, generators=generators([1, 2, 3]))


@pytest.mark.parametrize("stochastic, ode", [("euler_ancestral", "euler"), ("dpmpp_2m_sde", "dpmpp_2m"),
                                             ("ddim", "euler")])
def test_eta_zero_reduces_to_the_ode_sampler(stochastic, ode):
    mixture = two_component_mixture()
    sigmas = karras_sigmas(10, dtype=F64)
    x = initial_noise((16, 2), sigmas[0], generators(range(16)), dtype=F64)
    torch.testing.assert_close(sample(stochastic, mixture.denoise, x, sigmas, eta=0.0),
                               sample(ode, mixture.denoise, x, sigmas), rtol=1e-12, atol=1e-12)
