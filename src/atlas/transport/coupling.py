"""Minibatch couplings of noise and data for flow/bridge training (OT-CFM and SB-CFM).

Inside one training batch the noise samples are re-paired with the data samples (Tong et al. 2023,
"Improving and generalizing flow-based generative models with minibatch optimal transport"; Pooladian et al.
2023, "Multisample flow matching"), with the cost ``||x0 - noise||^2`` of :mod:`atlas.transport`:

* ``"independent"``: the pairs as given (no randomness consumed).
* ``"ot"``: the exact optimal assignment, a permutation of the noise (:func:`solve_assignment`).
* ``"sb"``: each data sample draws one partner from its row of the entropic plan (:func:`.sinkhorn.sinkhorn`),
  ``P(noise j | data i) = pi_ij / a_i``.  Rows are sampled independently, so a noise sample may be used
  twice and another not at all; the noise marginal is still exact in expectation
  (``sum_i a_i pi_ij / a_i = b_j``).  Sampling whole pairs from the plan instead (as Tong et al.) could drop
  data samples, which we never do.

The data samples always stay in their order, so anything aligned with them (labels, conditioning) stays
aligned; only the noise is permuted.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from .kernel_sinkhorn import kernel_sinkhorn
from .kernels import KernelOperator, squared_distances
from .entropic import sinkhorn

__all__ = ["COUPLINGS", "KernelFactory", "MinibatchPairing", "pair_minibatch", "solve_assignment"]

# Builds the Gibbs-kernel operator of two flattened point sets (B, d) at an absolute eps (None: the exact solver).
KernelFactory = Callable[[Tensor, Tensor, float], Optional[KernelOperator]]

COUPLINGS = ("independent", "ot", "sb")


class MinibatchPairing(NamedTuple):
    """Data (unchanged, in order) and the noise re-paired with it, both of shape (B, ...)."""

    data: Tensor
    noise: Tensor

    @property
    def mean_cost(self) -> float:
        """Mean pairing cost ``mean_i ||data_i - noise_i||^2`` (a diagnostic: lower means straighter paths)."""
        diff = (self.data - self.noise).reshape(self.data.shape[0], -1).double()
        return float(diff.square().sum(1).mean())


def solve_assignment(cost: Tensor) -> Tensor:
    """Exact minimum-cost perfect matching of a square cost matrix (shortest augmenting paths).

    Rows are inserted one at a time; each insertion is a Dijkstra search over reduced costs
    ``C_ij - u_i - v_j >= 0`` from the new row to a free column, followed by the dual update that keeps
    every matched edge tight, then an augmentation along the path (Kuhn 1955; Jonker & Volgenant 1987;
    Burkard, Dell'Amico & Martello 2009, "Assignment Problems").  O(n^3) time, O(n^2) memory;
    fine for the minibatch sizes of training (<= ~1000).

    Args:
        cost: shape (n, n), finite.

    Returns:
        ``perm`` (n,) int64 on ``cost``'s device: row i is matched to column ``perm[i]``, minimising
        ``sum_i cost[i, perm[i]]``.
    """
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (n, n) matrix, got shape {tuple(cost.shape)}")
    c = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(c).all():
        raise ValueError("cost must be finite; replace forbidden pairs by a large finite cost")
    n = c.shape[0]
    u, v = np.zeros(n), np.zeros(n)  # dual potentials of rows and columns
    row_of_col = np.full(n, -1)
    col_of_row = np.full(n, -1)
    for new_row in range(n):
        dist = c[new_row] - u[new_row] - v  # shortest-path distance from new_row to each column
        pred = np.full(n, new_row)  # the row from which each column is reached
        scanned = np.zeros(n, dtype=bool)
        open_dist = dist.copy()  # dist with scanned columns masked out
        while True:
            col = int(np.argmin(open_dist))
            delta = dist[col]
            if row_of_col[col] < 0:
                break
            scanned[col] = True
            open_dist[col] = math.inf
            row = row_of_col[col]  # follow the tight matched edge col -> row, then relax row -> columns
            through = delta + c[row] - u[row] - v
            better = (through < dist) & ~scanned
            dist[better] = through[better]
            pred[better] = row
            open_dist[better] = through[better]
        # Dual update: keeps C_ij - u_i - v_j >= 0 everywhere and = 0 on matched edges and on the path.
        shift = delta - dist[scanned]
        v[scanned] -= shift
        u[row_of_col[scanned]] += shift
        u[new_row] += delta
        while True:  # augment along the path ending at the free column `col`
            row = pred[col]
            row_of_col[col], previous = row, col_of_row[row]
            col_of_row[row] = col
            if row == new_row:
                break
            col = previous
    return torch.as_tensor(col_of_row, dtype=torch.int64, device=cost.device)


def pair_minibatch(
    x0_data: Tensor,
    noise: Tensor,
    coupling: str = "ot",
    *,
    eps: float = 0.1,
    relative_eps: bool = True,
    max_iter: int = 1000,
    kernel_factory: Optional[KernelFactory] = None,
    generator: Optional[torch.Generator] = None,
) -> MinibatchPairing:
    """Re-pair the noise with the data of one batch.

    Args:
        x0_data: data samples, shape (B, ...); kept as they are and in order.
        noise: noise samples, same shape.
        coupling: ``"independent"``, ``"ot"`` (exact assignment) or ``"sb"`` (row-wise draws from the
            entropic plan); see the module docstring.
        eps: entropic regularisation for ``"sb"``.  With ``relative_eps`` (default) it is a fraction of the
            median squared distance over all B^2 (data, noise) pairs, which makes it independent of the data
            scale; otherwise it is absolute, in units of squared distance: ``eps = 2 sigma_sq`` pairs with a
            :func:`atlas.transport.bridge.brownian_bridge_sample` of diffusion ``sigma_sq`` to give the
            Schrodinger bridge (Tong et al. 2023).
        relative_eps: see ``eps``.
        max_iter: Sinkhorn iteration cap for ``"sb"`` (a RuntimeWarning says when it is reached).
        kernel_factory: ``None`` (default) solves ``"sb"`` exactly with the log-domain :func:`.sinkhorn.sinkhorn`
            (stable at any eps); otherwise ``kernel_factory(x0_flat, noise_flat, eps_abs)`` builds the operator (float64;
            returning None selects the exact solver)
            (e.g. Nystrom or RFF, see ``atlas.config.KernelConfig``) that :func:`.kernel_sinkhorn.kernel_sinkhorn`
            runs on; an approximation with negative plan entries raises rather than being clamped.
        generator: for the ``"sb"`` draws (made on the generator's device).

    Returns:
        :class:`MinibatchPairing` ``(data, noise)``; ``.mean_cost`` reports the mean squared pairing distance.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    if x0_data.shape != noise.shape or x0_data.ndim == 0:
        raise ValueError(f"x0_data and noise must have the same shape (B, ...), got {tuple(x0_data.shape)} and "
                         f"{tuple(noise.shape)}")
    if coupling == "independent" or x0_data.shape[0] == 1:
        return MinibatchPairing(x0_data, noise)
    batch = x0_data.shape[0]
    cost = squared_distances(x0_data.reshape(batch, -1).double(), noise.reshape(batch, -1).double())
    if coupling == "ot":
        return MinibatchPairing(x0_data, noise[solve_assignment(cost).to(noise.device)])

    if not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}; try 0.1 (relative to the median)")
    eps_abs = float(eps * cost.median()) if relative_eps else float(eps)
    if not eps_abs > 0:
        raise ValueError(f"the median squared distance of the batch is {float(cost.median())}, so a relative eps "
                         "is 0; pass relative_eps=False with an absolute eps")
    operator = None if kernel_factory is None else kernel_factory(x0_data.reshape(batch, -1).double(),
                                                                  noise.reshape(batch, -1).double(), eps_abs)
    if operator is None:
        result = sinkhorn(x0_data.reshape(batch, -1), noise.reshape(batch, -1), eps=eps_abs, tol=1e-6,
                          max_iter=max_iter, dtype=torch.float64)
        # row i of the plan, normalised: softmax_j(log b_j + (g_j - C_ij) / eps) with uniform b
        rows = torch.softmax((result.g[None, :] - cost) / eps_abs, dim=1)
    else:
        rows = kernel_sinkhorn(operator, max_iter=max_iter, tol=1e-6).conditional_rows()
    device = generator.device if generator is not None else rows.device
    partner = torch.multinomial(rows.to(device), 1, generator=generator).squeeze(1)
    return MinibatchPairing(x0_data, noise[partner.to(noise.device)])
