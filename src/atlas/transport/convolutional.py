"""Convolutional Sinkhorn: entropic OT between histograms on one regular 1-, 2- or 3-D grid.

The problem and the conventions (cost, plan, potentials, stopping rule) are those of
:mod:`atlas.transport.entropic`; only the kernel products change: the Gibbs kernel of a regular grid factorises over
its axes (Solomon et al. 2015, "Convolutional Wasserstein distances"), so it is applied by FFT convolution or by
one small 1-D matrix per axis, and never formed as an N x N matrix.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .entropic import (SinkhornResult, _anneal, _balanced, _check_solver_args, _check_weights, _eps_schedule,
                       _finish, _log_stage, _mean_sq_distance, _Relaxation)
from .fft import FFTKernel

__all__ = ["FFT_MAX_RANGE", "FFT_MIN_SIZE", "GRID_METHODS", "MATMUL_MAX_RANGE", "grid_sinkhorn"]

# grid_sinkhorn(method="auto"), float64 limits on the kernel range R = sum_a (spacing_a (n_a - 1))^2 / eps:
GRID_METHODS = ("auto", "fft", "matmul", "log")
FFT_MAX_RANGE = 40.0  # FFT scaling iterations were accurate to 1e-9 up to R ~ 70 (32^2 to 512^2 grids)
FFT_MIN_SIZE = 1024  # points on the longest axis from which an FFT beat 1-D matrix products (2-core CPU)
MATMUL_MAX_RANGE = 600.0  # scalings ~e^(potential spread / eps) <= ~e^R stay below overflow (e^709)


def _grid_scaling_stage(apply, eps: float, a: Tensor, b: Tensor, tol: float, budget: int):
    """Over-relaxed scaling iterations ``u = a / K v``, ``v = b / K u`` (K symmetric, ``apply(w) = K w`` on
    fields; Solomon et al. 2015).  ``f = eps log(u / a)``, ``g = eps log(v / b)``, extended to empty
    cells by the exact update (2), ``-eps log K v`` and ``-eps log K u``.  Returns (f, g, error, iterations),
    or None as soon as a product ``K w`` is not strictly positive and finite (underflow or FFT round-off)."""
    u, v = a.clone(), b.clone()
    relax, omega, n_iter = _Relaxation(), 1.0, 0
    while True:
        t = apply(u)
        v = v * torch.where(b > 0, v * t / b, 1.0).pow_(-omega)  # v = b / t for omega = 1
        s = apply(v)
        if not (bool((s > 0).all()) and bool((t > 0).all()) and bool(torch.isfinite(s).all())):
            return None
        err = float((u * s - a).abs().sum() + (v * t - b).abs().sum())
        n_iter += 1
        if err <= tol or n_iter >= budget:
            f = torch.where(a > 0, eps * (u / a).log(), -eps * s.log())
            g = torch.where(b > 0, eps * (v / b).log(), -eps * t.log())
            return f, g, err, n_iter
        omega = relax.update(err)
        u = u * torch.where(a > 0, u * s / a, 1.0).pow_(-omega)


def _grid_method(method: str, kernel_range: float, grid_shape: tuple, dtype: torch.dtype) -> str:
    """The rule of ``method="auto"`` (see :func:`grid_sinkhorn`), with the float64 limits scaled to ``dtype``."""
    if method != "auto":
        return method
    info, info64 = torch.finfo(dtype), torch.finfo(torch.float64)
    if max(grid_shape) >= FFT_MIN_SIZE and kernel_range <= FFT_MAX_RANGE * math.log(info.eps) / math.log(info64.eps):
        return "fft"
    if kernel_range <= MATMUL_MAX_RANGE * math.log(info.max) / math.log(info64.max):
        return "matmul"
    return "log"


def grid_sinkhorn(
    a: Tensor,
    b: Tensor,
    *,
    eps: float,
    spacing: Union[float, Sequence[float]] = 1.0,
    method: str = "auto",
    max_iter: int = 10_000,
    tol: float = 1e-9,
    eps_scaling: Optional[float] = 0.25,
    dtype: Optional[torch.dtype] = None,
) -> SinkhornResult:
    """Entropic OT between two histograms on one regular 1-, 2- or 3-D grid (convolutional Sinkhorn).

    The points are ``p_i = i * spacing`` (row-major), the cost ``||p_i - p_j||^2`` with no wrap-around, so the
    answer is that of :func:`sinkhorn` on the grid points.  The Gibbs kernel factorises over the axes
    (Solomon et al. 2015, "Convolutional Wasserstein distances") and is never formed as an N x N matrix.  With
    the kernel range ``R = sum_a (spacing_a (n_a - 1))^2 / eps`` (the smallest kernel entry is ``e^-R``):

    * ``"fft"``: scaling iterations with :meth:`FFTKernel.apply <atlas.transport.fft.FFTKernel.apply>`,
      O(N log n) per iteration.  FFT round-off is relative to the largest entry, so it stays accurate only for
      moderate R (to 1e-9 up to R ~ 70 in float64, stalling from ~80, on 32^2 to 512^2 grids).
    * ``"matmul"``: the same iterations with each axis' exact 1-D kernel matrix (``FFTKernel((n_a,)).pairwise()``),
      O(N sum_a n_a) per iteration but BLAS-fast, and relatively accurate (sums of positive terms) until the
      scalings ``~e^R`` overflow.  Faster than the FFT below ~1000 points per axis on a CPU.
    * ``"log"``: the log-domain updates (2) with the exact separable log-sum-exp
      (:meth:`FFTKernel.log_apply <atlas.transport.fft.FFTKernel.log_apply>`), stable at any eps, with
      eps-scaling; O(N sum_a n_a) ``exp`` per iteration (slowest).
    * ``"auto"``: ``"fft"`` if some axis has >= ``FFT_MIN_SIZE`` points and ``R <= FFT_MAX_RANGE``, else
      ``"matmul"`` if ``R <= MATMUL_MAX_RANGE``, else ``"log"`` (limits for float64, scaled for float32).
      If a scaling product turns non-positive or non-finite the solve restarts with ``"log"`` and a
      RuntimeWarning; ``result.method`` says which ran.  eps-scaling applies to ``"log"`` only.

    Args:
        a, b: non-negative masses of shape ``grid_shape`` (same shape, equal totals).
        eps: regularisation in squared units of ``spacing``.  spacing: one number or one per axis.
        method, max_iter, tol, eps_scaling, dtype: as above and in :func:`sinkhorn`.

    Returns:
        :class:`SinkhornResult` over the flattened grid: ``x = y`` = grid points (N, D), ``f``, ``g``, ``a``,
        ``b`` of shape (N,) (reshape with ``grid_shape``); ``method`` is ``"fft"``, ``"matmul"`` or ``"log"``.
    """
    dtype = _check_solver_args(eps, eps_scaling, max_iter, tol, dtype)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape or not 1 <= a.ndim <= 3:
        raise ValueError(f"a and b must be tensors of the same grid shape with 1 to 3 axes, got "
                         f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")
    if method not in GRID_METHODS:
        raise ValueError(f"method must be one of {GRID_METHODS}, got {method!r}")
    grid_shape, eps = tuple(a.shape), float(eps)
    flat_a = _check_weights(a.reshape(-1), a.numel(), "a", torch.empty(0, dtype=dtype, device=a.device))
    flat_b = _balanced(flat_a, _check_weights(b.reshape(-1), b.numel(), "b", flat_a))
    a, b = flat_a.view(grid_shape), flat_b.view(grid_shape)
    kernel = FFTKernel(grid_shape, eps=eps, spacing=spacing, dtype=dtype, device=a.device)
    points = kernel.points()
    kernel_range = sum((s * (n - 1)) ** 2 for s, n in zip(kernel.spacing, grid_shape)) / eps
    method = _grid_method(method, kernel_range, grid_shape, dtype)
    if method in ("fft", "matmul"):
        factors = [FFTKernel((n,), eps=eps, spacing=s, dtype=dtype, device=a.device).pairwise()
                   for n, s in zip(grid_shape, kernel.spacing)] if method == "matmul" else []

        def apply(field):
            if method == "fft":
                return kernel.apply(field)
            for axis, factor in enumerate(factors):  # symmetric 1-D kernels, one axis at a time
                field = (field.movedim(axis, -1) @ factor).movedim(-1, axis)
            return field

        solved = _grid_scaling_stage(apply, eps, a, b, tol, max_iter)
        if solved is not None:
            f, g, err, n_iter = solved
            return _finish(f.reshape(-1), g.reshape(-1), eps, n_iter, err, tol, points, points, flat_a, flat_b, method)
        warnings.warn(f"grid_sinkhorn: the {method} scaling iterations lost positivity at eps={eps:.3g} (kernel "
                      f"range R={kernel_range:.3g}); solving in the log domain instead", RuntimeWarning, stacklevel=2)

    def stage(f, g, eps_k, stage_tol, budget):
        op = FFTKernel(grid_shape, eps=eps_k, spacing=spacing, dtype=dtype, device=a.device)
        softmin = lambda h: -eps_k * op.log_apply(h.view(grid_shape)).reshape(-1)  # noqa: E731 - K symmetric
        return _log_stage(softmin, softmin, flat_a, flat_b, f, g, eps_k, stage_tol, budget)

    stages = _eps_schedule(eps, _mean_sq_distance(points, points, flat_a, flat_b), eps_scaling)
    f, g, err, n_iter = _anneal(stage, points.new_zeros(len(points)), points.new_zeros(len(points)), stages, tol,
                                max_iter)
    return _finish(f, g, eps, n_iter, err, tol, points, points, flat_a, flat_b, "log")
