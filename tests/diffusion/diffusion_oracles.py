"""Closed-form oracles for the diffusion tests: exact denoisers of Gaussian and Gaussian-mixture data.

Under ``x = x0 + sigma * noise`` the noisy marginal of N(m, c^2 I) is N(m, (c^2 + sigma^2) I) and the posterior
mean is ``E[x0 | x] = m + c^2 / (c^2 + sigma^2) (x - m)``; a mixture's posterior mean is the responsibility-
weighted sum of the components' posterior means (responsibilities under the noisy marginals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from atlas.diffusion import broadcast, get_scalings


@dataclass
class Gaussian:
    """Isotropic Gaussian data N(mu, std^2 I)."""

    mu: float = 2.0
    std: float = 0.5

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = broadcast(sigma, x)
        return self.mu + self.std**2 / (self.std**2 + s**2) * (x - self.mu)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        return -(x - self.mu) / (self.std**2 + broadcast(sigma, x) ** 2)

    def ode_solution(self, x_start: Tensor, sigma_start: float, sigma_end: float) -> Tensor:
        """The PF-ODE is linear for Gaussian data: x(sigma) - mu scales with sqrt(std^2 + sigma^2)."""
        ratio = math.sqrt((self.std**2 + sigma_end**2) / (self.std**2 + sigma_start**2))
        return self.mu + ratio * (x_start - self.mu)


@dataclass
class GaussianMixture:
    """Mixture of isotropic Gaussians: weights (K,), means (K, d), stds (K,)."""

    weights: Tensor
    means: Tensor
    stds: Tensor

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # (B, d)
        var = self.stds**2 + broadcast(sigma, flat) ** 2  # (B, K)
        sq_dist = ((flat[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        d = flat.shape[1]
        log_resp = torch.log(self.weights) - 0.5 * d * torch.log(var) - 0.5 * sq_dist / var
        resp = torch.softmax(log_resp, dim=1)  # (B, K)
        shrink = self.stds**2 / var  # (B, K)
        component_means = self.means[None] + shrink[..., None] * (flat[:, None, :] - self.means[None])
        return (resp[..., None] * component_means).sum(1).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[idx] + self.stds[idx, None] * noise

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest mean for each row of x (B, d)."""
        return torch.cdist(x, self.means).argmin(dim=1)


def exact_network(denoise, prediction: str, sigma_data: float = 0.5):
    """A "network" ``F(c_in x, c_noise)`` that makes ``Denoiser(F, prediction, sigma_data)`` equal ``denoise``.

    It recovers sigma from c_noise = log(sigma)/4 and x from c_in x, then inverts D = c_skip x + c_out F.
    """

    def network(x_scaled: Tensor, c_noise: Tensor) -> Tensor:
        sigma = torch.exp(4 * c_noise)
        c = get_scalings(prediction, sigma, sigma_data)
        x = x_scaled / broadcast(c.c_in, x_scaled)
        return (denoise(x, sigma) - broadcast(c.c_skip, x) * x) / broadcast(c.c_out, x)

    return network


def two_component_mixture(dtype=torch.float64) -> GaussianMixture:
    """2-D mixture with weights 0.3 / 0.7 and well separated means."""
    return GaussianMixture(
        weights=torch.tensor([0.3, 0.7], dtype=dtype),
        means=torch.tensor([[-2.0, -1.0], [2.0, 1.5]], dtype=dtype),
        stds=torch.tensor([0.4, 0.6], dtype=dtype),
    )


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
