"""The grid (FFT) operator against brute force: zero-padded = the dense kernel, circular = periodic convolution."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from atlas.transport import DirectKernel, FFTKernel
from atlas.transport.fft import fft_memory_bytes

F64 = torch.float64
GRIDS = [(7,), (8,), (5, 7), (6, 4), (3, 4, 5), (4, 4, 2)]


def _field(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _brute_force(grid_shape, spacing, eps, boundary, field):
    """Sum over all grid points of exp(-dist^2 / eps) * field, with explicit (periodic) index distances."""
    out = torch.zeros_like(field)
    indices = list(itertools.product(*(range(n) for n in grid_shape)))
    for i in indices:
        total = 0.0
        for j in indices:
            dist2 = 0.0
            for a, n in enumerate(grid_shape):
                gap = abs(i[a] - j[a])
                if boundary == "circular":
                    gap = min(gap, n - gap)
                dist2 += (gap * spacing[a]) ** 2
            total += math.exp(-dist2 / eps) * field[j].item()
        out[i] = total
    return out


@pytest.mark.parametrize("grid_shape", GRIDS)
@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_fft_equals_brute_force_convolution_on_odd_and_even_grids(grid_shape, boundary):
    spacing = (0.5, 1.0, 0.8)[: len(grid_shape)]
    op = FFTKernel(grid_shape, eps=1.3, spacing=spacing, boundary=boundary, dtype=F64)
    field = _field(grid_shape, 1)
    expected = _brute_force(grid_shape, spacing, 1.3, boundary, field)
    assert (op.apply(field) - expected).abs().max() < 1e-6
    torch.testing.assert_close(op.apply(field), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid_shape", GRIDS)
def test_zero_boundary_is_the_dense_kernel_between_grid_points(grid_shape):
    op = FFTKernel(grid_shape, eps=2.0, spacing=0.7, dtype=F64)
    dense = DirectKernel(op.points(), eps=2.0)
    field = _field((3, *grid_shape), 2)
    torch.testing.assert_close(op.pairwise(), dense.pairwise(), rtol=1e-13, atol=1e-15)
    flat = field.reshape(3, -1)
    torch.testing.assert_close(op.apply(field).reshape(3, -1), dense.apply(flat.T).T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_regression_delta_on_odd_grid_stays_centred(boundary):
    # The reference used fftshift instead of ifftshift: a delta at (2, 3) on a 5 x 7 grid peaked at (1, 2).
    delta = torch.zeros(5, 7, dtype=F64)
    delta[2, 3] = 1.0
    out = FFTKernel((5, 7), eps=1.0, boundary=boundary, dtype=F64).apply(delta)
    assert divmod(int(out.argmax()), 7) == (2, 3)
    torch.testing.assert_close(out, out.flip(0, 1))  # symmetric about the centre (2, 3)
    torch.testing.assert_close(out[2, 3], torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(out[3, 3], torch.tensor(math.exp(-1.0), dtype=F64))


def test_batched_fields_and_float32():
    op = FFTKernel((6, 5), eps=1.0)
    fields = _field((2, 3, 6, 5), 3).float()
    out = op.apply(fields)
    assert out.shape == fields.shape and out.dtype == torch.float32
    torch.testing.assert_close(out[1, 2], op.apply(fields[1, 2]))
    exact = FFTKernel((6, 5), eps=1.0, dtype=F64).apply(fields.double())
    assert (out.double() - exact).abs().max() < 1e-5


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_log_apply_is_exact_and_stable(boundary):
    op = FFTKernel((5, 6), eps=0.05, spacing=0.5, boundary=boundary, dtype=F64)
    log_v = _field((2, 5, 6), 4) - 800.0  # exp underflows to 0: the plain apply returns zeros
    expected = torch.logsumexp(torch.log(op.pairwise())[None] + log_v.reshape(2, 1, -1), dim=-1).reshape(2, 5, 6)
    torch.testing.assert_close(op.log_apply(log_v), expected, rtol=1e-12, atol=1e-9)
    assert bool((op.apply(log_v.exp()) == 0).all())
    moderate = FFTKernel((5, 6), eps=3.0, boundary=boundary, dtype=F64)
    torch.testing.assert_close(moderate.log_apply(log_v + 800.0), torch.log(moderate.apply((log_v + 800.0).exp())))
    if boundary == "zero":
        dense = DirectKernel(op.points(), eps=0.05)
        torch.testing.assert_close(op.log_apply(log_v[0]).reshape(-1), dense.log_apply(log_v[0].reshape(-1)))


def test_tiny_eps_relative_to_spacing_is_the_identity():
    op = FFTKernel((4, 5), eps=1e-3, spacing=1.0, dtype=F64)  # spacing^2 / eps = 1000 > 745: e^-1000 == 0
    field = _field((4, 5), 5)
    assert torch.equal(op.pairwise(), torch.eye(20, dtype=F64))
    torch.testing.assert_close(op.apply(field), field, rtol=0, atol=1e-14)


def test_transpose_and_shape():
    op = FFTKernel((3, 4, 2), eps=1.0, dtype=F64)
    field = _field((3, 4, 2), 6)
    torch.testing.assert_close(op.apply_T(field), op.apply(field))
    assert op.shape == (24, 24) and op.points().shape == (24, 3)
    assert op.memory_bytes == fft_memory_bytes((3, 4, 2), 8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FFTKernel((2, 2, 2, 2), eps=1.0), "1 to 3"),
        (lambda: FFTKernel((4, 0), eps=1.0), "1 to 3"),
        (lambda: FFTKernel((4, 4), eps=1.0, boundary="reflect"), "boundary"),
        (lambda: FFTKernel((4, 4), eps=1.0, spacing=(1.0,)), "spacing"),
        (lambda: FFTKernel((4, 4), eps=-1.0), "eps"),
        (lambda: FFTKernel((4, 4), eps=1.0).apply(torch.zeros(4, 5)), "\\(\\.\\.\\., \\*\\(4, 4\\)\\)"),
        (lambda: FFTKernel((4, 4), eps=1.0).apply(torch.zeros(4, 4, dtype=F64)), "dtype="),
        (lambda: FFTKernel((200, 200), eps=1.0).pairwise(), "apply\\(\\) on fields"),
    ],
)
def test_fft_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
