"""Entropic optimal transport between weighted point clouds (Sinkhorn, stabilised, with eps-scaling).

For point clouds ``(x, a)`` and ``(y, b)`` with the cost ``C_ij = ||x_i - y_j||^2`` (POT's ``"sqeuclidean"``;
Gibbs kernel ``exp(-C / eps)``, the convention of :mod:`atlas.transport.kernels`) we solve
(Cuturi 2013; Peyre & Cuturi 2019, "Computational Optimal Transport", ch. 4)::

    OT_eps(a, b) = min_{pi >= 0, pi 1 = a, pi^T 1 = b}  <pi, C> + eps KL(pi | a b^T).

Its dual potentials ``f`` (n,), ``g`` (m,) give the plan (the convention of every result in this module)::

    pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)                                               (1)

(the ``pi_ij = exp((F_i + G_j - C_ij) / eps)`` form is the same plan with ``F = f + eps log a``,
``G = g + eps log b``), and Sinkhorn's iterations are the exact alternate maximisations of the dual
(Peyre & Cuturi 2019, ch. 4)::

    f_i = -eps log sum_j b_j exp((g_j - C_ij) / eps),   g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps).  (2)

Algorithm (Schmitzer 2019, "Stabilized sparse scaling algorithms for entropy regularized transport
problems"): the potentials are split as ``f + eps log u`` and ``g + eps log v``; the
stabilised kernel ``K_ij = exp((f_i + g_j - C_ij) / eps)`` is stored, and the scaling updates
``u = 1 / K(b v)``, ``v = 1 / K^T(a u)`` (two matrix-vector products per iteration, no ``exp``) run until
``|log u|`` or ``|log v|`` exceeds ``_ABSORB``; then they are absorbed into ``(f, g)`` and ``K`` is rebuilt,
so nothing overflows at any eps.  Both half-steps are over-relaxed with an adaptive factor (see
:class:`_Relaxation`).  eps-scaling runs stages ``eps_k = max(eps, eps_0 q^k)``, ``q = eps_scaling``, from
``eps_0`` = the mean squared distance, each warm-started from the previous one.  When ``K`` would exceed
``max_dense_bytes`` the log-domain updates (2) run instead, on row blocks of ``C`` computed on the fly
(memory O(block * m), never n x m; one ``exp`` per entry per half-step, so several times slower).

Stopping: ``marginal_error = ||pi 1 - a||_1 + ||pi^T 1 - b||_1`` of the returned plan (POT's ``stopThr`` is
the L2 norm of one side; L1 >= L2).  :func:`atlas.transport.convolutional.grid_sinkhorn` solves the
same problem between histograms on a regular grid and returns the same :class:`SinkhornResult`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .kernels import squared_distances

__all__ = ["EntropicCost", "SinkhornResult", "sinkhorn"]

_ABSORB = 25.0  # absorb scalings into the potentials once |log u| > 25: exp(+-25) is safe even in float32
_STAGE_TOL = 1e-3  # marginal error at which an intermediate eps-scaling stage hands over to the next
_BLOCK_BYTES = 1 << 26  # 64 MiB of temporaries per block of rows
_WINDOW = 10  # iterations per estimate of the convergence rate (over-relaxation)
_OMEGA_MAX = 1.95


class EntropicCost(NamedTuple):
    """Costs of a Sinkhorn plan (0-d tensors).

    ``transport = <pi, C>``; ``primal = <pi, C> + eps KL(pi | a b^T)`` (generalised KL,
    ``sum pi log(pi / ab) - sum pi + sum ab``); ``dual = <a, f> + <b, g> - eps (sum pi - sum ab)``.
    ``primal == dual`` at convergence (strong duality; Peyre & Cuturi 2019, ch. 4).
    """

    transport: Tensor
    primal: Tensor
    dual: Tensor


def _rows_per_block(m: int, itemsize: int) -> int:
    return max(1, _BLOCK_BYTES // max(1, m * itemsize))


def _log_weights(w: Tensor) -> Tensor:
    return torch.where(w > 0, w.log(), torch.full_like(w, -math.inf))


def _softmin(x: Tensor, y: Tensor, h: Tensor, eps: float) -> Tensor:
    """``-eps log sum_j exp(h_j - C(x_i, y_j) / eps)`` for every i, blockwise over rows. Shape (n,)."""
    out = x.new_empty(x.shape[0])
    step = _rows_per_block(y.shape[0], x.element_size())
    for start in range(0, x.shape[0], step):
        z = squared_distances(x[start:start + step], y).div_(-eps).add_(h)
        out[start:start + step] = torch.logsumexp(z, dim=1)
    return out.mul_(-eps)


def _gibbs(x: Tensor, y: Tensor, f: Tensor, g: Tensor, eps: float, out: Tensor) -> Tensor:
    """Stabilised kernel ``K_ij = exp((f_i + g_j - C_ij) / eps)`` written blockwise into ``out`` (n, m)."""
    step = _rows_per_block(y.shape[0], x.element_size())
    for start in range(0, x.shape[0], step):
        stop = start + step
        z = squared_distances(x[start:stop], y).sub_(g).sub_(f[start:stop, None]).div_(-eps)
        torch.exp(z, out=out[start:stop])
    return out


@dataclass(frozen=True)
class SinkhornResult:
    """Solution of :func:`sinkhorn`; the plan (1) is never stored, only the potentials.

    Attributes:
        f, g: dual potentials, shapes (n,) and (m,), in the units of the cost.
        eps: the (target) regularisation.
        n_iter: Sinkhorn iterations (pairs of f/g updates) over all eps-scaling stages.
        marginal_error: ``||pi 1 - a||_1 + ||pi^T 1 - b||_1`` of the returned potentials.
        converged: ``marginal_error <= tol``.
        x, y, a, b: the problem (points (n, d), (m, d); weights (n,), (m,)).
        method: ``"scaling"`` (stabilised dense kernel) or ``"log"`` (blockwise log-domain); from
            :func:`grid_sinkhorn`, ``"fft"``, ``"matmul"`` or ``"log"``.
    """

    f: Tensor
    g: Tensor
    eps: float
    n_iter: int
    marginal_error: float
    converged: bool
    x: Tensor
    y: Tensor
    a: Tensor
    b: Tensor
    method: str

    def _plan_blocks(self):
        """Yield ``(C, log(pi / ab), pi)`` for consecutive blocks of rows (about 64 MiB each)."""
        log_a, log_b = _log_weights(self.a), _log_weights(self.b)
        step = _rows_per_block(self.y.shape[0], self.x.element_size())
        for start in range(0, self.x.shape[0], step):
            rows = slice(start, start + step)
            cost = squared_distances(self.x[rows], self.y)
            z = (self.f[rows, None] + self.g[None, :] - cost) / self.eps
            yield cost, z, (z + log_a[rows, None] + log_b[None, :]).exp()

    def transposed(self) -> "SinkhornResult":
        """The same solution from y to x (plan ``pi^T``): ``result.transposed().apply_plan(w) = pi^T w``."""
        return replace(self, f=self.g, g=self.f, x=self.y, y=self.x, a=self.b, b=self.a)

    def plan(self) -> Tensor:
        """Dense plan ``pi_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``, shape (n, m): O(n m) memory."""
        return torch.cat([pi for _, _, pi in self._plan_blocks()])

    def apply_plan(self, v: Tensor) -> Tensor:
        """``pi @ v`` for v of shape (m,) or (m, k), blockwise: memory O(block * m), never n x m."""
        if v.ndim not in (1, 2) or v.shape[0] != self.y.shape[0]:
            raise ValueError(f"v must have shape ({self.y.shape[0]},) or ({self.y.shape[0]}, k), got {tuple(v.shape)}")
        v = v.to(self.f.dtype)
        return torch.cat([pi @ v for _, _, pi in self._plan_blocks()])

    def barycentric_map(self, points: Optional[Tensor] = None) -> Tensor:
        """Entropic map ``T(x_i) = sum_j pi_ij y_j / sum_j pi_ij``, shape (n, d).

        The row-normalised plan is ``softmax_j(log b_j + (g_j - C_ij) / eps)``, which needs only ``g``, so
        ``points`` (k, d) may also be new points: the entropic map estimator of Pooladian & Niles-Weed 2021.
        """
        x = self.x if points is None else points.to(self.f.dtype)
        if x.ndim != 2 or x.shape[1] != self.y.shape[1]:
            raise ValueError(f"points must have shape (k, {self.y.shape[1]}), got {tuple(x.shape)}")
        h = _log_weights(self.b) + self.g / self.eps
        step = _rows_per_block(self.y.shape[0], x.element_size())
        return torch.cat([torch.softmax(h - squared_distances(x[s:s + step], self.y) / self.eps, dim=1) @ self.y
                          for s in range(0, x.shape[0], step)])

    def cost(self) -> EntropicCost:
        """Transport cost, entropic primal and dual objectives (one blockwise pass over the plan)."""
        transport = mass = kl_terms = self.f.new_zeros(())
        for cost, z, pi in self._plan_blocks():
            transport = transport + (pi * cost).sum()
            mass = mass + pi.sum()
            kl_terms = kl_terms + (pi * z).sum()  # sum pi log(pi / ab)
        mass_ab = self.a.sum() * self.b.sum()
        primal = transport + self.eps * (kl_terms - mass + mass_ab)
        dual = self.a @ self.f + self.b @ self.g - self.eps * (mass - mass_ab)
        return EntropicCost(transport, primal, dual)


def _check_points(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (n, d) with n >= 1, got {shape}; "
                         f"for 1-D points use {name}[:, None]")


def _check_weights(w: Optional[Tensor], n: int, name: str, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w, device=like.device).to(like.dtype)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per point, got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"{name} must be finite and non-negative with a positive total, got min {float(w.min())}, "
                         f"sum {float(w.sum())}")
    return w


def _check_solver_args(eps, eps_scaling, max_iter, tol, dtype) -> torch.dtype:
    """Validate the arguments shared by :func:`sinkhorn` and :func:`grid_sinkhorn`; returns the dtype to use."""
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite number (units of squared distance), got {eps!r}")
    if eps_scaling is not None and not 0 < eps_scaling < 1:
        raise ValueError(f"eps_scaling must be in (0, 1) or None (no scaling), got {eps_scaling!r}; try 0.5")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    dtype = torch.float64 if dtype is None else dtype
    if not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(f"dtype must be a real floating-point dtype, got {dtype}")
    return dtype


def _balanced(a: Tensor, b: Tensor) -> Tensor:
    """Return ``b`` rescaled to the mass of ``a`` after checking the masses agree (relative 1e-5)."""
    mass_a, mass_b = float(a.sum()), float(b.sum())
    if abs(mass_a - mass_b) > 1e-5 * max(mass_a, mass_b):
        raise ValueError(f"a and b must have the same total mass (balanced OT), got sum(a)={mass_a!r}, "
                         f"sum(b)={mass_b!r}; normalise both, e.g. a / a.sum() and b / b.sum()")
    return b * (mass_a / mass_b)


def _eps_schedule(eps: float, eps_start: float, eps_scaling: Optional[float]) -> list[float]:
    """Geometric eps-scaling stages ``max(eps, eps_start q^k)`` ending at ``eps`` (Schmitzer 2019)."""
    if eps_scaling is None or eps_start <= eps:
        return [eps]
    stages = [eps_start]
    while stages[-1] * eps_scaling > eps:
        stages.append(stages[-1] * eps_scaling)
    return stages + [eps]


def _mean_sq_distance(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> float:
    """``sum_ij a_i b_j ||x_i - y_j||^2 / (sum a sum b)`` in O((n + m) d)."""
    a, b = a / a.sum(), b / b.sum()
    mx, my = a @ x, b @ y
    return float(a @ (x - mx).square().sum(1) + b @ (y - my).square().sum(1) + (mx - my).square().sum())


class _Relaxation:
    """Over-relaxation of both half-steps, ``f <- f + omega (f_sinkhorn - f)`` (Thibault, Chizat, Dossal &
    Papadakis 2017, "Overrelaxed Sinkhorn-Knopp algorithm for regularized optimal transport").

    Sinkhorn's local linear rate ``eta`` is measured from the marginal errors over windows of ``_WINDOW``
    iterations; SOR theory (Young 1971) gives the optimal ``omega = 2 / (1 + sqrt(1 - eta))`` (rate
    ``omega - 1`` instead of ``eta``).  A window run at ``omega`` with rate ``r`` gives back
    ``sqrt(eta) = (r + omega - 1) / (omega sqrt(r))``.  Any omega in (0, 2) converges locally; far from the
    solution it may not, so omega falls back to 1 whenever the error grows 100-fold over its best.
    """

    def __init__(self) -> None:
        self.omega = 1.0
        self.errors: list[float] = []
        self.best = math.inf

    def update(self, err: float) -> float:
        self.best = min(self.best, err)
        if not err <= 100 * self.best:
            self.omega, self.errors, self.best = 1.0, [], err
            return self.omega
        self.errors.append(err)
        if len(self.errors) > _WINDOW:
            first, self.errors = self.errors[0], [err]
            rate = (err / first) ** (1.0 / _WINDOW) if first > 0 else 0.0
            if 0 < rate < 1:
                sqrt_eta = (rate + self.omega - 1) / (self.omega * math.sqrt(rate))
                self.omega = min(_OMEGA_MAX, 2 / (1 + math.sqrt(max(0.0, 1 - min(1.0, sqrt_eta) ** 2))))
        return self.omega


def _scaling_stage(x, y, a, b, f, g, eps, tol, budget, kernel):
    """Stabilised scaling iterations at one eps (Schmitzer 2019), over-relaxed.
    Returns f, g, error, iterations."""
    log_a, log_b = _log_weights(a), _log_weights(b)
    _gibbs(x, y, f, g, eps, kernel)
    u, v = torch.ones_like(f), torch.ones_like(g)
    relax, omega, n_iter = _Relaxation(), 1.0, 0
    while True:
        t = kernel.T @ (a * u)
        v = v * (v * t).pow_(-omega)  # omega = 1: v = 1 / t, columns exact
        col_err = (b * (v * t - 1.0)).abs().sum()
        s = kernel @ (b * v)
        err = float((a * (u * s - 1.0)).abs().sum() + col_err)
        n_iter += 1
        if err <= tol or n_iter >= budget:
            return f + eps * u.log(), g + eps * v.log(), err, n_iter
        omega = relax.update(err)
        u = u * (u * s).pow_(-omega)
        largest = float(torch.maximum(u.log().abs().max(), v.log().abs().max()))
        if not largest <= _ABSORB:
            if math.isfinite(largest):  # absorb the scalings into the potentials
                f, g = f + eps * u.log(), g + eps * v.log()
            else:  # a row or column of the kernel underflowed: recentre with exact log-domain updates (2)
                g = _softmin(y, x, log_a + f / eps, eps)
                f = _softmin(x, y, log_b + g / eps, eps)
            _gibbs(x, y, f, g, eps, kernel)
            u, v = torch.ones_like(f), torch.ones_like(g)


def _marginal_gap(w: Tensor, potential: Tensor, exact: Tensor, eps: float) -> Tensor:
    """``||w exp((potential - exact) / eps) - w||_1``: the marginal violation, given the exact Sinkhorn update."""
    return torch.where(w > 0, w * torch.expm1((potential - exact) / eps), 0.0).abs().sum()


def _log_stage(softmin_rows, softmin_cols, a, b, f, g, eps, tol, budget):
    """Log-domain iterations (2) at one eps, over-relaxed.  ``softmin_rows(h)_i = -eps log sum_j exp(h_j -
    C_ij / eps)`` (``softmin_cols`` the same over i).  Returns f, g, error, iterations."""
    log_a, log_b = _log_weights(a), _log_weights(b)
    relax, omega, n_iter = _Relaxation(), 1.0, 0
    while True:
        g_exact = softmin_cols(log_a + f / eps)
        g = g_exact if omega == 1.0 else g + omega * (g_exact - g)
        f_exact = softmin_rows(log_b + g / eps)
        err = float(_marginal_gap(a, f, f_exact, eps) + _marginal_gap(b, g, g_exact, eps))
        n_iter += 1
        if err <= tol or n_iter >= budget:
            return f, g, err, n_iter
        omega = relax.update(err)
        f = f + omega * (f_exact - f)


def sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    max_iter: int = 10_000,
    tol: float = 1e-9,
    eps_scaling: Optional[float] = 0.25,
    dtype: Optional[torch.dtype] = None,
    max_dense_bytes: int = 1 << 30,
) -> SinkhornResult:
    """Entropic OT between weighted point clouds, cost ``||x - y||^2`` (see the module docstring).

    Args:
        x: source points, shape (n, d).  y: target points, shape (m, d).
        a, b: non-negative weights, shapes (n,) and (m,), equal total mass (relative 1e-5; b is then rescaled
            to a's mass exactly); uniform ``1/n``, ``1/m`` when None.
        eps: entropic regularisation, in the units of the cost (squared distance); > 0.
        max_iter: budget of iterations (pairs of f/g updates) over all stages.
        tol: stop when ``||pi 1 - a||_1 + ||pi^T 1 - b||_1 <= tol``.
        eps_scaling: ratio ``q`` in (0, 1) of the geometric eps-scaling stages starting at the mean squared
            distance; None solves at ``eps`` directly.
        dtype: computation dtype; None means float64 (the default tol needs it).  float32 reaches marginal
            errors of ~1e-5, and its potentials carry ~1e-7 |f| rounding, i.e. ~1e-7 |f| / eps relative in pi.
        max_dense_bytes: largest stabilised kernel (n x m) to store; beyond it the blockwise log-domain
            iterations run in O(block * m) memory (slower: one ``exp`` per entry per half-iteration).

    Returns:
        :class:`SinkhornResult`.  If the tolerance is not met it has ``converged=False`` and a RuntimeWarning
        is issued.
    """
    _check_points(x, "x")
    _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension d, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    dtype = _check_solver_args(eps, eps_scaling, max_iter, tol, dtype)
    x, y = x.to(dtype), y.to(device=x.device, dtype=dtype)
    a = _check_weights(a, x.shape[0], "a", x)
    b = _balanced(a, _check_weights(b, y.shape[0], "b", x))

    stages = _eps_schedule(float(eps), _mean_sq_distance(x, y, a, b), eps_scaling)
    dense = x.shape[0] * y.shape[0] * x.element_size() <= max_dense_bytes
    kernel = x.new_empty(x.shape[0], y.shape[0]) if dense else None

    def stage(f, g, eps_k, stage_tol, budget):
        if dense:
            return _scaling_stage(x, y, a, b, f, g, eps_k, stage_tol, budget, kernel)
        return _log_stage(lambda h: _softmin(x, y, h, eps_k), lambda h: _softmin(y, x, h, eps_k),
                          a, b, f, g, eps_k, stage_tol, budget)

    f, g, err, n_iter = _anneal(stage, x.new_zeros(x.shape[0]), x.new_zeros(y.shape[0]), stages, tol, max_iter)
    return _finish(f, g, float(eps), n_iter, err, tol, x, y, a, b, "scaling" if dense else "log")


def _anneal(stage, f, g, stages, tol, max_iter):
    """Run ``stage`` at each eps of ``stages``; intermediate stages stop at ``_STAGE_TOL`` and always leave at
    least one iteration of the ``max_iter`` budget to the final stage, so the potentials match the target eps."""
    n_iter, err = 0, math.inf
    for k, eps_k in enumerate(stages):
        last = k == len(stages) - 1
        budget = max(1, max_iter - n_iter) if last else max_iter - n_iter - 1
        if budget >= 1:
            f, g, err, used = stage(f, g, eps_k, tol if last else max(tol, _STAGE_TOL), budget)
            n_iter += used
    return f, g, err, n_iter


def _finish(f, g, eps, n_iter, err, tol, x, y, a, b, method) -> SinkhornResult:
    converged = err <= tol
    if not converged:
        warnings.warn(f"Sinkhorn ({method}) did not converge: marginal error {err:.3g} > tol {tol:.3g} after "
                      f"{n_iter} iterations at eps={eps:.3g}; raise max_iter, raise eps, keep eps_scaling on, "
                      "or use dtype=torch.float64", RuntimeWarning, stacklevel=3)
    return SinkhornResult(f=f, g=g, eps=eps, n_iter=n_iter, marginal_error=err, converged=converged,
                          x=x, y=y, a=a, b=b, method=method)
