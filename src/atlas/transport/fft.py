"""The Gaussian kernel on a regular 1-, 2- or 3-D grid, applied as a separable convolution with real FFTs.

The grid points are ``p_i = i * spacing`` for multi-indices i (row-major / C order when flattened).  The Gaussian
factorises over the axes, ``exp(-||p_i - p_j||^2 / eps) = prod_a exp(-((i_a - j_a) s_a)^2 / eps)``, so ``K v`` is a
1-D convolution along each axis in turn, each done with ``rfft``/``irfft`` in O(N log n_a) (Solomon et al. 2015,
"Convolutional Wasserstein distances", use the same idea with the heat kernel).

Boundaries:

* ``"zero"``: linear convolution, zero-padded to a length >= 2 n_a - 1 so that nothing wraps around.  This is
  exactly the dense kernel matrix between the grid points, ``K_ij = exp(-||p_i - p_j||^2 / eps)``.
* ``"circular"``: the grid is a torus of period ``n_a * s_a`` per axis and the kernel is the Gibbs kernel of the
  squared periodic distance, ``prod_a exp(-(min(|i_a - j_a|, n_a - |i_a - j_a|) s_a)^2 / eps)``: a circular
  convolution of length n_a with no padding.

The 1-D kernels are laid out with offset 0 at index 0 (offset t at t and at L - t); no ``fftshift`` is involved,
which is what put the reference implementation one pixel off on odd grids.

Numerics: FFT convolution has an absolute rounding error of a few machine epsilons times ``max|v| * sum(k)``, so
outputs far below that (e.g. ``e^-60`` tails at small eps) are not relatively accurate and may even be slightly
negative.  Use :meth:`FFTKernel.log_apply` (exact, separable log-sum-exp) for log-domain Sinkhorn at small eps.
When ``spacing^2 / eps`` exceeds ~745 in float64 (~103 in float32) every off-diagonal entry underflows and the
kernel is numerically the identity.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .kernels import KernelOperator, check_eps

__all__ = ["FFTKernel", "fft_memory_bytes"]

BOUNDARIES = ("zero", "circular")
MAX_PAIRWISE_POINTS = 1 << 14


def _fft_length(size: int, boundary: str) -> int:
    """FFT length along one axis: n (circular) or the smallest 2^a 3^b 5^c >= 2n - 1 (zero padding)."""
    if boundary == "circular":
        return size
    length = 2 * size - 1
    while True:
        rest = length
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return length
        length += 1


def fft_memory_bytes(grid_shape: Sequence[int], dtype_bytes: int) -> int:
    """Workspace of one :meth:`FFTKernel.apply` on a single field: the padded field, its complex spectrum and the
    output (the operator itself holds nothing of size N)."""
    num_points = math.prod(grid_shape)
    pad_ratio = max(_fft_length(n, "zero") / n for n in grid_shape)
    return int(math.ceil((2 + 2 * pad_ratio) * num_points * dtype_bytes))


class FFTKernel(KernelOperator):
    """Gaussian kernel ``exp(-||p_i - p_j||^2 / eps)`` between the points of a regular grid, as a convolution.

    Operands are fields of shape ``(*grid_shape)`` or ``(batch, *grid_shape)`` (any leading dims), not flat
    vectors; ``shape`` is (N, N) with N = prod(grid_shape) for the flattened (row-major) matrix.

    Args:
        grid_shape: 1 to 3 positive sizes (n_0, ..., n_{D-1}).
        eps: regularisation, > 0, in squared units of ``spacing``.
        spacing: distance between neighbouring grid points, one number or one per axis.
        boundary: ``"zero"`` (exactly the dense kernel between the grid points) or ``"circular"`` (periodic).
        dtype, device: of the fields it applies to and of :meth:`pairwise`.
    """

    def __init__(
        self,
        grid_shape: Sequence[int],
        *,
        eps: float,
        spacing: Union[float, Sequence[float]] = 1.0,
        boundary: str = "zero",
        dtype: torch.dtype = torch.float32,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        grid_shape = tuple(grid_shape)
        bad_size = any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in grid_shape)
        if not 1 <= len(grid_shape) <= 3 or bad_size:
            raise ValueError(f"grid_shape must be 1 to 3 positive integers, got {grid_shape!r}")
        spacings = (spacing,) * len(grid_shape) if isinstance(spacing, (int, float)) else tuple(spacing)
        if len(spacings) != len(grid_shape) or not all(
            isinstance(s, (int, float)) and 0.0 < float(s) < math.inf for s in spacings
        ):
            raise ValueError(f"spacing must be one positive number or {len(grid_shape)} of them, got {spacing!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if not dtype.is_floating_point or dtype.is_complex:
            raise ValueError(f"dtype must be a real floating-point dtype, got {dtype}")
        self.grid_shape = grid_shape
        self.eps = check_eps(eps)
        self.cost = "sqeuclidean"
        self.spacing = tuple(float(s) for s in spacings)
        self.boundary = boundary
        self.dtype, self.device = dtype, torch.device(device if device is not None else "cpu")
        num_points = math.prod(grid_shape)
        self.shape = (num_points, num_points)

    def points(self) -> Tensor:
        """Grid coordinates (N, D) in row-major order: the points this kernel is the dense kernel between."""
        axes = [
            torch.arange(n, dtype=self.dtype, device=self.device) * s for n, s in zip(self.grid_shape, self.spacing)
        ]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(self.grid_shape))

    def _offsets(self, axis: int, length: int) -> Tensor:
        """Distance (float64, in spacing units times spacing) represented by each of ``length`` positions."""
        size = self.grid_shape[axis]
        t = torch.arange(length, dtype=torch.float64, device=self.device)
        offsets = torch.minimum(t, length - t)  # offset t at index t and at index length - t
        if self.boundary == "zero":
            offsets = offsets.masked_fill((t >= size) & (length - t >= size), math.inf)  # padding: no kernel mass
        return offsets * self.spacing[axis]

    def _spectrum(self, axis: int) -> tuple[int, Tensor]:
        length = _fft_length(self.grid_shape[axis], self.boundary)
        kernel = self._offsets(axis, length).square().div(-self.eps).exp()
        return length, torch.fft.rfft(kernel).real.to(self.dtype)  # a symmetric kernel has a real spectrum

    def _check_field(self, v: Tensor, name: str) -> None:
        ndim = len(self.grid_shape)
        if not isinstance(v, Tensor) or v.ndim < ndim or tuple(v.shape[v.ndim - ndim :]) != self.grid_shape:
            got = f"shape {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{name} must be a field of shape (..., *{self.grid_shape}), got {got}")
        if v.dtype != self.dtype or v.device != self.device:
            raise ValueError(
                f"{name} is {v.dtype} on {v.device} but the FFTKernel was made for {self.dtype} on {self.device}; "
                f"convert it or build FFTKernel(..., dtype={v.dtype}, device='{v.device}')"
            )

    def apply(self, v: Tensor) -> Tensor:
        """``K v`` for a field v (..., *grid_shape); returns the same shape."""
        self._check_field(v, "v")
        out = v
        for axis in range(len(self.grid_shape)):
            dim = v.ndim - len(self.grid_shape) + axis
            length, spectrum = self._spectrum(axis)
            shape = [1] * v.ndim
            shape[dim] = spectrum.shape[0]
            spectrum_of_out = torch.fft.rfft(out, n=length, dim=dim) * spectrum.view(shape)
            convolved = torch.fft.irfft(spectrum_of_out, n=length, dim=dim)
            out = convolved.narrow(dim, 0, self.grid_shape[axis])
        return out.contiguous()

    def apply_T(self, w: Tensor) -> Tensor:
        """``K^T w = K w``: the kernel is symmetric."""
        return self.apply(w)

    def log_apply(self, log_v: Tensor) -> Tensor:
        """``log(K exp(log_v))`` for a field (..., *grid_shape), exact: a log-sum-exp along each axis in turn.

        Costs O(N * n_a) time and memory per axis (a dense 1-D log-kernel, not an FFT); ``-inf`` is allowed.
        """
        self._check_field(log_v, "log_v")
        out = log_v
        for axis, size in enumerate(self.grid_shape):
            dim = log_v.ndim - len(self.grid_shape) + axis
            index = torch.arange(size, dtype=torch.float64, device=self.device)
            gap = (index[:, None] - index[None, :]).abs()
            if self.boundary == "circular":
                gap = torch.minimum(gap, size - gap)
            log_kernel = (gap * self.spacing[axis]).square().div(-self.eps).to(self.dtype)  # (n_a out, n_a in)
            moved = out.movedim(dim, -1)
            out = torch.logsumexp(moved.unsqueeze(-2) + log_kernel, dim=-1).movedim(-1, dim)
        return out.contiguous()

    def log_apply_T(self, log_w: Tensor) -> Tensor:
        return self.log_apply(log_w)

    def pairwise(self) -> Tensor:
        """The dense (N, N) kernel (row-major flattening); only for N <= 16384."""
        if self.shape[0] > MAX_PAIRWISE_POINTS:
            raise ValueError(
                f"pairwise() would build a {self.shape[0]} x {self.shape[0]} matrix; it is limited to grids of at "
                f"most {MAX_PAIRWISE_POINTS} points. Use apply() on fields instead"
            )
        matrix = None
        for axis, size in enumerate(self.grid_shape):
            index = torch.arange(size, dtype=torch.float64, device=self.device)
            gap = (index[:, None] - index[None, :]).abs()
            if self.boundary == "circular":
                gap = torch.minimum(gap, size - gap)
            factor = (gap * self.spacing[axis]).square().div(-self.eps).exp()
            matrix = factor if matrix is None else torch.kron(matrix, factor)
        return matrix.to(self.dtype)

    def error_estimate(self) -> float:
        """0.0: the operator is the exact kernel on the grid (apply has FFT rounding error, see the module notes)."""
        return 0.0

    @property
    def memory_bytes(self) -> int:
        return fft_memory_bytes(self.grid_shape, torch.empty((), dtype=self.dtype).element_size())
