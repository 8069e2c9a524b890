"""Stable distances, the Gibbs-kernel convention, the dense operator and the contract every operator shares."""

from __future__ import annotations

import math

import pytest
import torch
from transport_testing import held_bytes

from atlas.transport import (
    DirectKernel,
    FFTKernel,
    KernelOperator,
    NystromKernel,
    RFFKernel,
    cost_matrix,
    gaussian_kernel,
    gibbs_kernel,
    squared_distances,
)

F64 = torch.float64


def _points(m, d, seed=0, dtype=F64, offset=0.0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, d, generator=gen, dtype=F64) * scale + offset).to(dtype)


def _reference_sq(x, y):
    """Difference form in float64: the slow, obviously right definition."""
    return (x.double()[:, None, :] - y.double()[None, :, :]).square().sum(-1)


# --- squared distances and the kernel convention -------------------------------------------------------------


def test_squared_distances_match_difference_form():
    x, y = _points(30, 5, 0), _points(20, 5, 1, offset=3.0)
    torch.testing.assert_close(squared_distances(x, y), _reference_sq(x, y), rtol=1e-12, atol=1e-12)
    sym = squared_distances(x)
    assert torch.equal(sym, sym.T) and bool((sym.diagonal() == 0).all())


def test_kernel_convention_is_exp_minus_squared_distance_over_eps():
    x, y = _points(7, 3, 0), _points(9, 3, 1)
    eps = 0.7
    torch.testing.assert_close(gaussian_kernel(x, y, eps), torch.exp(-_reference_sq(x, y) / eps))
    torch.testing.assert_close(gibbs_kernel(x, y, eps, "euclidean"), torch.exp(-_reference_sq(x, y).sqrt() / eps))
    torch.testing.assert_close(cost_matrix(x, y, "euclidean"), _reference_sq(x, y).sqrt())
    h = 0.5  # a Gaussian of bandwidth h is eps = 2 h^2
    torch.testing.assert_close(gaussian_kernel(x, y, 2 * h * h), torch.exp(-_reference_sq(x, y) / (2 * h * h)))


def test_regression_unit_diagonal_in_float32_far_from_origin_at_small_eps():
    # The reference used |x|^2 + |y|^2 - 2 x.y in float32: the diagonal became e^-50 at d = 16, eps = 1e-4.
    x = _points(64, 16, 3, dtype=torch.float32, offset=1000.0)
    assert bool((squared_distances(x).diagonal() == 0).all())
    kernel = gaussian_kernel(x, None, 1e-4)
    assert bool((kernel.diagonal() == 1).all())
    twin = x.clone()  # a different tensor holding the same points: still exact zeros
    assert bool((squared_distances(x, twin).diagonal() == 0).all())
    assert bool((DirectKernel(x, eps=1e-4).pairwise().diagonal() == 1).all())


def test_near_duplicates_far_from_origin_are_relatively_accurate_in_float32():
    x = _points(50, 16, 4, dtype=torch.float32, offset=500.0)
    y = x + 1e-2 * _points(50, 16, 5, dtype=torch.float32)
    exact = _reference_sq(x, y)
    got = squared_distances(x, y).double()
    diag_rel = ((got.diagonal() - exact.diagonal()).abs() / exact.diagonal()).max()
    assert diag_rel < 1e-3
    assert ((got - exact).abs() / exact).max() < 1e-3


