"""Entropic OT (atlas.transport.entropic): marginals, limits in eps, the Gaussian closed form, duality, the grid
solver against the point-cloud solver, and regressions for the reference implementation's defects
(atlas-reference.md, sec. 2.4 and P0 item 5)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from atlas.transport.kernels import squared_distances
from atlas.transport import grid_sinkhorn, sinkhorn
from atlas.transport.convolutional import FFT_MAX_RANGE, FFT_MIN_SIZE, MATMUL_MAX_RANGE

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _marginal_violation(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    return float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum())


def _clouds(n=120, m=90, d=3, seed=0):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = 1.5 * torch.randn(m, d, generator=g, dtype=F64) + 1.0
    a = torch.rand(n, generator=g, dtype=F64) + 0.1
    a[3] = 0.0  # a point without mass must not break anything
    b = torch.rand(m, generator=g, dtype=F64) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("max_dense_bytes", [1 << 30, 0], ids=["scaling", "blockwise-log"])
@pytest.mark.parametrize("eps", [2.0, 0.3])
def test_marginals_after_convergence(eps, max_dense_bytes):
    x, y, a, b = _clouds()
    result = sinkhorn(x, y, a, b, eps=eps, max_dense_bytes=max_dense_bytes)
    assert result.converged and result.method == ("scaling" if max_dense_bytes else "log")
    assert _marginal_violation(result.plan(), a, b) < 1e-9
    assert result.marginal_error <= 1e-9


def test_blockwise_and_dense_agree_and_plan_operators_match_plan():
    x, y, a, b = _clouds()
    dense = sinkhorn(x, y, a, b, eps=0.5)
    blockwise = sinkhorn(x, y, a, b, eps=0.5, max_dense_bytes=0)
    plan = dense.plan()
    assert torch.allclose(plan, blockwise.plan(), atol=1e-12, rtol=0)
    v = torch.randn(y.shape[0], 2, generator=_gen(1), dtype=F64)
    w = torch.randn(x.shape[0], generator=_gen(2), dtype=F64)
    assert torch.allclose(dense.apply_plan(v), plan @ v, atol=1e-14, rtol=1e-12)
    assert torch.allclose(dense.transposed().apply_plan(w), plan.T @ w, atol=1e-14, rtol=1e-12)


def test_plan_formula_and_barycentric_map_use_row_normalised_plan():
    # sec. 2.4: the reference weighted columns by f_j g_j; the entropic map is the row-normalised plan.
    x, y, a, b = _clouds()
    result = sinkhorn(x, y, a, b, eps=0.5)
    cost = squared_distances(x, y)
    expected = a[:, None] * b[None, :] * torch.exp((result.f[:, None] + result.g[None, :] - cost) / result.eps)
    plan = result.plan()
    assert torch.allclose(plan, expected, atol=1e-15, rtol=1e-12)
    rows = plan.sum(1, keepdim=True)
    mapped = result.barycentric_map()
    keep = rows[:, 0] > 0
    assert torch.allclose(mapped[keep], (plan @ y)[keep] / rows[keep], atol=1e-12)
    assert torch.isfinite(mapped).all()  # also at the massless point a[3] = 0
    assert torch.allclose(result.barycentric_map(x[:10]), mapped[:10], atol=1e-12)


def test_1d_small_eps_barycentric_map_is_sorted_quantile_matching():
    n = 32
    q = (torch.arange(n, dtype=F64) + 0.5) / n
    g = _gen(0)
    x = q[torch.randperm(n, generator=g)][:, None]
    y = torch.special.ndtri(q)[torch.randperm(n, generator=g)][:, None]
    sorted_match = torch.empty_like(y)
    sorted_match[x[:, 0].argsort()] = y[y[:, 0].argsort()]
    result = sinkhorn(x, y, eps=1e-4)
    assert result.converged
    assert float((result.barycentric_map() - sorted_match).abs().max()) < 1e-3
    # a larger eps blurs the map: the test above is not vacuous
    assert float((sinkhorn(x, y, eps=1e-2).barycentric_map() - sorted_match).abs().max()) > 1e-2


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def _whitened(n: int, d: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, d, generator=_gen(seed), dtype=F64)
    z = z - z.mean(0)
    return z @ torch.linalg.inv(_sqrtm(z.T @ z / n))


@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_gaussian_plan_matches_closed_form(eps):
    """Entropic OT between N(m_a, A) and N(m_b, B) (Janati et al. 2020, with their 2 sigma^2 = our eps): the plan
    is Gaussian with cross-covariance C = 1/2 A^1/2 ((4 A^1/2 B A^1/2 + eps^2/4 I)^1/2 - eps/2 I) A^-1/2."""
    A = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    B = torch.tensor([[0.8, -0.2], [-0.2, 1.2]], dtype=F64)
    mean_a, mean_b = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([2.0, -1.0], dtype=F64)
    x = _whitened(600, 2, seed=1) @ _sqrtm(A) + mean_a
    y = _whitened(600, 2, seed=2) @ _sqrtm(B) + mean_b
    result = sinkhorn(x, y, eps=eps)
    plan = result.plan()
    root = _sqrtm(A)
    half = eps / 2 * torch.eye(2, dtype=F64)
    cross = 0.5 * root @ (_sqrtm(4 * root @ B @ root + half @ half) - half) @ torch.linalg.inv(root)
    expected_cov = torch.cat([torch.cat([A, cross], 1), torch.cat([cross.T, B], 1)])
    plan_mean = torch.cat([plan.sum(1) @ x, plan.sum(0) @ y])
    xc, yc = x - plan_mean[:2], y - plan_mean[2:]
    plan_cross = xc.T @ plan @ yc
    plan_cov = torch.cat([torch.cat([xc.T @ (plan.sum(1)[:, None] * xc), plan_cross], 1),
                          torch.cat([plan_cross.T, yc.T @ (plan.sum(0)[:, None] * yc)], 1)])
    assert float((plan_mean - torch.cat([mean_a, mean_b])).norm() / torch.cat([mean_a, mean_b]).norm()) < 0.02
    assert float((plan_cov - expected_cov).norm() / expected_cov.norm()) < 0.02
    assert float((plan_cross - cross).norm() / cross.norm()) < 0.02


def test_large_eps_tends_to_product_measure():
    x, y, a, b = _clouds()
    product = a[:, None] * b[None, :]
    gaps = []
    for eps in (1e2, 1e4, 1e6):
        plan = sinkhorn(x, y, a, b, eps=eps).plan()
        gaps.append(float((plan - product).abs().max() / product.max()))
    assert gaps[-1] < 1e-3 and gaps[0] > gaps[1] > gaps[2]
    assert float((plan - product).abs().max()) < 1e-3


@pytest.mark.parametrize("eps", [1.0, 0.2])
def test_dual_equals_primal_at_convergence(eps):
    x, y, a, b = _clouds()
    result = sinkhorn(x, y, a, b, eps=eps, tol=1e-12)
    cost = result.cost()
    assert abs(float(cost.primal - cost.dual)) < 1e-9 * abs(float(cost.primal))
    plan = result.plan()
    assert abs(float(cost.transport - (plan * squared_distances(x, y)).sum())) < 1e-10
    assert float(cost.transport) <= float(cost.primal)  # the KL term is non-negative


def test_uniform_weights_default_and_equal_mass_other_than_one():
    x, y, _, _ = _clouds()
    result = sinkhorn(x, y, eps=1.0)
    assert torch.allclose(result.a, torch.full((x.shape[0],), 1 / x.shape[0], dtype=F64))
    a, b = torch.full((x.shape[0],), 2 / x.shape[0], dtype=F64), torch.full((y.shape[0],), 2 / y.shape[0], dtype=F64)
    scaled = sinkhorn(x, y, a, b, eps=1.0)
    assert scaled.converged and _marginal_violation(scaled.plan(), a, b) < 1e-9


def test_float32_identical_clouds_far_from_origin_give_identity_plan():
    # sec. 2.4 / P0-5: float32 cancellation made k(x, x) = e^-50 and the reference raised at step 0.
    x = torch.randn(16, 16, generator=_gen(3)) + 1000.0
    result = sinkhorn(x, x, eps=1e-4, tol=1e-5, dtype=torch.float32)
    assert result.converged and result.f.dtype == torch.float32
    # float32 potentials of size ~1 carry ~1e-7 absolute rounding, i.e. ~1e-3 relative at eps = 1e-4
    assert torch.allclose(result.plan(), torch.eye(16) / 16, atol=1e-4)


def test_tiny_eps_is_stable_without_eps_scaling():
    # the reference's plain-domain scaling under/overflows; ours absorbs and recentres in the log domain.
    x, y, a, b = _clouds(n=40, m=30)
    result = sinkhorn(x, y, a, b, eps=1e-3, eps_scaling=None, max_iter=20_000, tol=1e-8)
    assert torch.isfinite(result.f).all() and torch.isfinite(result.g).all()
    assert _marginal_violation(result.plan(), a, b) <= max(1e-8, result.marginal_error * 1.01)


def test_no_stale_state_between_calls_of_the_same_shape():
    # sec. 2.4: the reference cached the Gram matrix by shape and reused the previous step's points.
    x1, y1, a, b = _clouds(seed=0)
    x2, y2, _, _ = _clouds(seed=1)
    first = sinkhorn(x1, y1, a, b, eps=0.5).plan()
    second = sinkhorn(x2, y2, a, b, eps=0.5)
    assert _marginal_violation(second.plan(), a, b) < 1e-9
    assert float((second.plan() - first).abs().max()) > 1e-4


def test_single_source_point_sends_its_mass_everywhere_by_b():
    y = torch.randn(5, 2, generator=_gen(4), dtype=F64)
    b = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=F64)
    result = sinkhorn(torch.zeros(1, 2, dtype=F64), y, None, b, eps=0.1)
    assert torch.allclose(result.plan(), b[None, :], atol=1e-12)


def test_non_convergence_warns_and_says_so():
    x, y, a, b = _clouds()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = sinkhorn(x, y, a, b, eps=0.05, max_iter=3)
    assert not result.converged and result.marginal_error > 1e-9 and result.n_iter <= 3
    assert torch.isfinite(result.f).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=torch.full((4,), 0.25), b=torch.full((3,), 0.5)), "same total mass"),
        (dict(a=torch.tensor([0.5, 0.75, -0.25, 0.0])), "non-negative"),
        (dict(a=torch.full((5,), 0.2)), r"shape \(4,\)"),
        (dict(eps=0.0), "eps must be"),
        (dict(eps_scaling=1.5), "eps_scaling"),
        (dict(max_iter=0), "max_iter"),
        (dict(dtype=torch.int64), "dtype"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, match):
    args = dict(eps=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sinkhorn(torch.randn(4, 2), torch.randn(3, 2), **args)


def test_point_shapes_are_checked():
    with pytest.raises(ValueError, match=r"x\[:, None\]"):
        sinkhorn(torch.randn(4), torch.randn(3, 1), eps=1.0)
    with pytest.raises(ValueError, match="same dimension"):
        sinkhorn(torch.randn(4, 2), torch.randn(3, 3), eps=1.0)


def _grid_problem(shape, seed=0):
    g = _gen(seed)
    a = torch.rand(shape, generator=g, dtype=F64) + 0.05
    b = torch.rand(shape, generator=g, dtype=F64) ** 3
    b.view(-1)[: b.numel() // 3] = 0.0  # empty cells in the target
    return a / a.sum(), b / b.sum()


@pytest.mark.parametrize("shape", [(30,), (9, 7), (4, 5, 3)])
@pytest.mark.parametrize("method, kernel_range", [("fft", 20.0), ("matmul", 150.0), ("log", 600.0)])
def test_grid_sinkhorn_equals_point_cloud_sinkhorn(shape, method, kernel_range):
    a, b = _grid_problem(shape)
    spacing = 0.5
    eps = sum((spacing * (n - 1)) ** 2 for n in shape) / kernel_range
    grid = grid_sinkhorn(a, b, eps=eps, spacing=spacing, method=method, tol=1e-11)
    assert grid.method == method and grid.converged
    axes = [torch.arange(n, dtype=F64) * spacing for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    assert torch.equal(grid.x, points)
    cloud = sinkhorn(points, points, a.reshape(-1), b.reshape(-1), eps=eps, tol=1e-11)
    gauge_free = (grid.f[:, None] + grid.g[None, :]) - (cloud.f[:, None] + cloud.g[None, :])
    keep = (cloud.plan() > 1e-300)  # entries that underflow carry no information
    assert float(gauge_free[keep].abs().max()) / eps < 1e-8  # log-plan entries agree to 1e-8
    assert float((grid.plan() - cloud.plan()).abs().max() / cloud.plan().max()) < 1e-8


def test_grid_sinkhorn_auto_rule_and_loud_fallback():
    a, b = _grid_problem((24, 20), seed=1)
    diameter_sq = 23.0**2 + 19.0**2
    assert grid_sinkhorn(a, b, eps=diameter_sq / 20).method == "matmul"  # small grids: BLAS beats the FFT
    assert grid_sinkhorn(a, b, eps=diameter_sq / (2 * MATMUL_MAX_RANGE)).method == "log"
    long_a, long_b = _grid_problem((FFT_MIN_SIZE,), seed=2)
    assert grid_sinkhorn(long_a, long_b, eps=(FFT_MIN_SIZE - 1) ** 2 / (0.5 * FFT_MAX_RANGE)).method == "fft"
    with pytest.warns(RuntimeWarning, match="log domain"):
        forced = grid_sinkhorn(a, b, eps=diameter_sq / 2000.0, method="fft")
    assert forced.method == "log" and forced.converged


def test_grid_sinkhorn_validates_inputs():
    with pytest.raises(ValueError, match="same grid shape"):
        grid_sinkhorn(torch.rand(4, 4), torch.rand(4, 5), eps=1.0)
    with pytest.raises(ValueError, match="method"):
        grid_sinkhorn(torch.rand(4, 4), torch.rand(4, 4), eps=1.0, method="dense")
    with pytest.raises(ValueError, match="same total mass"):
        grid_sinkhorn(torch.rand(4, 4), 3 * torch.rand(4, 4) + 1, eps=1.0)


def test_no_warning_on_converged_solves():
    x, y, a, b = _clouds()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sinkhorn(x, y, a, b, eps=1.0).converged
    assert math.isfinite(sinkhorn(x, y, a, b, eps=1.0).marginal_error)
