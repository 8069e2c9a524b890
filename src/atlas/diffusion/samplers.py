"""Samplers: plain functions that integrate from ``sigmas[0]`` down to ``sigmas[-1]``.

Convention ``x = x0 + sigma * noise`` (:mod:`atlas.diffusion.convention`).  Every sampler takes

* ``denoise(x (B, ...), sigma (B,)) -> denoised (B, ...)``: an estimate of E[x0 | x].  Conditioning and
  guidance are bound into this callable by the caller (see :mod:`atlas.diffusion.guidance`).
* ``x``: the state at ``sigmas[0]``, usually :func:`initial_noise` ``(shape, sigmas[0], generators)``.
* ``sigmas``: a 1-D strictly descending grid (see :mod:`atlas.diffusion.schedules`), at least 2 values.

The probability-flow ODE in this convention is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022,
Eq. 4 with sigma(t) = t, s(t) = 1); each sampler below is one discretisation of it or of its SDE.

Randomness is per sample: ``generators`` is None (global RNG) or a list of B ``torch.Generator``; every draw
for sample i comes from ``generators[i]`` only, so a sample does not depend on its batch.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import convention

__all__ = [
    "SAMPLERS",
    "DenoiseFn",
    "StepInfo",
    "ancestral_step",
    "initial_noise",
    "randn_per_sample",
    "sample",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_flow_heun",
    "sample_heun",
    "sample_unipc",
]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
Generators = Optional[Sequence[torch.Generator]]


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports to ``callback`` once per step.

    ``x`` (B, ...) is the state that was denoised, at noise level ``sigma`` (0-d; after churn for Heun),
    ``denoised`` (B, ...) the first denoiser output of the step, ``sigma_next`` (0-d) the level the step
    ends at; ``index`` runs from 0 to ``total - 1``.
    """

    index: int
    total: int
    x: Tensor
    sigma: Tensor
    sigma_next: Tensor
    denoised: Tensor


def _check_generators(generators: Generators, batch: int) -> None:
    if generators is not None and len(generators) != batch:
        raise ValueError(
            f"generators must be None or one torch.Generator per sample: got {len(generators)} for batch size "
            f"{batch}; build them with [torch.Generator().manual_seed(seed + i) for i in range(batch)]"
        )


def randn_per_sample(
    shape: Sequence[int], generators: Generators, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Standard normal tensor of ``shape`` (B, ...) where row i is drawn from ``generators[i]`` alone.

    With ``generators=None`` the global RNG is used.  Each row is drawn on its generator's device and then
    moved to ``device``, so a CPU generator gives the same numbers whatever the target device.
    """
    shape = tuple(shape)
    if generators is None:
        return torch.randn(shape, dtype=dtype, device=device)
    _check_generators(generators, shape[0])
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generators]
    return torch.stack(rows).to(device=device)


def initial_noise(
    shape: Sequence[int], sigma_max: float | Tensor, generators: Generators = None,
    dtype: torch.dtype = torch.float32, device=None,
) -> Tensor:
    """The sampler's starting state ``x_T = sigma_max * N(0, I)``, shape ``shape`` (B, ...).

    (Exactly, x_T ~ data + sigma_max * noise; for sigma_max >> data std the data term is negligible.)
    """
    return float(sigma_max) * randn_per_sample(shape, generators, dtype, device)


def _prepare(x: Tensor, sigmas: Tensor, generators: Generators = None) -> tuple[Tensor, list[float]]:
    """Validate the grid and batch; return sigmas as x's dtype/device and as Python floats (for control flow)."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 values (start and end), got {shape}")
    values = sigmas.detach().double().cpu().tolist()
    shown = [round(v, 6) for v in values[:6]] + (["..."] if len(values) > 6 else [])
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"sigmas must be finite and >= 0, got {shown}")
    if not all(a > b for a, b in zip(values, values[1:])):
        raise ValueError(
            f"sigmas must be strictly descending (noisy first, sampling runs from sigmas[0] to sigmas[-1]), got "
            f"{shown}; use atlas.diffusion.schedules.get_sigmas(...) or sigmas.flip(0)"
        )
    _check_generators(generators, x.shape[0])
    return sigmas.to(dtype=x.dtype, device=x.device), values