def test_squared_distances_are_differentiable():
    x, y = _points(4, 3, 0).requires_grad_(), _points(5, 3, 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: squared_distances(a, b), (x, y))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: squared_distances(torch.zeros(3)), "shape \\(m, d\\)"),
        (lambda: squared_distances(torch.zeros(3, 2), torch.zeros(3, 4)), "d = 2"),
        (lambda: squared_distances(torch.zeros(3, 2), torch.zeros(3, 2, dtype=F64)), "dtype and device"),
        (lambda: gaussian_kernel(torch.zeros(3, 2), None, 0.0), "eps"),
        (lambda: gaussian_kernel(torch.zeros(3, 2), None, float("nan")), "eps"),
        (lambda: gibbs_kernel(torch.zeros(3, 2), None, 1.0, "cosine"), "sqeuclidean"),
    ],
)
def test_argument_errors_say_what_was_wrong(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the dense operator ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_direct_is_symmetric_psd_with_unit_diagonal(cost):
    x = _points(300, 2, 6)
    kernel = DirectKernel(x, eps=1.0, cost=cost).pairwise()
    assert torch.equal(kernel, kernel.T) and bool((kernel.diagonal() == 1).all())
    assert torch.linalg.eigvalsh(kernel).min() >= -1e-8


def test_regression_no_stale_cache_between_inputs_of_the_same_shape():
    # The reference cached the Gram matrix by shape and used step k-1's points at step k.
    x1, x2 = _points(40, 3, 7), _points(40, 3, 8)
    v = _points(40, 1, 9)[:, 0]
    first = DirectKernel(x1, eps=0.5)
    before = first.apply(v)
    second = DirectKernel(x2, eps=0.5)
    torch.testing.assert_close(second.apply(v), gaussian_kernel(x2, None, 0.5) @ v)
    torch.testing.assert_close(first.apply(v), before)
    assert not torch.allclose(second.apply(v), before)


def test_direct_log_apply_is_exact_where_the_plain_kernel_underflows():
    x, y = _points(30, 4, 10), _points(25, 4, 11)
    eps = 1e-3
    log_v = -1000.0 + _points(25, 2, 12)  # exp(log_v) underflows to 0 in float64
    op = DirectKernel(x, y, eps=eps)
    reference = torch.logsumexp(-_reference_sq(x, y)[:, :, None] / eps + log_v[None], dim=1)
    torch.testing.assert_close(op.log_apply(log_v), reference, rtol=1e-12, atol=1e-9)
    assert bool(torch.isfinite(op.log_apply(log_v)).all()) and bool((op.apply(log_v.exp()) == 0).all())
    reference_t = torch.logsumexp(-_reference_sq(x, y)[:, :, None] / eps + _points(30, 2, 13)[:, None], dim=0)
    torch.testing.assert_close(op.log_apply_T(_points(30, 2, 13)), reference_t, rtol=1e-12, atol=1e-9)
    moderate = DirectKernel(x, y, eps=2.0)
    log_w = _points(25, 1, 14)[:, 0]
    torch.testing.assert_close(moderate.log_apply(log_w), torch.log(moderate.apply(log_w.exp())))


def test_direct_holds_the_cost_matrix_for_log_domain_solvers():
    x, y = _points(6, 2, 15), _points(8, 2, 16)
    op = DirectKernel(x, y, eps=0.3)
    torch.testing.assert_close(op.cost_matrix, _reference_sq(x, y))
    torch.testing.assert_close(op.pairwise(), torch.exp(-op.cost_matrix / 0.3))
    assert op.error_estimate() == 0.0


def test_approximate_operators_have_no_log_domain():
    x = _points(10, 2, 17)
    with pytest.raises(NotImplementedError, match="DirectKernel or FFTKernel"):
        RFFKernel(x, eps=1.0, num_features=8, generator=torch.Generator().manual_seed(0)).log_apply(x[:, 0])


# --- the contract every operator shares ----------------------------------------------------------------------


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


OPERATORS = {
    "direct": lambda x, y: DirectKernel(x, y, eps=1.5),
    "direct-symmetric": lambda x, y: DirectKernel(x, eps=1.5),
    "direct-laplacian": lambda x, y: DirectKernel(x, y, eps=1.5, cost="euclidean"),
    "rff": lambda x, y: RFFKernel(x, y, eps=1.5, num_features=300, generator=_gen()),
    "rff-orthogonal-symmetric": lambda x, y: RFFKernel(x, eps=1.5, num_features=300, orthogonal=True, generator=_gen()),
    "rff-laplacian": lambda x, y: RFFKernel(x, y, eps=1.5, num_features=300, generator=_gen(), cost="euclidean"),
    "nystrom": lambda x, y: NystromKernel(x, y, eps=1.5, num_landmarks=12, generator=_gen()),
    "nystrom-symmetric": lambda x, y: NystromKernel(x, eps=1.5, num_landmarks=12, generator=_gen()),
    "nystrom-laplacian": lambda x, y: NystromKernel(
        x, y, eps=1.5, num_landmarks=12, generator=_gen(), cost="euclidean"
    ),
}



@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_contract(name):
    x, y = _points(23, 3, 20), _points(17, 3, 21)
    op = OPERATORS[name](x, y)
    assert isinstance(op, KernelOperator)
    m, n = op.shape
    v, w = _points(n, 4, 22), _points(m, 4, 23)
    dense = op.pairwise()
    assert dense.shape == (m, n)
    torch.testing.assert_close(op.apply(v), dense @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.apply_T(w), dense.T @ w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.apply(v[:, 1]), op.apply(v)[:, 1], rtol=1e-12, atol=1e-12)
    # adjointness <K v, w> = <v, K^T w>
    assert math.isclose(float((op.apply(v) * w).sum()), float((v * op.apply_T(w)).sum()), rel_tol=1e-10, abs_tol=1e-12)
    assert op.error_estimate() >= 0.0
    assert 0 < held_bytes(op) <= op.memory_bytes
    with pytest.raises(ValueError, match=f"\\({n},\\) or \\({n}, k\\)"):
        op.apply(torch.zeros(n + 1, dtype=F64))
    with pytest.raises(ValueError, match="convert it"):
        op.apply(torch.zeros(n, dtype=torch.float32))


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_fft_operator_contract(boundary):
    op = FFTKernel((5, 6), eps=3.0, boundary=boundary, dtype=F64)
    v, w = _points(2, 30, 24).reshape(2, 5, 6), _points(2, 30, 25).reshape(2, 5, 6)
    dense = op.pairwise()
    torch.testing.assert_close(op.apply(v).reshape(2, -1), v.reshape(2, -1) @ dense.T, rtol=1e-12, atol=1e-12)
    assert math.isclose(float((op.apply(v) * w).sum()), float((v * op.apply_T(w)).sum()), rel_tol=1e-10)
    assert op.error_estimate() == 0.0 and op.memory_bytes > 0
