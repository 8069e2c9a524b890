"""Prediction types, their exact conversions, and the network-to-denoiser wrapper.

All in the convention ``x = x0 + sigma * noise`` of :mod:`atlas.diffusion.convention`.  A network ``F`` is
turned into a denoiser (an estimate of E[x0 | x]) by the preconditioning of Karras et al. 2022, Eq. 7::

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

and trained to regress ``F* = (x0 - c_skip * x) / c_out`` (Eq. 8).  The four prediction types differ only in
the scalings; ``c_noise = log(sigma) / 4`` for all of them.  With ``s = sigma``, ``sd = sigma_data``:

=========  ======================  =========================  =======================  ===========================
type       c_skip                  c_out                      c_in                     F* (regression target)
=========  ======================  =========================  =======================  ===========================
``edm``    sd^2 / (s^2 + sd^2)     s sd / sqrt(s^2 + sd^2)    1 / sqrt(s^2 + sd^2)     EDM target (Eq. 8)
``eps``    1                       -s                         1 / sqrt(s^2 + 1)        noise (Ho et al. 2020)
``v``      1 / (s^2 + 1)           -s / sqrt(s^2 + 1)         1 / sqrt(s^2 + 1)        v = a noise - b x0 (*)
``x0``     0                       1                          1 / sqrt(s^2 + sd^2)     x0
``flow``   1 / (1 + s)             -s / (1 + s)               1 / (1 + s)              u = noise - x0 (**)
=========  ======================  =========================  =======================  ===========================

(*) Salimans & Ho 2022 with ``a = 1/sqrt(1+s^2)``, ``b = s/sqrt(1+s^2)`` (VP form, sigma_data = 1).
(**) Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) on the straight path
``x_t = (1 - t) x0 + t noise`` with ``t = s / (1 + s)``: ``x_t = x / (1 + s)`` is the network input and the
regression target is the constant velocity ``u = noise - x0``; ``D = x_t - t u``. Because Euler's method in
this convention equals DDIM, it is exactly the rectified-flow Euler step ``x_t' = x_t + (t' - t) u``.

The "score" is that of the noisy marginal, ``grad log p_sigma(x) = (E[x0|x] - x) / sigma^2`` (Tweedie).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from . import convention
from .convention import broadcast

__all__ = [
    "PREDICTIONS",
    "Denoiser",
    "Scalings",
    "convert",
    "eps_to_x0",
    "expand_sigma",
    "get_scalings",
    "score_to_x0",
    "v_to_x0",
    "x0_to_eps",
    "x0_to_score",
    "x0_to_v",
]

PREDICTIONS = ("edm", "eps", "v", "x0", "flow")
QUANTITIES = ("eps", "x0", "v", "score")


class Scalings(NamedTuple):
    """Preconditioning coefficients, each shaped like the sigma they were computed from (B,)."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; valid types are {list(PREDICTIONS)}")


def get_scalings(prediction: str, sigma: Tensor, sigma_data: float = 0.5) -> Scalings:
    """Scalings of Karras et al. 2022, Eq. 7 / Table 1, for ``prediction`` in {"edm", "eps", "v", "x0", "flow"}.

    Args:
        prediction: the network's prediction type (see the module table).
        sigma: noise levels, shape (B,); must be > 0.
        sigma_data: data standard deviation, used by "edm" and "x0" (0.5 in EDM).

    Returns:
        :class:`Scalings` with four (B,) tensors.
    """
    _check_prediction(prediction)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}; EDM uses 0.5 for data in [-1, 1]")
    c_noise = convention.noise_level(sigma)
    ones = torch.ones_like(sigma)
    if prediction == "edm":
        total = sigma**2 + sigma_data**2
        return Scalings(sigma_data**2 / total, sigma * sigma_data * total.rsqrt(), total.rsqrt(), c_noise)
    if prediction == "eps":
        return Scalings(ones, -sigma, (sigma**2 + 1).rsqrt(), c_noise)
    if prediction == "v":
        total = sigma**2 + 1
        return Scalings(1 / total, -sigma * total.rsqrt(), total.rsqrt(), c_noise)
    if prediction == "flow":
        scale = 1 / (1 + sigma)
        return Scalings(scale, -sigma * scale, scale, c_noise)
    return Scalings(torch.zeros_like(sigma), ones, (sigma**2 + sigma_data**2).rsqrt(), c_noise)


# Exact conversions given the noisy state x (B, ...) and sigma (B,) > 0; every function returns shape (B, ...).


