"""The one cost / kernel convention of :mod:`atlas.transport`, stable distances and the operator interface.

Convention (every operator, the Sinkhorn solver and the docs use exactly this):

* cost ``c(x, y) = ||x - y||^2`` (squared Euclidean, POT's default ``"sqeuclidean"`` metric);
* Gibbs kernel ``k_eps(x, y) = exp(-c(x, y) / eps)``, i.e. ``exp(-||x - y||^2 / eps)``.  Entropic OT with
  regularisation ``eps`` (Cuturi 2013, "Sinkhorn distances", eq. 2) uses exactly this kernel.  It is the Gaussian
  of bandwidth ``h`` with ``eps = 2 h^2``.

The only other cost offered is ``"euclidean"``, ``c(x, y) = ||x - y||``, whose Gibbs kernel ``exp(-||x - y|| / eps)``
is the L2 Laplacian (exponential) kernel.  The dense and Nystrom operators evaluate it in closed form, and the
RFF operator samples its Fourier transform, the multivariate Cauchy distribution, exactly.  The FFT operator
only supports ``"sqeuclidean"``, because only the Gaussian factorises over the grid axes.

A :class:`KernelOperator` represents the (m, n) matrix ``K_ij = k_eps(x_i, y_j)``, or an approximation of it, for
points x (m, d) and y (n, d).  It applies ``K`` and ``K^T`` to vectors (n,) or to k vectors at once (n, k).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch import Tensor

__all__ = ["COSTS", "KernelOperator", "cost_matrix", "gaussian_kernel", "gibbs_kernel", "squared_distances"]

COSTS = ("sqeuclidean", "euclidean")

# Entries of the expanded form below this fraction of (|x_i - c|^2 + |y_j - c|^2), times sqrt(d) * machine eps,
# are recomputed as sum((x_i - y_j)^2); every other entry then has relative rounding error below ~1e-3.
_RECOMPUTE_FACTOR = 1024.0
_RECOMPUTE_CHUNK_ELEMENTS = 1 << 22  # bounds the (pairs, d) difference buffer to 16 MiB in float32


def check_eps(eps) -> float:
    """``eps`` as a float; raises unless it is a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 < float(eps) < math.inf):
        raise ValueError(f"eps (the entropic regularisation) must be a finite number > 0, got {eps!r}")
    return float(eps)


def check_cost(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}; 'sqeuclidean' gives the Gaussian kernel")
    return cost


def check_points(x: Tensor, y: Optional[Tensor]) -> tuple[Tensor, Tensor, bool]:
    """Validate point clouds x (m, d) and y (n, d); returns (x, y, symmetric) with y = x when y is None or x."""
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (m, d), got {_describe(x)}")
    if y is None or y is x:
        return x, x, True
    if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[1] != x.shape[1]:
        raise ValueError(f"y must have shape (n, d) with d = {x.shape[1]} like x {tuple(x.shape)}, got {_describe(y)}")
    if y.dtype != x.dtype or y.device != x.device:
        raise ValueError(
            f"x and y must share dtype and device, got {x.dtype} on {x.device} and {y.dtype} on {y.device}; "
            "convert one with .to(other)"
        )
    return x, y, False


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)}"
    return f"{type(t).__name__}"