def _call(denoise: DenoiseFn, x: Tensor, sigma: Tensor) -> Tensor:
    denoised = denoise(x, sigma.expand(x.shape[0]))
    if denoised.shape != x.shape:
        raise ValueError(f"denoise returned shape {tuple(denoised.shape)} for x of shape {tuple(x.shape)}")
    return denoised


def _report(callback, index, total, x, sigma, sigma_next, denoised) -> None:
    if callback is not None:
        callback(StepInfo(index, total, x, sigma, sigma_next, denoised))


def sample_euler(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, callback=None) -> Tensor:
    """Euler's method on the probability-flow ODE ``dx/dsigma = (x - D) / sigma`` (Karras et al. 2022, Eq. 4).

    One denoiser call per step.  Returns the state at ``sigmas[-1]``, shape of x.
    """
    sigmas, _ = _prepare(x, sigmas)
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _call(denoise, x, sigmas[i])
        _report(callback, i, total, x, sigmas[i], sigmas[i + 1], denoised)
        d = (x - denoised) / sigmas[i]
        x = x + (sigmas[i + 1] - sigmas[i]) * d
    return x


def sample_heun(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, s_churn: float = 0.0, s_tmin: float = 0.0,
    s_tmax: float = float("inf"), s_noise: float = 1.0, generators: Generators = None, callback=None,
) -> Tensor:
    """Heun's 2nd-order method with optional churn: EDM Algorithm 2 (Karras et al. 2022).

    For ``sigmas[i]`` in [s_tmin, s_tmax] the state is first pushed up to ``sigma_hat = sigma (1 + gamma)``,
    ``gamma = min(s_churn / N, sqrt(2) - 1)``, by adding noise of std ``s_noise sqrt(sigma_hat^2 - sigma^2)``.
    The step to sigma = 0 is a plain Euler step.  Denoiser calls: 2 per step, 1 for a step to 0.
    """
    sigmas, values = _prepare(x, sigmas, generators)
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / total, math.sqrt(2.0) - 1.0) if s_tmin <= values[i] <= s_tmax else 0.0
        if gamma > 0:
            sigma_hat = sigma * (1.0 + gamma)
            noise = randn_per_sample(x.shape, generators, x.dtype, x.device)
            x = x + s_noise * torch.sqrt(sigma_hat**2 - sigma**2) * noise
        else:
            sigma_hat = sigma
        denoised = _call(denoise, x, sigma_hat)
        _report(callback, i, total, x, sigma_hat, sigma_next, denoised)
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if values[i + 1] > 0:
            d_prime = (x_next - _call(denoise, x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def sample_flow_heun(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, callback=None) -> Tensor:
    """Heun's method in the rectified-flow time ``t = sigma / (1 + sigma)`` (Liu et al. 2023; Esser et al. 2024).

    The state ``x_t = x / (1 + sigma) = (1 - t) x0 + t noise`` follows ``dx_t/dt = u = (x_t - D) / t``; each
    step averages u at t and at the Euler prediction at t', the step to t = 0 is a plain Euler step.  Its Euler
    predictor is exactly :func:`sample_euler` (Euler steps coincide in sigma and in t), but the trapezoid
    differs: in sigma, :func:`sample_heun` weights the change of D by ``(sigma - sigma') / sigma'``, which is
    ~1000 for a flow grid's first step from sigma ~ 1000 (t ~ 0.999), where this sampler weights it by
    ``(t - t') / t' <= 1/t'``.  Use it with :func:`atlas.diffusion.schedules.flow_sigmas`.  Denoiser calls:
    2 per step, 1 for a step to 0.  Returns the state at ``sigmas[-1]`` in the sigma convention.
    """
    sigmas, values = _prepare(x, sigmas)
    total = len(sigmas) - 1
    t = sigmas / (1 + sigmas)
    x_t = x / (1 + sigmas[0])
    for i in range(total):
        denoised = _call(denoise, x_t * (1 + sigmas[i]), sigmas[i])
        _report(callback, i, total, x_t * (1 + sigmas[i]), sigmas[i], sigmas[i + 1], denoised)
        velocity = (x_t - denoised) / t[i]
        x_next = x_t + (t[i + 1] - t[i]) * velocity
        if values[i + 1] > 0:
            velocity_next = (x_next - _call(denoise, x_next * (1 + sigmas[i + 1]), sigmas[i + 1])) / t[i + 1]
            x_next = x_t + (t[i + 1] - t[i]) * (0.5 * velocity + 0.5 * velocity_next)
        x_t = x_next
    return x_t * (1 + sigmas[-1])


def sample_dpmpp_2m(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, callback=None) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++", Algorithm 2), in this convention.

    With ``lambda = -log sigma`` and ``h = lambda_next - lambda``, the exact solution of the ODE with the data
    prediction held at ``D'`` is ``x_next = (sigma_next / sigma) x - expm1(-h) D'``.  The multistep estimate is
    ``D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_{i-1} / h``; the first step and the step to sigma = 0
    (h = inf, where the update is x_next = D_i) are first order.  One denoiser call per step.
    """
    # The SDE solver with eta = 0 is exactly this ODE solver: one implementation serves both.
    return sample_dpmpp_2m_sde(denoise, x, sigmas, eta=0.0, callback=callback)


def _phis(z: float, count: int) -> list[float]:
    """``[phi_1(z), ..., phi_count(z)]``, ``phi_k(z) = int_0^1 e^((1 - t) z) t^(k-1) / (k-1)! dt``.

    ``phi_0 = e^z`` and ``phi_(k+1)(z) = (phi_k(z) - 1/k!) / z``.  That upward recursion cancels for small |z|,
    so there ``phi_count`` comes from its Taylor series ``sum_j z^j / (j + count)!`` and the others from the
    stable downward form ``phi_k = 1/k! + z phi_(k+1)``.
    """
    if abs(z) >= 1.0:
        values, value = [], math.exp(z)
        for k in range(count):
            value = (value - 1.0 / math.factorial(k)) / z
            values.append(value)
        return values
    term = total = 1.0 / math.factorial(count)
    j = 0
    while abs(term) > 1e-18 * abs(total):
        j += 1
        term *= z / (j + count)
        total += term
    values = [total]
    for k in range(count - 1, 0, -1):
        values.append(1.0 / math.factorial(k) + z * values[-1])
    return values[::-1]


def _solve_small(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the tiny (n <= 3) UniPC systems, in Python floats."""
    n = len(rhs)
    a = [row[:] + [b] for row, b in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= f * a[col][c]
    out = [0.0] * n
    for r in reversed(range(n)):
        out[r] = (a[r][n] - sum(a[r][c] * out[c] for c in range(r + 1, n))) / a[r][r]
    return out


def _unipc_coefficients(h: float, ratios: list[float]) -> list[float]:
    """UniPC's ``a_m`` for the differences at ``r_m = ratios[m]``: solve ``sum_m a_m r_m^(k-1) = g_k(h)``.

    ``g_k(h) = k! h phi_(k+1)(-h) / B(h)`` with ``B(h) = -expm1(-h)``, k = 1..len(ratios).  With a single
    unknown the paper takes the h -> 0 limit ``a_1 = g_1(0) = 1/2`` (an O(h) change of a coefficient that
    multiplies an O(h) difference, so the order is kept).
    """
    if len(ratios) == 1:
        return [0.5]
    phis = _phis(-h, len(ratios) + 1)
    b_h = h * phis[0]  # = -expm1(-h)
    rhs = [math.factorial(k) * h * phis[k] / b_h for k in range(1, len(ratios) + 1)]
    matrix = [[r**k for r in ratios] for k in range(len(ratios))]
    return _solve_small(matrix, rhs)


def _unipc_update(x: Tensor, ratio: float, b_h: float, base: Tensor, terms: list[tuple[float, Tensor]]) -> Tensor:
    """``ratio x + b_h (base + sum_m c_m (D_m - base))`` with the coefficients folded so that each tensor is
    touched once: ``ratio x + b_h (1 - sum c_m) base + sum b_h c_m D_m``."""
    out = x * ratio
    out.add_(base, alpha=b_h * (1.0 - sum(c for c, _ in terms)))
    for c, d in terms:
        out.add_(d, alpha=b_h * c)
    return out


def sample_unipc(denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, order: int = 2, callback=None) -> Tensor:
    """UniPC, Zhao et al. 2023 ("UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
    Models", Sec. 3), multistep, data-prediction form with ``B(h) = expm1`` ("bh2"), in this convention.

    With ``lambda = -log sigma``, ``h_i = lambda_(i+1) - lambda_i``, ``D_j = D(x~_j, sigma_j)`` and
    ``B(h) = -expm1(-h) = 1 - sigma_(i+1) / sigma_i`` (the data-prediction B(h) = e^h - 1 taken at -h; the sign
    is folded in), UniP-p, the predictor of order p, is::

        x~_(i+1) = (sigma_(i+1) / sigma_i) x_i + B(h_i) [D_i + sum_(m=1)^(p-1) a_m (D_(i-m) - D_i) / r_m]
        r_m = (lambda_(i-m) - lambda_i) / h_i

    and UniC-p, the corrector, redoes the same step once ``D_(i+1)`` is known, with one more difference
    (``r_p = 1``), raising the order to p + 1::

        x_(i+1) = (sigma_(i+1) / sigma_i) x_i + B(h_i) [D_i + sum_(m=1)^(p-1) a'_m (D_(i-m) - D_i) / r_m
                                                        + a'_p (D_(i+1) - D_i)]

    The coefficients solve ``sum_m a_m r_m^(k-1) = k! h phi_(k+1)(-h) / B(h)``, k = 1 .. (number of unknowns),
    ``phi_(k+1)(z) = (phi_k(z) - 1/k!) / z``, ``phi_1(z) = expm1(z) / z``; with a single unknown a = 1/2 (so
    UniP-2 is exactly DPM-Solver++(2M)).  ``D_(i+1)`` is evaluated at the predictor ``x~_(i+1)`` and reused by
    the next step, so there is one denoiser call per step; the corrector is skipped after the last step (there
    is no evaluation there) and the step to sigma = 0 returns ``D_i`` (h = inf).  Step i uses order
    ``min(order, i + 1)``: the first steps have too little history.  ``order`` is 1, 2 or 3; unlike diffusers'
    ``lower_order_final`` the order is not lowered on the last steps (the step to 0 is exact anyway), which
    matches diffusers exactly for order 2.  Order 3 extrapolates over the large late steps of a short Karras
    grid and is unstable at ~5 steps (benchmarks/sampler_accuracy.py); it pays from ~10 steps.
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(
            f"unipc order must be 1, 2 or 3 (the predictor's order; the corrector adds one), got {order!r}; "
            "order=2 is the usual choice for guided sampling, order=3 for unguided"
        )
    sigmas, values = _prepare(x, sigmas)
    total = len(sigmas) - 1
    lambdas = [-math.log(v) if v > 0 else math.inf for v in values]
    history: list[Tensor] = []  # denoised values at steps i, i-1, ... (newest first), at most `order`
    x_prev, step_prev = None, None  # corrected state x_i and (h, ratios) of the step that left it
    for i in range(total):
        denoised = _call(denoise, x, sigmas[i])
        _report(callback, i, total, x, sigmas[i], sigmas[i + 1], denoised)
        if values[i + 1] == 0:
            return denoised
        if step_prev is not None:  # UniC: correct x_i with D_i, which was evaluated at the predictor x~_i
            h, ratios = step_prev
            coefficients = _unipc_coefficients(h, ratios + [1.0])
            terms = [(a / r, d) for a, r, d in zip(coefficients, ratios, history[1:])]
            terms.append((coefficients[-1], denoised))
            x = _unipc_update(x_prev, values[i] / values[i - 1], -math.expm1(-h), history[0], terms)
        history.insert(0, denoised)
        del history[order:]
        h = lambdas[i + 1] - lambdas[i]
        p = min(order, i + 1)
        ratios = [(lambdas[i - m] - lambdas[i]) / h for m in range(1, p)]
        terms = []
        if ratios:
            coefficients = _unipc_coefficients(h, ratios)
            terms = [(a / r, d) for a, r, d in zip(coefficients, ratios, history[1:])]
        x_prev, step_prev = x, (h, ratios)
        x = _unipc_update(x, values[i + 1] / values[i], -math.expm1(-h), denoised, terms)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic part and fresh noise: ``(sigma_down, sigma_up)``.

    The DDPM posterior q(x_next | x, x0) (Ho et al. 2020, Eq. 7) in this convention has mean
    ``x0 + sigma_next^2 / sigma * eps`` and variance ``sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2``.
    ``sigma_up = min(sigma_next, eta * sqrt(variance))`` and ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``,
    so that ``sigma_down^2 + sigma_up^2 = sigma_next^2``; eta = 1 is DDPM, eta = 0 the ODE.
    """
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler_ancestral(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
    generators: Generators = None, callback=None,
) -> Tensor:
    """Ancestral sampling: an Euler step down to ``sigma_down`` then fresh noise of std ``sigma_up``.

    See :func:`ancestral_step`; with eta = 1 each step samples the DDPM posterior with the predicted x0
    (Ho et al. 2020).  One denoiser call per step.
    """
    sigmas, values = _prepare(x, sigmas, generators)
    total = len(sigmas) - 1
    for i in range(total):
        denoised = _call(denoise, x, sigmas[i])
        _report(callback, i, total, x, sigmas[i], sigmas[i + 1], denoised)
        sigma_down, sigma_up = ancestral_step(values[i], values[i + 1], eta)
        d = (x - denoised) / sigmas[i]
        x = x + (sigma_down - values[i]) * d
        if sigma_up > 0:
            x = x + s_noise * sigma_up * randn_per_sample(x.shape, generators, x.dtype, x.device)
    return x


def sample_dpmpp_2m_sde(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, eta: float = 1.0, s_noise: float = 1.0,
    generators: Generators = None, callback=None,
) -> Tensor:
    """SDE-DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++", Sec. 4 / Appendix), in this convention.

    Solving the reverse SDE exactly in its linear part over h = lambda_next - lambda (lambda = -log sigma)::

        x_next = (sigma_next / sigma) e^(-eta h) x + (1 - e^(-(1 + eta) h)) D' + sigma_next sqrt(1 - e^(-2 eta h)) z

    eta = 1 is the paper's SDE solver, eta = 0 reduces to :func:`sample_dpmpp_2m`.  ``D'`` is the same
    two-step estimate as there; the step to sigma = 0 returns D_i.  One denoiser call per step.
    """
    sigmas, values = _prepare(x, sigmas, generators)
    total = len(sigmas) - 1
    denoised_prev, h_prev = None, None
    for i in range(total):
        denoised = _call(denoise, x, sigmas[i])
        _report(callback, i, total, x, sigmas[i], sigmas[i + 1], denoised)
        if values[i + 1] == 0:
            x = denoised
            break
        h = math.log(values[i] / values[i + 1])
        if denoised_prev is None:
            denoised_hat = denoised
        else:
            r = h_prev / h
            denoised_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * denoised_prev
        x = (values[i + 1] / values[i]) * math.exp(-eta * h) * x - math.expm1(-(1 + eta) * h) * denoised_hat
        if eta > 0:
            noise = randn_per_sample(x.shape, generators, x.dtype, x.device)
            x = x + s_noise * values[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)) * noise
        denoised_prev, h_prev = denoised, h
    return x


def sample_ddim(
    denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, generators: Generators = None,
    callback=None,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, Eq. 12) in VP form, mapped back to this convention.

    With ``a = alpha_bar(sigma)``, ``a' = alpha_bar(sigma_next)`` (:func:`convention.sigma_to_alpha_bar`) and
    ``eps = (x - D) / sigma``::

        sigma_eta = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')
        x_vp_next = sqrt(a') D + sqrt(1 - a' - sigma_eta^2) eps + sigma_eta z,   x_next = from_vp(x_vp_next)

    eta = 0 is deterministic (and equals :func:`sample_euler` exactly), eta = 1 is DDPM.
    """
    sigmas, values = _prepare(x, sigmas, generators)
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _call(denoise, x, sigma)
        _report(callback, i, total, x, sigma, sigma_next, denoised)
        eps = (x - denoised) / sigma
        alpha_bar = convention.sigma_to_alpha_bar(sigma)
        alpha_bar_next = convention.sigma_to_alpha_bar(sigma_next)
        # 1 - alpha_bar = sigma^2 alpha_bar and 1 - a / a' = (sigma^2 - sigma_next^2) a, written so to avoid the
        # cancellation of 1 - alpha_bar in float32 at small sigma.
        one_minus = sigma**2 * alpha_bar
        one_minus_next = sigma_next**2 * alpha_bar_next
        sigma_eta_sq = eta**2 * one_minus_next / one_minus * (sigma**2 - sigma_next**2) * alpha_bar
        x_vp_next = (
            torch.sqrt(alpha_bar_next) * denoised + torch.sqrt((one_minus_next - sigma_eta_sq).clamp(min=0)) * eps
        )
        if eta > 0 and values[i + 1] > 0:
            x_vp_next = x_vp_next + sigma_eta_sq.sqrt() * randn_per_sample(x.shape, generators, x.dtype, x.device)
        x = convention.from_vp(x_vp_next, sigma_next.expand(x.shape[0]))
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "flow_heun": sample_flow_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "ddim": sample_ddim,
    "unipc": sample_unipc,
}


def sample(
    name: str, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *, final_denoise: bool = False,
    generators: Generators = None, callback=None, **options,
) -> Tensor:
    """Run the sampler called ``name`` (a key of :data:`SAMPLERS`) with its ``options`` (e.g. ``eta=0.5``).

    ``final_denoise=True`` replaces the result by one more denoiser call ``D(x, sigmas[-1])`` when the grid
    ends at ``sigmas[-1] > 0`` (a truncated grid); when it ends at 0 the sampler already returns clean data and
    nothing extra is done.  ``generators`` go to the stochastic samplers (deterministic ones draw nothing).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names are {sorted(SAMPLERS)}")
    fn = SAMPLERS[name]
    params = inspect.signature(fn).parameters
    allowed = {k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"callback", "generators"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"sampler {name!r} got unknown option(s) {unknown}; its options are {sorted(allowed)}")
    _check_generators(generators, x.shape[0])
    if "generators" in params:
        options["generators"] = generators
    x = fn(denoise, x, sigmas, callback=callback, **options)
    if final_denoise and float(sigmas[-1]) > 0:
        x = _call(denoise, x, sigmas[-1].to(dtype=x.dtype, device=x.device))
    return x