def eps_to_x0(eps: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``x0 = x - sigma * eps`` (inverts ``x = x0 + sigma * eps``)."""
    return x - broadcast(sigma, x) * eps


def x0_to_eps(x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``eps = (x - x0) / sigma``."""
    return (x - x0) / broadcast(sigma, x)


def v_to_x0(v: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``x0 = a x_vp - b v = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v`` (Salimans & Ho 2022, Eq. 20)."""
    s = broadcast(sigma, x)
    return x / (1 + s**2) - s * torch.rsqrt(1 + s**2) * v


def x0_to_v(x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``v = a eps - b x0 = (x - (1 + sigma^2) x0) / (sigma sqrt(1 + sigma^2))``, a, b as in :func:`v_to_x0`."""
    s = broadcast(sigma, x)
    return (x - (1 + s**2) * x0) / (s * torch.sqrt(1 + s**2))


def score_to_x0(score: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's formula ``x0 = x + sigma^2 * score`` (Efron 2011; Karras et al. 2022, Eq. 3)."""
    return x + broadcast(sigma, x) ** 2 * score


def x0_to_score(x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """``score = grad_x log p(x; sigma) = (x0 - x) / sigma^2`` where ``x0 = E[x0 | x]``."""
    return (x0 - x) / broadcast(sigma, x) ** 2


_TO_X0: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "eps": eps_to_x0,
    "x0": lambda value, x, sigma: value,
    "v": v_to_x0,
    "score": score_to_x0,
}
_FROM_X0: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "eps": x0_to_eps,
    "x0": lambda value, x, sigma: value,
    "v": x0_to_v,
    "score": x0_to_score,
}


def convert(value: Tensor, source: str, target: str, x: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction between any two of {"eps", "x0", "v", "score"} at the state ``(x, sigma)``.

    Goes through x0 (``x0 -> target`` after ``source -> x0``); ``eps <-> score`` is done directly
    (``score = -eps / sigma``) to avoid cancellation in ``x - sigma * eps``.
    """
    for name, kind in (("source", source), ("target", target)):
        if kind not in QUANTITIES:
            raise ValueError(f"unknown {name} quantity {kind!r}; valid quantities are {list(QUANTITIES)}")
    if source == target:
        return value
    if (source, target) == ("eps", "score"):
        return -value / broadcast(sigma, x)
    if (source, target) == ("score", "eps"):
        return -value * broadcast(sigma, x)
    return _FROM_X0[target](_TO_X0[source](value, x, sigma), x, sigma)


def expand_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """Return ``sigma`` as a (B,) tensor of ``x``'s dtype and device; accepts a float, a 0-d, (1,) or (B,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    batch = x.shape[0]
    if sigma.ndim == 0 or sigma.shape == (1,):
        return sigma.reshape(()).expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(
            f"sigma must be a float, a 0-d tensor or shape (B,) = ({batch},) for x of shape {tuple(x.shape)}, "
            f"got shape {tuple(sigma.shape)}"
        )
    return sigma


class Denoiser(nn.Module):
    """Wrap a network into a denoiser ``D(x, sigma) ~= E[x0 | x]`` (Karras et al. 2022, Eq. 7).

    The network is any callable ``network(x_scaled (B, ...), c_noise (B,), **cond) -> tensor like x``; it sees
    only ``c_in * x`` and ``c_noise = log(sigma) / 4`` and knows nothing about sigmas or prediction types.

    Args:
        network: the raw model ``F``.
        prediction: what ``F`` predicts, one of {"edm", "eps", "v", "x0"} (see the module table).
        sigma_data: data standard deviation (used by "edm" and "x0").
    """

    def __init__(self, network: Callable[..., Tensor], prediction: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        _check_prediction(prediction)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}; EDM uses 0.5 for data in [-1, 1]")
        self.network = network
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> Scalings:
        """:func:`get_scalings` for this denoiser's prediction type and sigma_data; sigma (B,)."""
        return get_scalings(self.prediction, sigma, self.sigma_data)

    def network_output(self, x: Tensor, sigma: float | Tensor, **cond) -> Tensor:
        """Raw network output ``F(c_in x, c_noise, **cond)``, shape like x (B, ...)."""
        sigma = expand_sigma(sigma, x)
        c = self.scalings(sigma)
        return self.network(broadcast(c.c_in, x) * x, c.c_noise, **cond)

    def network_target(self, x0: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
        """Regression target ``F* = (x0 - c_skip x) / c_out`` with ``x = x0 + sigma noise`` (Eq. 8), (B, ...).

        Equals ``noise`` for "eps", ``v`` for "v" and ``x0`` for "x0".
        """
        sigma = expand_sigma(sigma, x0)
        c = self.scalings(sigma)
        x = convention.add_noise(x0, noise, sigma)
        return (x0 - broadcast(c.c_skip, x) * x) / broadcast(c.c_out, x)

    def forward(self, x: Tensor, sigma: float | Tensor, **cond) -> Tensor:
        """Denoised estimate ``c_skip x + c_out F(c_in x, c_noise, **cond)``.

        Args:
            x: noisy state, shape (B, ...).
            sigma: its noise level: a float, a 0-d tensor or shape (B,); must be > 0.
            **cond: conditioning passed to the network unchanged (e.g. ``Conditioning.as_kwargs()``).

        Returns:
            Estimate of x0, shape (B, ...).
        """
        sigma = expand_sigma(sigma, x)
        c = self.scalings(sigma)
        output = self.network(broadcast(c.c_in, x) * x, c.c_noise, **cond)
        return broadcast(c.c_skip, x) * x + broadcast(c.c_out, x) * output

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}, sigma_data={self.sigma_data}"
