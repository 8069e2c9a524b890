"""The one noise convention of atlas: EDM / variance-exploding form.

Every part of atlas (training losses, samplers, schedules, docs) describes a noisy state the same way
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Eq. 1-2)::

    x = x0 + sigma * noise,        noise ~ N(0, I),   sigma in [0, inf)

``sigma = 0`` is clean data and sampling walks from a large ``sigma_max`` *down* to 0.  The variance-preserving
(VP, DDPM) quantities are derived from sigma, never stored separately::

    alpha_bar = 1 / (1 + sigma^2)                        (so sigma^2 = (1 - alpha_bar) / alpha_bar)
    x_vp      = sqrt(alpha_bar) * x = x / sqrt(1 + sigma^2)
              = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise

Per-sample sigmas are tensors of shape (B,); the functions here broadcast them over the other dims of x.
These functions are the single source of truth: the losses noise data with :func:`add_noise` and the samplers
and VP schedules convert with :func:`sigma_to_alpha_bar` / :func:`alpha_bar_to_sigma` / :func:`to_vp` /
:func:`from_vp` (a test asserts they are the same objects).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "add_noise",
    "alpha_bar_to_sigma",
    "broadcast",
    "from_vp",
    "noise_level",
    "sigma_to_alpha_bar",
    "to_vp",
]


def broadcast(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample ``sigma`` so that it broadcasts against ``x``.

    Args:
        sigma: shape (B,) (one value per sample) or a 0-d tensor (one value for all).
        x: shape (B, ...).

    Returns:
        ``sigma`` viewed as (B, 1, 1, ...) with ``x.ndim`` dims (or unchanged if 0-d).
    """
    if sigma.ndim == 0:
        return sigma
    if sigma.ndim != 1 or sigma.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"sigma must have shape (B,) = ({x.shape[0]},) to match x of shape {tuple(x.shape)}, "
            f"got shape {tuple(sigma.shape)}; pass one sigma per sample (use sigma.expand(B) for a shared value)"
        )
    return sigma.reshape(sigma.shape[0], *([1] * (x.ndim - 1)))


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Forward (noising) process ``x = x0 + sigma * noise`` (Karras et al. 2022, Eq. 1).

    Args:
        x0: clean data, shape (B, ...).
        noise: standard normal noise, same shape as ``x0``.
        sigma: noise level per sample, shape (B,).

    Returns:
        The noisy state, shape (B, ...).
    """
    if noise.shape != x0.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}; draw it with torch.randn_like(x0)"
        )
    return x0 + broadcast(sigma, x0) * noise


def sigma_to_alpha_bar(sigma: Tensor) -> Tensor:
    """VP signal level ``alpha_bar = 1 / (1 + sigma^2)`` (DDPM's cumulative product of (1 - beta)).

    Any shape; ``sigma = 0`` gives 1 and ``sigma = inf`` gives 0.
    """
    return 1.0 / (1.0 + sigma * sigma)


def alpha_bar_to_sigma(alpha_bar: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_alpha_bar`: ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``.

    Any shape; ``alpha_bar`` must lie in (0, 1] (``alpha_bar = 0`` would mean ``sigma = inf``).
    """
    return torch.sqrt((1.0 - alpha_bar) / alpha_bar)


def to_vp(x: Tensor, sigma: Tensor) -> Tensor:
    """Map a state of this convention to the VP scale: ``x_vp = x / sqrt(1 + sigma^2)``.

    Args:
        x: shape (B, ...), ``x = x0 + sigma * noise``.
        sigma: shape (B,).

    Returns:
        ``x_vp = sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise``, shape (B, ...).
    """
    return x * torch.rsqrt(1.0 + broadcast(sigma, x) ** 2)


def from_vp(x_vp: Tensor, sigma: Tensor) -> Tensor:
    """Inverse of :func:`to_vp`: ``x = x_vp * sqrt(1 + sigma^2)``. Shapes as in :func:`to_vp`."""
    return x_vp * torch.sqrt(1.0 + broadcast(sigma, x_vp) ** 2)


def noise_level(sigma: Tensor) -> Tensor:
    """The noise-level input ``c_noise = log(sigma) / 4`` fed to every network (Karras et al. 2022, Table 1).

    Used for every prediction type so that a network never sees a different time variable. ``sigma`` must be
    > 0: ``sigma = 0`` gives ``-inf`` (samplers never evaluate the network at 0).
    """
    return 0.25 * torch.log(sigma)