def squared_distances(x: Tensor, y: Optional[Tensor] = None) -> Tensor:
    """Pairwise squared Euclidean distances ``D_ij = ||x_i - y_j||^2``, computed stably.

    The fast expanded form ``|x|^2 + |y|^2 - 2 x.y`` loses everything to cancellation when points are far from the
    origin relative to their spread (in float32 a point at norm 1000 had a "distance" of ~5e-3 to itself, so
    ``k(x, x) = e^-50`` at small eps).  Here the points are first centred on their common mean (distances are
    translation invariant), the expanded form is clamped at 0, and every entry that is small compared with its
    rounding error (``D_ij <= 1024 sqrt(d) eps_mach (|x_i - c|^2 + |y_j - c|^2)``) is recomputed as
    ``sum((x_i - y_j)^2)``.  Hence ``D_ij == 0`` exactly whenever ``x_i == y_j``, near-duplicates are relatively
    accurate, and all other entries have relative error below ~1e-3 (typically far less).  For ``y`` None (or
    ``x`` itself) the result is exactly symmetric.  Differentiable (autograd) in x and y.

    Args:
        x: (m, d) points.
        y: (n, d) points with x's dtype and device; None means x.

    Returns:
        (m, n) tensor, non-negative.
    """
    x, y, symmetric = check_points(x, y)
    if symmetric:
        centre = x.mean(dim=0)
        xc = yc = x - centre
    else:
        centre = torch.cat([x, y]).mean(dim=0)
        xc, yc = x - centre, y - centre
    x_sq = (xc * xc).sum(dim=1)
    y_sq = x_sq if symmetric else (yc * yc).sum(dim=1)
    distances = (xc @ yc.T).mul_(-2.0).add_(x_sq[:, None]).add_(y_sq[None, :]).clamp_min_(0.0)
    if symmetric:
        distances = distances.add(distances.T).mul_(0.5)
    ratio = min(0.5, _RECOMPUTE_FACTOR * math.sqrt(x.shape[1]) * torch.finfo(x.dtype).eps)
    suspicious = (distances <= (x_sq[:, None] + y_sq[None, :]).mul_(ratio)).nonzero()
    if suspicious.numel():
        rows, cols = suspicious.unbind(dim=1)
        chunk = max(1, _RECOMPUTE_CHUNK_ELEMENTS // max(1, x.shape[1]))
        exact = torch.cat(
            [(x[rows[s : s + chunk]] - y[cols[s : s + chunk]]).square().sum(dim=1) for s in range(0, len(rows), chunk)]
        )
        distances = distances.index_put((rows, cols), exact)
    return distances


def cost_matrix(x: Tensor, y: Optional[Tensor] = None, cost: str = "sqeuclidean") -> Tensor:
    """Pairwise cost (m, n): ``||x_i - y_j||^2`` for ``"sqeuclidean"``, ``||x_i - y_j||`` for ``"euclidean"``.

    Both are exactly 0 where ``x_i == y_j`` (see :func:`squared_distances`).  The Euclidean cost is not
    differentiable where two points coincide (its gradient there is NaN).
    """
    distances = squared_distances(x, y)
    return distances if check_cost(cost) == "sqeuclidean" else distances.sqrt()


def gibbs_kernel(x: Tensor, y: Optional[Tensor], eps: float, cost: str = "sqeuclidean") -> Tensor:
    """Dense Gibbs kernel ``exp(-c(x_i, y_j) / eps)`` (m, n) for x (m, d), y (n, d) (None means x).

    ``k(x, x) == 1`` exactly on the diagonal at any eps and dtype.
    """
    return cost_matrix(x, y, cost).div(-check_eps(eps)).exp()


def gaussian_kernel(x: Tensor, y: Optional[Tensor], eps: float) -> Tensor:
    """Dense Gaussian kernel ``exp(-||x_i - y_j||^2 / eps)`` (m, n); the entropic-OT kernel of regularisation eps."""
    return gibbs_kernel(x, y, eps, "sqeuclidean")


class KernelOperator(ABC):
    """A linear operator ``K`` of shape (m, n) with ``K_ij ~ k_eps(x_i, y_j)`` (exact or approximate).

    Attributes:
        eps: the regularisation / bandwidth of the Gibbs kernel ``exp(-c / eps)``.
        cost: ``"sqeuclidean"`` (Gaussian kernel) or ``"euclidean"`` (Laplacian kernel).
        shape: (m, n).
        dtype, device: of the tensors it holds; inputs to ``apply`` must match.
    """

    eps: float
    cost: str
    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    @abstractmethod
    def apply(self, v: Tensor) -> Tensor:
        """``K @ v`` for v (n,) or (n, k); returns (m,) or (m, k)."""

    @abstractmethod
    def apply_T(self, w: Tensor) -> Tensor:
        """``K^T @ w`` for w (m,) or (m, k); returns (n,) or (n, k)."""

    @abstractmethod
    def pairwise(self) -> Tensor:
        """The dense (m, n) matrix this operator represents (the approximation, for approximate operators)."""

    @abstractmethod
    def error_estimate(self) -> float:
        """An estimate of the mean absolute entrywise error ``mean_ij |K_ij - k_eps(x_i, y_j)|`` (0.0 if exact)."""

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """An upper estimate of the bytes this operator holds plus its build / apply workspace."""

    def log_apply(self, log_v: Tensor) -> Tensor:
        """``log(K @ exp(log_v))`` computed stably; only exact operators (dense, FFT) provide it."""
        raise NotImplementedError(self._no_log_domain())

    def log_apply_T(self, log_w: Tensor) -> Tensor:
        """``log(K^T @ exp(log_w))`` computed stably; see :meth:`log_apply`."""
        raise NotImplementedError(self._no_log_domain())

    def _no_log_domain(self) -> str:
        return (
            f"{type(self).__name__} has no log-domain apply: its approximate kernel can be negative and has no "
            "log-domain factorisation; use DirectKernel or FFTKernel for log-domain (small eps) Sinkhorn"
        )

    def _check_operand(self, v: Tensor, length: int, name: str) -> None:
        """Raise unless v is a (length,) or (length, k) tensor with this operator's dtype and device."""
        if not isinstance(v, Tensor) or v.ndim not in (1, 2) or v.shape[0] != length:
            raise ValueError(
                f"{name} must have shape ({length},) or ({length}, k) for {type(self).__name__} of shape "
                f"{self.shape}, got {_describe(v)}"
            )
        if v.dtype != self.dtype or v.device != self.device:
            raise ValueError(
                f"{name} is {v.dtype} on {v.device} but {type(self).__name__} holds {self.dtype} on {self.device}; "
                f"convert it with .to(dtype={self.dtype}, device='{self.device}')"
            )


def sampled_entry_error(
    approx_entries, x: Tensor, y: Tensor, eps: float, cost: str, num_entries: int = 4096, seed: int = 0
) -> float:
    """Monte-Carlo estimate of ``mean_ij |K~_ij - k_eps(x_i, y_j)|`` for an approximate operator.

    ``approx_entries(rows, cols)`` returns the approximate entries ``K~[rows, cols]`` (s,).  Entries are drawn
    uniformly with replacement from a generator seeded with ``seed`` (reproducible; the global RNG is untouched);
    when ``m * n <= num_entries`` every entry is used and the result is exact.  The standard error of the estimate
    is about ``std(|error|) / sqrt(num_entries)``.
    """
    m, n = x.shape[0], y.shape[0]
    if m * n <= num_entries:
        rows = torch.arange(m, device=x.device).repeat_interleave(n)
        cols = torch.arange(n, device=x.device).repeat(m)
    else:
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(m, (num_entries,), generator=generator).to(x.device)
        cols = torch.randint(n, (num_entries,), generator=generator).to(x.device)
    diff = x[rows] - y[cols]
    distances = diff.square().sum(dim=1)
    exact = (distances if cost == "sqeuclidean" else distances.sqrt()).div(-eps).exp()
    return float((approx_entries(rows, cols) - exact).abs().mean())


class LowRankKernel(KernelOperator):
    """A kernel operator held in factored form ``K ~ A_x A_y^T`` (random features, Nystrom).

    Subclasses set ``x``, ``y``, ``eps``, ``cost``, ``shape`` and implement :meth:`factors`; apply, its
    transpose, the dense approximation and the sampled error estimate are the same for every factorisation.
    """

    @abstractmethod
    def factors(self) -> tuple[Tensor, Tensor]:
        """``(A_x, A_y)`` of shapes (m, r) and (n, r)."""

    def apply(self, v: Tensor) -> Tensor:
        """``A_x (A_y^T v)`` in O((m + n) r k) for v (n,) or (n, k)."""
        self._check_operand(v, self.shape[1], "v")
        left, right = self.factors()
        return left @ (right.T @ v)

    def apply_T(self, w: Tensor) -> Tensor:
        self._check_operand(w, self.shape[0], "w")
        left, right = self.factors()
        return right @ (left.T @ w)

    def pairwise(self) -> Tensor:
        """The approximate kernel matrix ``A_x A_y^T`` (m, n), unclamped (not the exact kernel)."""
        left, right = self.factors()
        return left @ right.T

    def error_estimate(self, num_entries: int = 4096, seed: int = 0) -> float:
        """Monte-Carlo estimate of ``mean_ij |K~_ij - K_ij|`` against the exact kernel on ``num_entries`` random
        entries (all entries when m n <= num_entries)."""
        left, right = self.factors()
        return sampled_entry_error(lambda rows, cols: (left[rows] * right[cols]).sum(dim=1),
                                   self.x, self.y, self.eps, self.cost, num_entries, seed)
