"""Sinkhorn's scaling iterations on any :class:`~atlas.transport.kernels.KernelOperator` (Cuturi 2013).

With the Gibbs kernel ``K`` (n x m, possibly approximated: RFF, Nystrom) and marginals ``a``, ``b`` the plan is
``pi = diag(u) K diag(v)`` with ``u = a / (K v)`` and ``v = b / (K^T u)`` alternated until
``||pi 1 - a||_1 + ||pi^T 1 - b||_1 <= tol``.  Only ``apply``/``apply_T`` are used, so the cost per iteration is
the operator's: O((n + m) r) for a rank-r factorisation instead of O(nm) (Altschuler et al. 2019, "Massively
scalable Sinkhorn distances via the Nystrom method"; Scetbon & Cuturi 2020 for the positive-feature variant).

Limits, stated rather than hidden: the iterations run in the plain (not log) domain, so they need ``K v > 0``
and ``K^T u > 0`` throughout.  An approximation whose entries can be negative (RFF cosine features, Nystrom) or
an eps so small that ``exp(-C / eps)`` underflows breaks that; the solver then raises and names the fix (the
exact log-domain :func:`atlas.transport.entropic.sinkhorn`).  Approximate kernels are for large eps relative to
the squared distances, where the kernel entries are large compared with the approximation error.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .fft import FFTKernel
from .kernels import KernelOperator

__all__ = ["KernelSinkhornResult", "kernel_sinkhorn"]


@dataclass(frozen=True)
class KernelSinkhornResult:
    """Scalings of the plan ``pi = diag(u) K diag(v)`` on ``kernel``.

    Attributes:
        u: (n,) row scaling.  v: (m,) column scaling.
        kernel: the operator the plan lives on.
        n_iter: iterations run.  marginal_error: ``||pi 1 - a||_1 + ||pi^T 1 - b||_1`` at the end.
        converged: whether ``marginal_error <= tol``.
    """

    u: Tensor
    v: Tensor
    kernel: KernelOperator
    n_iter: int
    marginal_error: float
    converged: bool

    def plan(self) -> Tensor:
        """The dense (n, m) plan, from ``kernel.pairwise()`` (O(nm) memory)."""
        return self.u[:, None] * self.kernel.pairwise() * self.v[None, :]

    def apply_plan(self, w: Tensor) -> Tensor:
        """``pi w`` for w of shape (m,) or (m, k), in the operator's cost."""
        scaled = self.v * w if w.ndim == 1 else self.v[:, None] * w
        out = self.kernel.apply(scaled)
        return self.u * out if out.ndim == 1 else self.u[:, None] * out

    def conditional_rows(self) -> Tensor:
        """``P(j | i) = pi_ij / a_i``, shape (n, m), rows summing to 1; raises if an entry is negative."""
        rows = self.kernel.pairwise() * self.v[None, :]
        if bool((rows < 0).any()):
            raise ValueError(
                f"the {type(self.kernel).__name__} approximation has negative plan entries (min "
                f"{float(rows.min()):.3g}), which cannot be sampled; use the exact kernel (solver_type='direct') "
                "or a larger eps"
            )
        return rows / rows.sum(dim=1, keepdim=True)


def _uniform(n: int, like: Tensor) -> Tensor:
    return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)


def _check_marginal(w: Optional[Tensor], n: int, name: str, like: Tensor) -> Tensor:
    if w is None:
        return _uniform(n, like)
    if w.shape != (n,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be a finite non-negative vector of shape ({n},), got shape {tuple(w.shape)}")
    return w.to(dtype=like.dtype, device=like.device)


def _positive(values: Tensor, what: str, kernel: KernelOperator, n_iter: int) -> None:
    if not (bool((values > 0).all()) and bool(torch.isfinite(values).all())):
        raise ValueError(
            f"kernel_sinkhorn: {what} has non-positive or non-finite entries after {n_iter} iterations on a "
            f"{type(kernel).__name__} (an approximation with negative entries, or exp(-C/eps) underflowing); the "
            "plain-domain iterations cannot continue. Use the exact log-domain solver "
            "(atlas.transport.sinkhorn, solver_type='direct'), more features/landmarks, or a larger eps"
        )


def kernel_sinkhorn(
    kernel: KernelOperator,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> KernelSinkhornResult:
    """Entropic OT plan on ``kernel`` (shape (n, m)) between marginals ``a`` (n,) and ``b`` (m,).

    Args:
        kernel: any operator of :mod:`atlas.transport` (its eps is the regularisation).
        a, b: non-negative weights with equal totals (relative 1e-5); uniform when None.
        max_iter: iteration cap (pairs of u/v updates); tol: target marginal error (L1, both sides).

    Returns:
        :class:`KernelSinkhornResult`; ``converged=False`` with a RuntimeWarning when ``max_iter`` runs out.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}; 1000 is typical")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}; 1e-6 is typical")
    if isinstance(kernel, FFTKernel):
        raise ValueError("kernel_sinkhorn works on point-cloud operators (flat vectors); for histograms on a grid use "
                         "atlas.transport.grid_sinkhorn, which runs on the FFTKernel")
    n, m = kernel.shape
    like = torch.empty(0, dtype=kernel.dtype, device=kernel.device)
    a = _check_marginal(a, n, "a", like)
    b = _check_marginal(b, m, "b", like)
    total_a, total_b = float(a.sum()), float(b.sum())
    if not math.isclose(total_a, total_b, rel_tol=1e-5):
        raise ValueError(f"a and b must have equal total mass, got {total_a:.6g} and {total_b:.6g}")
    b = b * (total_a / total_b)
    v = torch.ones(m, dtype=kernel.dtype, device=kernel.device)
    err, n_iter = math.inf, 0
    while n_iter < max_iter:
        kv = kernel.apply(v)
        _positive(kv, "K v", kernel, n_iter)
        u = a / kv
        ktu = kernel.apply_T(u)
        _positive(ktu, "K^T u", kernel, n_iter)
        n_iter += 1
        err = float((v * ktu - b).abs().sum())  # rows are exact right after the u update
        v = b / ktu
        if err <= tol:
            break
    else:
        warnings.warn(f"kernel_sinkhorn did not converge: marginal error {err:.3g} > tol {tol:.3g} after {n_iter} "
                      "iterations; raise max_iter or eps", RuntimeWarning, stacklevel=2)
    # After the last v update the columns are exact and the rows are off by the last error (or less).
    final = float((u * kernel.apply(v) - a).abs().sum())
    return KernelSinkhornResult(u=u, v=v, kernel=kernel, n_iter=n_iter, marginal_error=final,
                                converged=final <= tol)
