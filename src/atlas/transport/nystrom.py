"""Nystrom approximation ``K ~ K_xl K_ll^+ K_ly`` of the Gibbs kernel from L landmark points (Williams & Seeger 2001).

Landmarks are drawn uniformly without replacement from the points (x, or x and y stacked).  The pseudo-inverse
comes from ``eigh(K_ll) = U diag(lam) U^T``, keeping eigenvalues ``lam > rcond * lam_max`` (a relative cut-off, so
it is scale free), and the operator is stored in factored form ``K~ = A_x A_y^T`` with ``A = K_.l U lam^-1/2``
(m + n rows of rank r <= L), applied in O((m + n) r).  For y = x it is symmetric positive semi-definite.

Guarantees (symmetric case): with all points as landmarks ``K~ = K`` up to the cut-off; the error ``K - K~`` is the
Schur complement of ``K_ll``, positive semi-definite and non-increasing (Loewner order, hence in trace and Frobenius
norm) as landmarks are added.  Landmark sets are nested across ``num_landmarks`` for a fixed generator seed: they are
prefixes of one random permutation.  ``num_landmarks`` larger than the number of points means all points (no loop,
no error; the reference implementation's auto-tuning never terminated for fewer than 10 points).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .kernels import LowRankKernel, check_cost, check_eps, check_points, gibbs_kernel

__all__ = ["NystromKernel", "nystrom_memory_bytes"]


def nystrom_memory_bytes(num_rows: int, num_cols: int, num_landmarks: int, dtype_bytes: int) -> int:
    """Bytes of a :class:`NystromKernel`: the factors A_x, A_y (rank <= L), the (points, L) cross-kernel they are
    made from, and float64 ``K_ll`` with its eigendecomposition."""
    points = num_rows + num_cols
    return 2 * points * num_landmarks * dtype_bytes + 3 * num_landmarks * num_landmarks * 8


class NystromKernel(LowRankKernel):
    """Low-rank Nystrom approximation of the Gibbs kernel ``exp(-c(x_i, y_j) / eps)``.

    Args:
        x: (m, d) points.
        y: (n, d) points (x's dtype and device), or None for y = x.
        eps: regularisation, > 0.
        num_landmarks: L >= 1; capped at the number of distinct input points (m, or m + n when y is given).
        generator: a CPU torch.Generator for the landmark permutation; None uses torch's global RNG.
        rcond: relative eigenvalue cut-off of the pseudo-inverse; None means ``L * finfo(dtype).eps``.
        cost: ``"sqeuclidean"`` (Gaussian) or ``"euclidean"`` (Laplacian).

    Attributes:
        landmark_indices: (L,) indices into x (or into ``cat([x, y])`` when y is given).
        rank: r, the number of eigenvalues kept.
        factor_x: (m, r) A_x; factor_y: (n, r) A_y.
    """

    def __init__(
        self,
        x: Tensor,
        y: Optional[Tensor] = None,
        *,
        eps: float,
        num_landmarks: int,
        generator: Optional[torch.Generator] = None,
        rcond: Optional[float] = None,
        cost: str = "sqeuclidean",
    ) -> None:
        x, y, self.symmetric = check_points(x, y)
        self.eps = check_eps(eps)
        self.cost = check_cost(cost)
        if isinstance(num_landmarks, bool) or not isinstance(num_landmarks, int) or num_landmarks < 1:
            raise ValueError(f"num_landmarks must be a positive integer, got {num_landmarks!r}; try 256")
        self.x, self.y = x, y
        self.shape = (x.shape[0], y.shape[0])
        self.dtype, self.device = x.dtype, x.device
        pool = x if self.symmetric else torch.cat([x, y])
        self.num_landmarks = min(num_landmarks, len(pool))
        self.rcond = self.num_landmarks * torch.finfo(x.dtype).eps if rcond is None else float(rcond)
        if not 0.0 <= self.rcond < 1.0:
            raise ValueError(f"rcond must lie in [0, 1), got {rcond!r}; None picks L * machine epsilon")
        permutation = torch.randperm(len(pool), generator=generator)
        self.landmark_indices = permutation[: self.num_landmarks].to(x.device)
        landmarks = pool[self.landmark_indices]

        eigenvalues, eigenvectors = torch.linalg.eigh(gibbs_kernel(landmarks, None, self.eps, cost).double())
        keep = eigenvalues > self.rcond * eigenvalues[-1].clamp_min(0.0)
        whitening = (eigenvectors[:, keep] * eigenvalues[keep].rsqrt()).to(x.dtype)  # U_r lam_r^-1/2, (L, r)
        self.rank = int(keep.sum())
        self.factor_x = gibbs_kernel(x, landmarks, self.eps, cost) @ whitening
        self.factor_y = self.factor_x if self.symmetric else gibbs_kernel(y, landmarks, self.eps, cost) @ whitening

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(A_x, A_y)``: the landmark factors. The error estimate is measured, not a bound."""
        return self.factor_x, self.factor_y

    @property
    def memory_bytes(self) -> int:
        num_cols = 0 if self.symmetric else self.shape[1]
        return nystrom_memory_bytes(self.shape[0], num_cols, self.num_landmarks, self.factor_x.element_size())
