"""Nystrom: exact with all points as landmarks, monotone in nested landmark sets, terminates for tiny n."""

from __future__ import annotations

import time

import pytest
import torch

from atlas.transport import NystromKernel, gibbs_kernel, select_kernel_operator

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _points(m, d, seed):
    return torch.randn(m, d, generator=_gen(seed), dtype=F64)


def _relative_error(op, x, y, eps, cost="sqeuclidean"):
    exact = gibbs_kernel(x, y, eps, cost)
    return float(torch.linalg.norm(op.pairwise() - exact) / torch.linalg.norm(exact))


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_exact_when_every_point_is_a_landmark(cost, symmetric):
    x = _points(60, 3, 0)
    y = None if symmetric else _points(45, 3, 1)
    pool = 60 if symmetric else 105
    op = NystromKernel(x, y, eps=2.0, num_landmarks=pool, generator=_gen(2), cost=cost)
    assert op.num_landmarks == pool
    assert _relative_error(op, x, y, 2.0, cost) < 1e-6


def test_more_landmarks_than_points_means_all_points():
    x = _points(30, 2, 3)
    op = NystromKernel(x, eps=1.0, num_landmarks=500, generator=_gen(4))
    assert op.num_landmarks == 30 and sorted(op.landmark_indices.tolist()) == list(range(30))
    assert _relative_error(op, x, None, 1.0) < 1e-6


def test_error_is_non_increasing_on_nested_landmark_sets():
    x = _points(200, 2, 5)
    exact = gibbs_kernel(x, None, 0.5)
    previous_indices, previous_frobenius, previous_trace = None, float("inf"), float("inf")
    for landmarks in (2, 5, 10, 20, 40, 80, 160, 200):
        op = NystromKernel(x, eps=0.5, num_landmarks=landmarks, generator=_gen(6))
        indices = op.landmark_indices.tolist()
        if previous_indices is not None:
            assert indices[: len(previous_indices)] == previous_indices  # same seed: nested prefixes
        residual = exact - op.pairwise()
        frobenius, trace = float(torch.linalg.norm(residual)), float(residual.trace())
        assert frobenius <= previous_frobenius + 1e-10 and trace <= previous_trace + 1e-10
        assert trace >= -1e-8  # the residual is a Schur complement: PSD
        previous_indices, previous_frobenius, previous_trace = indices, frobenius, trace
    assert previous_frobenius < 1e-6


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_regression_tiny_n_terminates(n):
    # The reference's auto-tuning picked m = min(100, n // 10) = 0 landmarks for n < 10 and looped forever.
    x = _points(n, 4, 7)
    start = time.perf_counter()
    op = NystromKernel(x, eps=1.0, num_landmarks=100, generator=_gen(8))
    choice = select_kernel_operator(n, 4, memory_budget_bytes=1 << 20)
    assert time.perf_counter() - start < 5.0
    assert op.num_landmarks == n and _relative_error(op, x, None, 1.0) < 1e-6
    assert choice.kind == "direct"


def test_duplicated_points_are_handled_by_the_pseudo_inverse():
    base = _points(20, 2, 9)
    x = torch.cat([base, base, base[:5]])  # K_ll is singular when landmarks repeat
    op = NystromKernel(x, eps=1.0, num_landmarks=len(x), generator=_gen(10))
    assert op.rank <= 20 and bool(torch.isfinite(op.pairwise()).all())
    assert _relative_error(op, x, None, 1.0) < 1e-6


def test_symmetric_approximation_is_psd_and_error_estimate_is_measured():
    x = _points(150, 3, 11)
    op = NystromKernel(x, eps=1.0, num_landmarks=25, generator=_gen(12))
    assert torch.linalg.eigvalsh(op.pairwise()).min() >= -1e-10
    measured = float((op.pairwise() - gibbs_kernel(x, None, 1.0)).abs().mean())
    assert op.error_estimate(num_entries=150 * 150) == pytest.approx(measured, rel=1e-9)
    assert abs(op.error_estimate() - measured) < 0.2 * measured


def test_float32_uses_a_float32_cut_off():
    x = _points(80, 2, 13).float()
    op = NystromKernel(x, eps=1.0, num_landmarks=80, generator=_gen(14))
    assert op.rcond == pytest.approx(80 * torch.finfo(torch.float32).eps)
    assert _relative_error(op, x.double(), None, 1.0) < 1e-3


def test_generator_none_uses_the_global_rng():
    x = _points(100, 2, 15)
    first = NystromKernel(x, eps=1.0, num_landmarks=10).landmark_indices
    second = NystromKernel(x, eps=1.0, num_landmarks=10).landmark_indices
    assert not torch.equal(first, second)


def test_nystrom_argument_errors():
    x = _points(5, 2, 16)
    with pytest.raises(ValueError, match="num_landmarks"):
        NystromKernel(x, eps=1.0, num_landmarks=0)
    with pytest.raises(ValueError, match="rcond"):
        NystromKernel(x, eps=1.0, num_landmarks=3, rcond=2.0)
