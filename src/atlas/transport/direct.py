"""The exact, dense kernel operator: ``K_ij = exp(-c(x_i, y_j) / eps)`` held as an (m, n) matrix.

Built from its own points at construction, so it can never serve another batch's matrix (the reference
implementation cached the Gram matrix by *shape* and reused step k-1's kernel at step k).  The cost matrix is
computed once with :func:`~atlas.transport.kernels.cost_matrix` (exact zeros on coincident points); the kernel
matrix is ``exp(-C / eps)`` made on first use.  ``log_apply`` works from ``C`` directly, so it stays exact where
``exp(-C / eps)`` underflows to 0.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .kernels import KernelOperator, check_cost, check_eps, check_points, cost_matrix

__all__ = ["DirectKernel", "direct_memory_bytes"]


def direct_memory_bytes(num_rows: int, num_cols: int, dtype_bytes: int) -> int:
    """Bytes of a :class:`DirectKernel`: the cost and kernel matrices plus one (m, n) build temporary."""
    return 3 * num_rows * num_cols * dtype_bytes


class DirectKernel(KernelOperator):
    """Dense Gibbs kernel ``K_ij = exp(-c(x_i, y_j) / eps)`` between x (m, d) and y (n, d).

    With ``y`` None (or ``x`` itself) ``K`` is exactly symmetric with an exact unit diagonal, and positive
    semi-definite up to rounding (both costs give positive-definite kernels).  The operator snapshots the
    distances at construction: changing x in place afterwards does not change it.

    Args:
        x: (m, d) points.
        y: (n, d) points (x's dtype and device), or None for y = x.
        eps: regularisation, > 0.
        cost: ``"sqeuclidean"`` (Gaussian, default) or ``"euclidean"`` (Laplacian).

    Attributes:
        cost_matrix: (m, n) ``c(x_i, y_j)``, for log-domain solvers (``log K = -cost_matrix / eps``).
        symmetric: whether y is x.
    """

    def __init__(self, x: Tensor, y: Optional[Tensor] = None, *, eps: float, cost: str = "sqeuclidean") -> None:
        x, y, self.symmetric = check_points(x, y)
        self.eps = check_eps(eps)
        self.cost = check_cost(cost)
        self.x, self.y = x, y
        self.shape = (x.shape[0], y.shape[0])
        self.dtype, self.device = x.dtype, x.device
        self.cost_matrix = cost_matrix(x, None if self.symmetric else y, cost)
        self._kernel: Optional[Tensor] = None

    @property
    def kernel_matrix(self) -> Tensor:
        """The dense (m, n) kernel ``exp(-cost_matrix / eps)``, built on first access from this operator's data."""
        if self._kernel is None:
            self._kernel = self.cost_matrix.div(-self.eps).exp_()
        return self._kernel

    def apply(self, v: Tensor) -> Tensor:
        self._check_operand(v, self.shape[1], "v")
        return self.kernel_matrix @ v

    def apply_T(self, w: Tensor) -> Tensor:
        self._check_operand(w, self.shape[0], "w")
        return self.kernel_matrix.T @ w

    def pairwise(self) -> Tensor:
        return self.kernel_matrix

    def error_estimate(self) -> float:
        """0.0: the matrix is the exact kernel (up to the rounding of :func:`cost_matrix` and ``exp``)."""
        return 0.0

    @property
    def memory_bytes(self) -> int:
        return direct_memory_bytes(self.shape[0], self.shape[1], self.cost_matrix.element_size())

    def log_apply(self, log_v: Tensor) -> Tensor:
        """``log(K @ exp(log_v))`` = ``logsumexp_j(-C_ij / eps + log_v_j)`` for log_v (n,) or (n, k).

        Exact where the plain kernel underflows; ``-inf`` entries of log_v (zero mass) are allowed.
        """
        self._check_operand(log_v, self.shape[1], "log_v")
        return _log_matvec(self.cost_matrix, self.eps, log_v)

    def log_apply_T(self, log_w: Tensor) -> Tensor:
        """``log(K^T @ exp(log_w))`` for log_w (m,) or (m, k)."""
        self._check_operand(log_w, self.shape[0], "log_w")
        return _log_matvec(self.cost_matrix.T, self.eps, log_w)


def _log_matvec(cost: Tensor, eps: float, log_v: Tensor) -> Tensor:
    """``logsumexp_j(-cost_ij / eps + log_v_j)``; one (rows, cols) temporary per column of log_v."""
    if log_v.ndim == 1:
        return torch.logsumexp(cost.div(-eps).add_(log_v[None, :]), dim=1)
    return torch.stack([_log_matvec(cost, eps, column) for column in log_v.unbind(dim=1)], dim=1)
