"""Noise-level grids for sampling and continuous VP schedules for training.

Every grid is a 1-D float tensor of sigmas in the convention of :mod:`atlas.diffusion.convention`
(``x = x0 + sigma * noise``), strictly *descending*: ``sigmas[0]`` is the noisiest level where sampling starts.
``n`` is the number of non-zero levels; ``append_zero=True`` appends a final 0 so that ``n`` sampler steps
take ``n + 1`` values and end on clean data.

Grids are computed in float64 and then cast to ``dtype``.  VP schedules are defined by ``alpha_bar(t)`` on
t in [0, 1] (t = 0 clean, t = 1 noisy) and converted to sigma with
:func:`atlas.diffusion.convention.alpha_bar_to_sigma`; the grid visits t from 1 down to ``t_min``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from . import convention

__all__ = [
    "SCHEDULES",
    "exponential_sigmas",
    "flow_sigmas",
    "get_sigmas",
    "karras_sigmas",
    "vp_cosine_alpha_bar",
    "vp_cosine_sigmas",
    "vp_linear_alpha_bar",
    "vp_linear_sigmas",
]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of sampling steps) must be an integer >= 1, got {n!r}")


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    if not (0.0 < sigma_min < sigma_max < math.inf):
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}; "
            "the EDM defaults are sigma_min=0.002, sigma_max=80.0"
        )


def _check_t_min(t_min: float) -> None:
    if not (0.0 < t_min < 1.0):
        raise ValueError(f"t_min must lie in (0, 1) (t=0 is clean data, where sigma=0), got {t_min!r}; try 1e-3")


def _finish(sigmas: Tensor, append_zero: bool, dtype: torch.dtype, device) -> Tensor:
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype=dtype, device=device)


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """EDM time-step grid (Karras et al. 2022, Eq. 5).

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for i = 0..n-1,
    so steps are short near ``sigma_min`` (rho = 7 in the paper). With ``n = 1`` the grid is ``[sigma_max]``.

    Returns:
        Shape (n + 1,) with ``append_zero`` else (n,), descending.
    """
    _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}; the EDM default is 7.0")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _finish(sigmas, append_zero, dtype, device)


def exponential_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Log-linear grid: ``log sigma`` uniform from ``log sigma_max`` to ``log sigma_min``.

    Equal steps in ``lambda = -log sigma``, the variable of DPM-Solver (Lu et al. 2022).
    Returns shape (n + 1,) with ``append_zero`` else (n,), descending.
    """
    _check_n(n)
    _check_sigma_range(sigma_min, sigma_max)
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64)
    return _finish(log_sigmas.exp(), append_zero, dtype, device)


