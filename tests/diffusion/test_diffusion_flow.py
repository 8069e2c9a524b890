"""The flow-matching (rectified-flow) parameterisation in the one sigma convention."""

import pytest
import torch
from diffusion_oracles import Gaussian, exact_network

from atlas.diffusion import (Denoiser, add_noise, flow_sigmas, get_scalings, initial_noise, karras_sigmas, sample,
                             sample_sigmas_logit_normal)

F64 = torch.float64


def test_flow_target_is_the_straight_path_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    sigma = torch.exp(torch.randn(5, generator=g, dtype=F64))
    denoiser = Denoiser(lambda x, c: x, prediction="flow")
    torch.testing.assert_close(denoiser.network_target(x0, noise, sigma), noise - x0, rtol=0, atol=1e-12)
    # The network input is the rectified-flow state x_t = (1 - t) x0 + t noise with t = sigma / (1 + sigma).
    t = (sigma / (1 + sigma))[:, None]
    c = get_scalings("flow", sigma)
    torch.testing.assert_close(c.c_in[:, None] * add_noise(x0, noise, sigma), (1 - t) * x0 + t * noise,
                               rtol=0, atol=1e-12)


def test_euler_is_exactly_the_rectified_flow_euler_step():
    data = Gaussian(mu=2.0, std=0.5)
    denoiser = Denoiser(exact_network(data.denoise, "flow"), "flow")
    sigmas = karras_sigmas(12, dtype=F64)
    x = initial_noise((64, 4), sigmas[0], generators=[torch.Generator().manual_seed(i) for i in range(64)],
                      dtype=F64)
    ours = sample("euler", denoiser, x, sigmas)
    # Independent oracle: Euler on dx_t/dt = u(x_t, t) in t = sigma / (1 + sigma), x_t = x / (1 + sigma).
    ts = sigmas / (1 + sigmas)
    xt = x / (1 + sigmas[0])
    for t, t_next, sigma in zip(ts[:-1], ts[1:], sigmas[:-1]):
        x0_hat = data.denoise(xt * (1 + sigma), sigma.expand(len(xt)))
        velocity = (xt - x0_hat) / t  # u = noise - x0 and x_t = x0 + t u
        xt = xt + (t_next - t) * velocity
    torch.testing.assert_close(ours, xt, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "unipc"])
def test_flow_model_samples_the_gaussian(name):
    data = Gaussian(mu=2.0, std=0.5)
    denoiser = Denoiser(exact_network(data.denoise, "flow"), "flow")
    sigmas = karras_sigmas(50, dtype=F64)
    torch.manual_seed(0)
    out = sample(name, denoiser, initial_noise((4096, 16), sigmas[0], dtype=F64), sigmas)
    assert abs(out.mean().item() - 2.0) < 0.03
    assert abs(out.std().item() / 0.5 - 1.0) < 0.05


def test_logit_normal_sigmas():
    g = torch.Generator().manual_seed(0)
    sigma = sample_sigmas_logit_normal(200_000, generator=g, dtype=F64)
    t = sigma / (1 + sigma)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.01 and abs(logit.std().item() - 1.0) < 0.01
    with pytest.raises(ValueError, match="std must be > 0"):
        sample_sigmas_logit_normal(3, std=0.0)


def test_flow_grid_is_uniform_in_t():
    sigmas = flow_sigmas(4, sigma_max=9.0, dtype=F64)  # t_max = 0.9
    t = sigmas / (1 + sigmas)
    torch.testing.assert_close(t, torch.tensor([0.9, 0.675, 0.45, 0.225, 0.0], dtype=F64), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="sigma_max must be positive and finite"):
        flow_sigmas(4, sigma_max=float("inf"))


def test_one_euler_step_on_the_flow_grid_is_exact_for_a_point_mass():
    # Data at one point c: the velocity u = (x_t - c) / t is exact, so one straight step lands on c.
    c = torch.tensor([[0.3, -1.2]], dtype=F64)
    denoiser = Denoiser(exact_network(lambda x, sigma: c.expand_as(x), "flow"), "flow")
    sigmas = flow_sigmas(1, dtype=F64)
    x = initial_noise((3, 2), sigmas[0], generators=[torch.Generator().manual_seed(i) for i in range(3)], dtype=F64)
    torch.testing.assert_close(sample("euler", denoiser, x, sigmas), c.expand(3, 2), rtol=0, atol=1e-12)


def test_flow_heun_is_second_order_on_the_flow_grid():
    """On the flow grid (first step from sigma = 1000) Heun in t converges at order 2 to the exact ODE solution."""
    data = Gaussian(mu=2.0, std=0.5)
    x_start = initial_noise((64, 4), 1000.0, [torch.Generator().manual_seed(i) for i in range(64)], dtype=F64)
    errors = []
    for steps in (8, 16, 32):
        sigmas = flow_sigmas(steps, sigma_max=1000.0, append_zero=False, dtype=F64)
        exact = data.ode_solution(x_start, 1000.0, sigmas[-1].item())
        errors.append((sample("flow_heun", data.denoise, x_start, sigmas) - exact).abs().max().item())
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.6 * 4 < coarse / fine < 1.4 * 4, errors
