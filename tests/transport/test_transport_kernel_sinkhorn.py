"""Sinkhorn's scaling iterations on kernel operators, checked against the exact log-domain solver."""

import pytest
import torch

from atlas.transport import (DirectKernel, FFTKernel, NystromKernel, RFFKernel, kernel_sinkhorn, pair_minibatch,
                             sinkhorn)

F64 = torch.float64


def clouds(n=40, m=30, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), 1.5 * torch.randn(m, d, generator=g, dtype=F64) + 0.5


def test_direct_operator_matches_the_log_domain_solver():
    x, y = clouds()
    exact = sinkhorn(x, y, eps=1.0, tol=1e-12)
    result = kernel_sinkhorn(DirectKernel(x, y, eps=1.0), max_iter=10_000, tol=1e-12)
    assert result.converged and result.marginal_error <= 1e-12
    torch.testing.assert_close(result.plan(), exact.plan(), rtol=0, atol=1e-12)
    w = torch.randn(30, 2, dtype=F64)
    torch.testing.assert_close(result.apply_plan(w), exact.plan() @ w, rtol=0, atol=1e-12)
    plan = result.plan()
    torch.testing.assert_close(plan.sum(1), torch.full((40,), 1 / 40, dtype=F64), rtol=0, atol=1e-12)


def test_nystrom_with_every_point_as_landmark_is_exact():
    x, y = clouds()
    exact = sinkhorn(x, y, eps=2.0, tol=1e-12).plan()
    result = kernel_sinkhorn(NystromKernel(x, y, eps=2.0, num_landmarks=70), max_iter=10_000, tol=1e-11)
    torch.testing.assert_close(result.plan(), exact, rtol=0, atol=1e-8)


def test_weighted_marginals():
    x, y = clouds()
    a = torch.rand(40, dtype=F64, generator=torch.Generator().manual_seed(1)) + 0.1
    b = torch.rand(30, dtype=F64, generator=torch.Generator().manual_seed(2)) + 0.1
    a, b = a / a.sum(), b / b.sum()
    plan = kernel_sinkhorn(DirectKernel(x, y, eps=1.0), a, b, max_iter=10_000, tol=1e-12).plan()
    torch.testing.assert_close(plan.sum(1), a, rtol=0, atol=1e-12)
    torch.testing.assert_close(plan.sum(0), b, rtol=0, atol=1e-12)


def test_negative_approximation_raises_instead_of_clamping():
    x, y = clouds(d=8)
    rff = RFFKernel(x, y, eps=0.05, num_features=64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="non-positive|negative"):
        kernel_sinkhorn(rff, max_iter=200).conditional_rows()


def test_underflow_names_the_exact_solver():
    x, y = clouds()
    with pytest.raises(ValueError, match="log-domain solver"):
        kernel_sinkhorn(DirectKernel(x, y, eps=1e-4))


def test_grid_operator_and_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="grid_sinkhorn"):
        kernel_sinkhorn(FFTKernel((8,), eps=1.0))
    x, y = clouds()
    op = DirectKernel(x, y, eps=1.0)
    with pytest.raises(ValueError, match="max_iter"):
        kernel_sinkhorn(op, max_iter=0)
    with pytest.raises(ValueError, match="equal total mass"):
        kernel_sinkhorn(op, torch.full((40,), 1 / 40, dtype=F64), torch.full((30,), 1.0, dtype=F64))


def test_not_converging_warns():
    x, y = clouds()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = kernel_sinkhorn(DirectKernel(x, y, eps=0.05), max_iter=2, tol=1e-12)
    assert not result.converged and result.n_iter == 2


def test_sb_pairing_through_a_kernel_factory_matches_the_exact_rows():
    """With an exact operator from the factory the row draws are those of the exact log-domain path."""
    x, y = clouds(n=16, m=16, d=5)
    exact = pair_minibatch(x, y, "sb", eps=0.5, generator=torch.Generator().manual_seed(3))
    via_factory = pair_minibatch(x, y, "sb", eps=0.5, generator=torch.Generator().manual_seed(3),
                                 kernel_factory=lambda a, b, eps: NystromKernel(a, b, eps=eps, num_landmarks=32))
    assert torch.equal(exact.noise, via_factory.noise)
    calls = []
    fallback = pair_minibatch(x, y, "sb", eps=0.5, generator=torch.Generator().manual_seed(3),
                              kernel_factory=lambda a, b, eps: calls.append(eps))
    assert torch.equal(fallback.noise, exact.noise) and len(calls) == 1  # None from the factory: exact solver
