"""Choosing a kernel operator: a pure function of (number of points, dimension, grid or not, memory budget).

The rules, in order (the reference implementation's "auto" was a chain of magic thresholds that then replaced
its own FFT choice by RFF; here every branch is budgeted and explained in :attr:`KernelChoice.reason`):

1. A regular grid (``grid_shape`` given, Gaussian cost): ``"fft"``, exact and O(N) memory.
2. The dense matrices fit the budget: ``"direct"``, exact.
3. Otherwise a low-rank or random-feature approximation, sized to the budget:
   ``"nystrom"`` for ``dim <= NYSTROM_MAX_DIM`` (the Gaussian kernel's spectrum decays fast in low dimension, so a
   few hundred landmarks capture it), ``"rff"`` above (its error ``<= 1/sqrt(D)`` does not depend on the
   dimension).  RFF uses ``D = ceil(1 / target_error^2)`` features, or as many as fit; Nystrom uses
   ``min(points, MAX_LANDMARKS)`` landmarks, or as many as fit (its error depends on the data: measure it with
   ``error_estimate()``).  If the preferred kind does not fit even at its minimum size the other is tried.
4. Nothing fits: ``ValueError`` saying how much memory the smallest option needs.

Memory estimates use the operators' own formulas (``*_memory_bytes``) and assume two distinct point sets (m, n);
for y = x the built operator needs less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .direct import DirectKernel, direct_memory_bytes
from .fft import FFTKernel, fft_memory_bytes
from .kernels import KernelOperator, check_cost
from .nystrom import NystromKernel, nystrom_memory_bytes
from .rff import RFFKernel, rff_memory_bytes

__all__ = ["KernelChoice", "build_kernel_operator", "select_kernel_operator"]

NYSTROM_MAX_DIM = 16
MAX_LANDMARKS = 1024
MIN_LANDMARKS = 16
MIN_FEATURES = 64


@dataclass(frozen=True)
class KernelChoice:
    """The operator :func:`select_kernel_operator` picked.

    Attributes:
        kind: ``"fft"``, ``"direct"``, ``"nystrom"`` or ``"rff"``.
        params: what :func:`build_kernel_operator` needs (sizes, cost, ``num_features`` / ``num_landmarks`` /
            ``grid_shape``).
        estimated_bytes: the operator's memory estimate (<= the budget).
        reason: why this kind and size, in words.
        expected_error: expected mean absolute entrywise error: 0.0 for exact kinds, the ``1/sqrt(D)`` bound for
            RFF, NaN for Nystrom (data dependent).
    """

    kind: str
    params: dict = field(default_factory=dict)
    estimated_bytes: int = 0
    reason: str = ""
    expected_error: float = 0.0


def _sizes(num_points) -> tuple[int, int]:
    pair = (num_points, num_points) if isinstance(num_points, int) and not isinstance(num_points, bool) else num_points
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in pair)
    ):
        raise ValueError(f"num_points must be a positive integer or a pair (m, n) of them, got {num_points!r}")
    return int(pair[0]), int(pair[1])


def _largest_fitting(size_to_bytes, lower: int, upper: int, budget: int) -> int:
    """The largest s in [lower, upper] with size_to_bytes(s) <= budget (bytes increase with s), or 0 if none."""
    if upper < lower or size_to_bytes(lower) > budget:
        return 0
    while lower < upper:
        middle = (lower + upper + 1) // 2
        lower, upper = (middle, upper) if size_to_bytes(middle) <= budget else (lower, middle - 1)
    return lower


def select_kernel_operator(
    num_points: Union[int, tuple[int, int]],
    dim: int,
    *,
    grid_shape: Optional[Sequence[int]] = None,
    memory_budget_bytes: int,
    dtype_bytes: int = 4,
    target_error: float = 0.02,
    cost: str = "sqeuclidean",
) -> KernelChoice:
    """Pick the kernel operator for ``num_points`` points (n, or (m, n) for two sets) in ``dim`` dimensions.

    Args:
        num_points: n (two sets of n points) or (m, n).
        dim: d, the dimension of the points (``len(grid_shape)`` for a grid).
        grid_shape: the grid when the points are the nodes of a regular grid (then prod(grid_shape) = n = m).
        memory_budget_bytes: the most memory the operator may use.
        dtype_bytes: bytes per element (4 for float32, 8 for float64).
        target_error: desired mean absolute entrywise error of an RFF approximation.
        cost: ``"sqeuclidean"`` or ``"euclidean"`` (no FFT for the latter).

    Returns:
        A :class:`KernelChoice`.  Pure: the same arguments give the same choice.
    """
    m, n = _sizes(num_points)
    check_cost(cost)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, int) or memory_budget_bytes < 1:
        raise ValueError(f"memory_budget_bytes must be a positive integer, got {memory_budget_bytes!r}")
    if dtype_bytes not in (2, 4, 8):
        raise ValueError(f"dtype_bytes must be 2, 4 or 8, got {dtype_bytes!r}")
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must lie in (0, 1), got {target_error!r}; 0.02 needs 2500 RFF features")
    budget = memory_budget_bytes
    sizes = {"num_points": (m, n), "dim": dim, "cost": cost}

    if grid_shape is not None:
        grid_shape = tuple(grid_shape)
        if math.prod(grid_shape) != m or m != n or len(grid_shape) != dim:
            raise ValueError(
                f"grid_shape {grid_shape} must have prod = num_points ({m}, {n}) and len = dim ({dim})"
            )
        if cost != "sqeuclidean":
            raise ValueError("the FFT operator needs cost='sqeuclidean'; pass grid_shape=None to treat the grid "
                             "as a point cloud")
        needed = fft_memory_bytes(grid_shape, dtype_bytes)
        if needed > budget:
            raise ValueError(f"the FFT operator on grid {grid_shape} needs {needed} bytes, more than "
                             f"memory_budget_bytes={budget}; raise the budget")
        return KernelChoice("fft", {**sizes, "grid_shape": grid_shape, "boundary": "zero"}, needed,
                            f"regular grid {grid_shape}: exact separable FFT convolution in O(N log N)", 0.0)

    dense = direct_memory_bytes(m, n, dtype_bytes)
    if dense <= budget:
        return KernelChoice("direct", sizes, dense, f"the dense {m} x {n} kernel fits the budget ({dense} <= "
                            f"{budget} bytes): exact", 0.0)

    def nystrom(reason: str) -> Optional[KernelChoice]:
        most = min(m + n, MAX_LANDMARKS)
        landmarks = _largest_fitting(lambda s: nystrom_memory_bytes(m, n, s, dtype_bytes), min(MIN_LANDMARKS, most),
                                     most, budget)
        if landmarks == 0:
            return None
        capped = "" if landmarks == most else f" (capped by the budget; {most} wanted)"
        return KernelChoice("nystrom", {**sizes, "num_landmarks": landmarks},
                            nystrom_memory_bytes(m, n, landmarks, dtype_bytes),
                            f"{reason}: Nystrom with {landmarks} landmarks{capped}; error is data dependent, "
                            "check error_estimate()", math.nan)

    def rff(reason: str) -> Optional[KernelChoice]:
        wanted = math.ceil(1.0 / target_error**2)
        features = _largest_fitting(lambda s: rff_memory_bytes(m, n, dim, s, dtype_bytes),
                                    min(MIN_FEATURES, wanted), wanted, budget)
        if features == 0:
            return None
        bound = 1.0 / math.sqrt(features)
        missed = "" if features == wanted else f"; target_error={target_error} NOT met within the budget"
        return KernelChoice("rff", {**sizes, "num_features": features, "orthogonal": True},
                            rff_memory_bytes(m, n, dim, features, dtype_bytes),
                            f"{reason}: orthogonal RFF with {features} features, expected mean error <~ "
                            f"{bound:.3g}{missed}",
                            bound)

    low = dim <= NYSTROM_MAX_DIM
    why = (f"dense kernel needs {dense} > {budget} bytes; dim {dim} "
           f"{'<=' if low else '>'} {NYSTROM_MAX_DIM} (Nystrom limit)")
    preferred, other = (nystrom, rff) if low else (rff, nystrom)
    choice = preferred(why)
    if choice is None:
        choice = other(f"{why}; {preferred.__name__} does not fit even at its minimum size")
    if choice is not None:
        return choice
    smallest = min(nystrom_memory_bytes(m, n, MIN_LANDMARKS, dtype_bytes),
                   rff_memory_bytes(m, n, dim, MIN_FEATURES, dtype_bytes))
    raise ValueError(
        f"no kernel operator for {m} x {n} points in {dim} dimensions fits memory_budget_bytes={budget}: the "
        f"smallest option needs {smallest} bytes; raise the budget or use fewer points"
    )


def build_kernel_operator(
    choice: KernelChoice,
    x: Optional[Tensor] = None,
    y: Optional[Tensor] = None,
    *,
    eps: float,
    generator: Optional[torch.Generator] = None,
    spacing: Union[float, Sequence[float]] = 1.0,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> KernelOperator:
    """Build the operator ``choice`` describes.

    Point kinds need x (m, d) and optionally y (n, d) with the sizes the choice was made for.  ``"fft"`` takes no
    points (x must be None) and uses ``spacing``, ``dtype`` and ``device``, which the point kinds ignore.
    """
    params = choice.params
    cost = params.get("cost", "sqeuclidean")
    if choice.kind == "fft":
        if x is not None or y is not None:
            raise ValueError("an 'fft' choice acts on grid fields, not points: call with x=None (grid spacing, "
                             "dtype and device go in spacing=, dtype=, device=)")
        return FFTKernel(params["grid_shape"], eps=eps, spacing=spacing, boundary=params["boundary"], dtype=dtype,
                         device=device)
    if x is None:
        raise ValueError(f"a {choice.kind!r} choice needs the points x (m, d)")
    m, n = params["num_points"]
    got = (x.shape[0], x.shape[0] if y is None else y.shape[0], x.shape[-1])
    if got != (m, n, params["dim"]):
        raise ValueError(f"the choice was made for (m, n, d) = {(m, n, params['dim'])}, got points giving {got}; "
                         "call select_kernel_operator with these sizes")
    if choice.kind == "direct":
        return DirectKernel(x, y, eps=eps, cost=cost)
    if choice.kind == "rff":
        return RFFKernel(x, y, eps=eps, num_features=params["num_features"], orthogonal=params["orthogonal"],
                         generator=generator, cost=cost)
    if choice.kind == "nystrom":
        return NystromKernel(x, y, eps=eps, num_landmarks=params["num_landmarks"], generator=generator, cost=cost)
    raise ValueError(f"unknown kernel kind {choice.kind!r}; expected 'fft', 'direct', 'nystrom' or 'rff'")