def vp_linear_alpha_bar(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """VP-SDE signal level (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. 33).

    ``beta(t) = beta_min + t (beta_max - beta_min)`` integrates to
    ``alpha_bar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2)``. Any shape, t in [0, 1];
    strictly decreasing from 1 at t = 0 to ``exp(-(beta_min + beta_max)/2)`` (about 4.3e-5) at t = 1.
    """
    if not (0.0 <= beta_min < beta_max):
        raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
    return torch.exp(-beta_min * t - 0.5 * (beta_max - beta_min) * t * t)


def vp_cosine_alpha_bar(t: Tensor, s: float = 0.008, alpha_bar_min: float = 1e-4) -> Tensor:
    """Cosine signal level (Nichol & Dhariwal 2021, "Improved DDPM", Eq. 17).

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``, t in [0, 1], any shape.
    The exact curve reaches 0 at t = 1 (sigma = inf), which no sampler can start from; the paper avoids it by
    clipping beta_t at 0.999.  Here alpha_bar is instead clamped from below at ``alpha_bar_min`` (default 1e-4,
    i.e. sigma_max ~= 100, comparable to the VP-linear schedule's ~152); this only flattens the last ~0.6 % of t.
    """
    if not s > 0:
        raise ValueError(f"s (cosine offset) must be > 0, got {s!r}; the paper uses 0.008")
    if not (0.0 < alpha_bar_min < 1.0):
        raise ValueError(f"alpha_bar_min must lie in (0, 1), got {alpha_bar_min!r}; try 1e-4")
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    alpha_bar = torch.cos((t + s) / (1.0 + s) * (math.pi / 2)) ** 2 / f0
    return alpha_bar.clamp(min=alpha_bar_min, max=1.0)


def _vp_sigmas(alpha_bar_fn: Callable[[Tensor], Tensor], n: int, t_min: float, t_max: float = 1.0) -> Tensor:
    _check_n(n)
    _check_t_min(t_min)
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    return convention.alpha_bar_to_sigma(alpha_bar_fn(t))


def vp_linear_sigmas(
    n: int,
    beta_min: float = 0.1,
    beta_max: float = 20.0,
    t_min: float = 1e-3,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Sigma grid of the VP-SDE linear schedule: t uniform from 1 to ``t_min``, sigma from
    :func:`vp_linear_alpha_bar` via :func:`convention.alpha_bar_to_sigma` (about 152 down to 0.01 by default).

    Returns shape (n + 1,) with ``append_zero`` else (n,), descending.
    """
    sigmas = _vp_sigmas(lambda t: vp_linear_alpha_bar(t, beta_min, beta_max), n, t_min)
    return _finish(sigmas, append_zero, dtype, device)


def vp_cosine_sigmas(
    n: int,
    s: float = 0.008,
    t_min: float = 1e-3,
    alpha_bar_min: float = 1e-4,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Sigma grid of the cosine schedule: sigma from :func:`vp_cosine_alpha_bar` via
    :func:`convention.alpha_bar_to_sigma` (about 100 down to 0.006 by default), t uniform from ``t_max`` to
    ``t_min``.  ``t_max`` (~0.9937 by default) is where the curve meets the clamp ``alpha_bar_min``, so the grid
    starts exactly at the clamp and stays strictly descending for any ``n``.

    Returns shape (n + 1,) with ``append_zero`` else (n,), descending.
    """
    vp_cosine_alpha_bar(torch.zeros(()), s, alpha_bar_min)  # validates s and alpha_bar_min
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    t_max = (1.0 + s) * (2.0 / math.pi) * math.acos(math.sqrt(alpha_bar_min * f0)) - s
    if not t_min < t_max:
        raise ValueError(f"t_min ({t_min!r}) must be below t_max ({t_max:.6g}), where alpha_bar reaches alpha_bar_min")
    sigmas = _vp_sigmas(lambda t: vp_cosine_alpha_bar(t, s, alpha_bar_min), n, t_min, min(t_max, 1.0))
    return _finish(sigmas, append_zero, dtype, device)


def flow_sigmas(
    n: int,
    sigma_max: float = 80.0,
    *,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Uniform steps in the rectified-flow time ``t`` of the path ``x_t = (1 - t) x0 + t noise``.

    ``t_i = t_max (n - i) / n`` for i = 0..n-1 with ``t_max = sigma_max / (1 + sigma_max)``, mapped to
    ``sigma = t / (1 - t)`` (then ``x_t = (1 - t) x`` in our convention, so a sampler's state is the flow's state
    rescaled).  On this grid an Euler (= DDIM) step in sigma is exactly the flow-matching Euler step
    ``x_t' = x_t + (t' - t) u`` (Liu et al. 2023; Lipman et al. 2023), the usual way to sample a flow model.
    ``sigma_max`` stands for t = 1 (sigma = inf), which a sampler cannot start from: 80 gives t_max ~ 0.988.

    Returns shape (n + 1,) with ``append_zero`` (ending at t = 0) else (n,), descending.
    """
    _check_n(n)
    if not 0.0 < sigma_max < math.inf:
        raise ValueError(f"sigma_max must be positive and finite, got {sigma_max!r}; 80.0 gives t_max ~ 0.988")
    t_max = sigma_max / (1.0 + sigma_max)
    t = t_max * torch.arange(n, 0, -1, dtype=torch.float64) / n
    return _finish(t / (1.0 - t), append_zero, dtype, device)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "flow": flow_sigmas,
    "vp_linear": vp_linear_sigmas,
    "vp_cosine": vp_cosine_sigmas,
}


def get_sigmas(name: str, n: int, **kwargs) -> Tensor:
    """Build the sigma grid called ``name`` (one of :data:`SCHEDULES`) with ``n`` steps.

    ``kwargs`` go to the schedule function, e.g. ``get_sigmas("karras", 30, sigma_max=14.6)``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names are {sorted(SCHEDULES)}")
    return SCHEDULES[name](n, **kwargs)
