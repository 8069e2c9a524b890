"""Distances between two sets of samples: sliced Wasserstein-2 and kernel MMD.

Both compare point clouds x (N, d) and y (M, d) directly, without a feature
network, so they are cheap and exact enough to test against closed forms.
Inputs with more than two dimensions (e.g. images (N, C, H, W)) are flattened
to (N, C*H*W). Computation is in float64 on the inputs' device.
"""

from __future__ import annotations

import torch

__all__ = ["sliced_wasserstein2", "mmd", "wasserstein2_1d"]


def _as_points(samples: torch.Tensor, name: str) -> torch.Tensor:
    samples = torch.as_tensor(samples)
    if samples.ndim == 1:
        raise ValueError(
            f"{name} must have shape (N, d) or (N, ...), got a 1-D tensor of shape {tuple(samples.shape)}; "
            f"use {name}[:, None] for N one-dimensional points"
        )
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(samples.shape)}")
    points = samples.reshape(samples.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return points


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_points, y_points = _as_points(x, "x"), _as_points(y, "y")
    if x_points.shape[1] != y_points.shape[1]:
        raise ValueError(
            f"x and y must have the same number of features per sample, got x {tuple(torch.as_tensor(x).shape)} "
            f"({x_points.shape[1]} features) and y {tuple(torch.as_tensor(y).shape)} ({y_points.shape[1]} features)"
        )
    if x_points.device != y_points.device:
        raise ValueError(f"x is on {x_points.device} but y is on {y_points.device}; move both to one device")
    return x_points, y_points


def wasserstein2_1d(x_sorted: torch.Tensor, y_sorted: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between 1-D empirical distributions, exactly.

    Args:
        x_sorted: (N, P) samples sorted along dim 0, for P independent problems.
        y_sorted: (M, P) samples sorted along dim 0.

    Returns:
        (P,) tensor of W2^2 = integral_0^1 (F_x^-1(t) - F_y^-1(t))^2 dt, where the
        quantile functions are the step functions of the samples. For N == M this
        is mean((x_sorted - y_sorted)^2); otherwise the integral is summed over the
        intervals between the merged breakpoints i/N and j/M, on each of which
        both quantile functions are constant.
    """
    n, m = x_sorted.shape[0], y_sorted.shape[0]
    if n == m:
        return (x_sorted - y_sorted).pow(2).mean(dim=0)
    device = x_sorted.device
    # Breakpoints as integers in units of 1 / (N * M), so they merge exactly.
    breaks = torch.cat(
        [
            torch.zeros(1, dtype=torch.int64, device=device),
            torch.arange(1, n + 1, dtype=torch.int64, device=device) * m,
            torch.arange(1, m + 1, dtype=torch.int64, device=device) * n,
        ]
    ).unique(sorted=True)
    twice_midpoints = breaks[:-1] + breaks[1:]
    x_index = twice_midpoints // (2 * m)  # floor(t_mid * N)
    y_index = twice_midpoints // (2 * n)  # floor(t_mid * M)
    weights = (breaks[1:] - breaks[:-1]).to(x_sorted.dtype) / (n * m)
    return (weights[:, None] * (x_sorted[x_index] - y_sorted[y_index]).pow(2)).sum(dim=0)


def sliced_wasserstein2(
    x: torch.Tensor,
    y: torch.Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced 2-Wasserstein distance SW2 between samples x (N, d) and y (M, d).

    SW2 = sqrt(E_theta[W2^2(theta . x, theta . y)]) with theta uniform on the unit
    sphere (Rabin et al. 2011; Bonneel et al. 2015), estimated with
    ``n_projections`` random directions drawn from ``generator`` (on the CPU, so
    a seeded generator gives the same directions on every device). Each 1-D
    W2^2 is exact (:func:`wasserstein2_1d`), also for N != M.

    For N(m1, I) vs N(m2, I) in d dimensions, SW2^2 = |m1 - m2|^2 / d.
    Units: those of the inputs.
    """
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    x_points, y_points = _check_pair(x, y)
    directions = torch.randn(x_points.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = (directions / torch.linalg.vector_norm(directions, dim=0, keepdim=True)).to(x_points.device)
    x_projected = (x_points @ directions).sort(dim=0).values
    y_projected = (y_points @ directions).sort(dim=0).values
    return float(wasserstein2_1d(x_projected, y_projected).mean().sqrt())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy MMD^2 with a Gaussian RBF kernel.

    k(a, b) = exp(-|a - b|^2 / (2 h^2)) with bandwidth h (Gretton et al. 2012,
    JMLR, eq. 3 (MMD_u^2)). When ``bandwidth`` is None, h is the median heuristic:
    the median Euclidean distance between distinct samples of the pooled set
    x + y.

    Args:
        x: (N, d) samples, N >= 2.
        y: (M, d) samples, M >= 2.
        bandwidth: h in the inputs' units, > 0, or None.

    Returns:
        MMD^2: mean over i != j of k(x_i, x_j) + mean over i != j of k(y_i, y_j)
        - 2 mean k(x_i, y_j). Unbiased, so it can be slightly negative when the
        distributions are equal. Memory is O((N + M)^2).
    """
    x_points, y_points = _check_pair(x, y)
    n, m = x_points.shape[0], y_points.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples in each set, got N={n} and M={m}")
    distance_xx = torch.cdist(x_points, x_points)
    distance_yy = torch.cdist(y_points, y_points)
    distance_xy = torch.cdist(x_points, y_points)
    if bandwidth is None:
        upper_x = torch.triu_indices(n, n, offset=1, device=x_points.device)
        upper_y = torch.triu_indices(m, m, offset=1, device=y_points.device)
        pooled = torch.cat(
            [distance_xx[upper_x[0], upper_x[1]], distance_yy[upper_y[0], upper_y[1]], distance_xy.flatten()]
        )
        bandwidth = float(pooled.median())
        if bandwidth <= 0:
            raise ValueError(
                "the median-heuristic bandwidth is 0 (most samples coincide); pass bandwidth= explicitly"
            )
    elif not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0 (same units as the samples), got {bandwidth}")

    def kernel(distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-distance.pow(2) / (2 * bandwidth**2))

    kernel_xx = kernel(distance_xx)
    kernel_yy = kernel(distance_yy)
    # Drop the diagonal (k(a, a)) for the unbiased within-set means.
    within_x = (kernel_xx.sum() - kernel_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (kernel_yy.sum() - kernel_yy.diagonal().sum()) / (m * (m - 1))
    across = kernel(distance_xy).mean()
    return float(within_x + within_y - 2 * across)
