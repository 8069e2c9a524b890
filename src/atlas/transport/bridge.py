"""Brownian-bridge (Schrodinger-bridge) interpolants between paired samples, and their SB-CFM drift target.

A Brownian motion with diffusion ``sigma_sq`` (variance ``sigma_sq * t`` after time t) pinned at ``x0`` at
t = 0 and ``x1`` at t = 1 has the marginal (e.g. Tong et al. 2023, "Improving and generalizing flow-based
generative models with minibatch optimal transport", SB-CFM)::

    x_t ~ N(mu_t, sigma_t^2 I),   mu_t = (1 - t) x0 + t x1,   sigma_t^2 = sigma_sq t (1 - t).

With pairs (x0, x1) drawn from the entropic OT plan with ``eps = 2 sigma_sq`` (cost ``||x - y||^2``, Gibbs
kernel ``exp(-||x - y||^2 / eps)``, the convention of :mod:`atlas.transport`) these marginals are those of
the Schrodinger bridge between the two distributions (Follmer 1988; Leonard 2014), which is the SB-CFM recipe
(see :func:`atlas.transport.coupling.pair_minibatch` with ``coupling="sb"``).  ``sigma_sq = 0`` gives the
straight-line interpolant of (OT-)CFM.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from atlas.diffusion.convention import broadcast

__all__ = ["brownian_bridge_mean", "brownian_bridge_sample", "brownian_bridge_variance", "sb_cfm_target"]


def _as_time(t: Union[float, Tensor], x: Tensor, *, open_interval: bool) -> Tensor:
    """``t`` as a tensor broadcastable against ``x`` (B, ...), after checking it lies in [0, 1] or (0, 1)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    lo_ok = bool((t > 0).all()) if open_interval else bool((t >= 0).all())
    hi_ok = bool((t < 1).all()) if open_interval else bool((t <= 1).all())
    if not (lo_ok and hi_ok):
        interval = "(0, 1): the drift is singular at the endpoints" if open_interval else "[0, 1]"
        raise ValueError(f"t must lie in {interval}, got values in [{float(t.min())}, {float(t.max())}]")
    return broadcast(t, x)


def _check_pair(x0: Tensor, x1: Tensor) -> None:
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape (paired samples), got {tuple(x0.shape)} and "
                         f"{tuple(x1.shape)}")
    if x0.ndim == 0:
        raise ValueError("x0 and x1 must have a batch dimension, shape (B, ...)")


def _check_sigma_sq(sigma_sq: float) -> None:
    if not (isinstance(sigma_sq, (int, float)) and 0 <= sigma_sq < math.inf):
        raise ValueError(f"sigma_sq (bridge diffusion, variance per unit time) must be finite and >= 0, "
                         f"got {sigma_sq!r}; 0 gives the straight-line (OT-CFM) interpolant")


def brownian_bridge_mean(x0: Tensor, x1: Tensor, t: Union[float, Tensor]) -> Tensor:
    """Bridge mean ``mu_t = (1 - t) x0 + t x1``.

    Args:
        x0, x1: paired endpoints, shape (B, ...).
        t: time in [0, 1], a float, a 0-d tensor or shape (B,).

    Returns:
        Shape (B, ...).
    """
    _check_pair(x0, x1)
    t = _as_time(t, x0, open_interval=False)
    return (1 - t) * x0 + t * x1


def brownian_bridge_variance(t: Union[float, Tensor], sigma_sq: float) -> Tensor:
    """Bridge variance per coordinate ``sigma_t^2 = sigma_sq t (1 - t)`` (same shape as ``t``)."""
    _check_sigma_sq(sigma_sq)
    t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not isinstance(t, Tensor) else t.dtype)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}]")
    return sigma_sq * t * (1 - t)


def brownian_bridge_sample(
    x0: Tensor,
    x1: Tensor,
    t: Union[float, Tensor],
    sigma_sq: float,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Sample ``x_t = (1 - t) x0 + t x1 + sqrt(sigma_sq t (1 - t)) z``, ``z ~ N(0, I)``.

    Args:
        x0, x1: paired endpoints, shape (B, ...).
        t: time in [0, 1], a float, a 0-d tensor or shape (B,) (one time per pair).
        sigma_sq: diffusion of the reference Brownian motion (variance per unit time), >= 0.
        generator: for ``z``; drawn on the generator's device, then moved to ``x0``'s.  Nothing is drawn when
            ``sigma_sq = 0``.

    Returns:
        ``x_t``, shape (B, ...); exactly ``x0`` at t = 0 and ``x1`` at t = 1.
    """
    _check_sigma_sq(sigma_sq)
    mean = brownian_bridge_mean(x0, x1, t)
    if sigma_sq == 0:
        return mean
    t = _as_time(t, x0, open_interval=False)
    device = generator.device if generator is not None else x0.device
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device).to(x0.device)
    return mean + (sigma_sq * t * (1 - t)).sqrt() * z


def sb_cfm_target(x0: Tensor, x1: Tensor, x_t: Tensor, t: Union[float, Tensor]) -> Tensor:
    """Conditional drift of the Brownian bridge at ``x_t``, the SB-CFM regression target (Tong et al. 2023).

    ``u_t(x_t | x0, x1) = (1 - 2t) / (2 t (1 - t)) * (x_t - mu_t) + (x1 - x0)``.  It is the time derivative
    of ``x_t = mu_t + sigma_t z`` at fixed ``z`` (``d sigma_t / dt / sigma_t = (1 - 2t) / (2 t (1 - t))``);
    it does not depend on ``sigma_sq`` given ``x_t``.  With ``sigma_sq = 0`` it is ``x1 - x0`` (OT-CFM).

    Args:
        x0, x1: paired endpoints, shape (B, ...).
        x_t: a bridge sample between them (e.g. from :func:`brownian_bridge_sample`), shape (B, ...).
        t: time in the open interval (0, 1) (the coefficient diverges at the endpoints; sample t there
            as ``U(t_min, 1 - t_min)``), a float, a 0-d tensor or shape (B,).

    Returns:
        Shape (B, ...).
    """
    _check_pair(x0, x1)
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t must have the shape of x0 {tuple(x0.shape)}, got {tuple(x_t.shape)}")
    t = _as_time(t, x0, open_interval=True)
    mean = (1 - t) * x0 + t * x1
    return (1 - 2 * t) / (2 * t * (1 - t)) * (x_t - mean) + (x1 - x0)
