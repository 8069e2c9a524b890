"""Operator selection: a table of (points, dim, grid, budget) -> kind, budgets respected, clear failures."""

from __future__ import annotations

import math

import pytest
import torch
from transport_testing import held_bytes

from atlas.transport import (
    DirectKernel,
    FFTKernel,
    KernelChoice,
    NystromKernel,
    RFFKernel,
    build_kernel_operator,
    select_kernel_operator,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# (num_points, dim, grid_shape, budget, dtype_bytes) -> kind
TABLE = [
    ((64, 2, (8, 8), MiB, 4), "fft"),
    ((4096, 2, (64, 64), MiB, 4), "fft"),
    ((32768, 3, (32, 32, 32), 16 * MiB, 4), "fft"),
    ((100, 2, None, MiB, 4), "direct"),
    ((1, 5, None, KiB, 4), "direct"),
    ((1000, 16384, None, 64 * MiB, 4), "direct"),
    (((500, 2000), 8, None, 16 * MiB, 4), "direct"),
    ((1000, 10, None, 16 * MiB, 4), "direct"),
    ((1000, 10, None, 16 * MiB, 8), "nystrom"),  # float64 doubles the dense matrices past the budget
    ((20000, 2, None, 256 * MiB, 4), "nystrom"),
    ((20000, 16, None, GiB, 4), "nystrom"),
    ((20000, 17, None, GiB, 4), "rff"),
    ((5000, 16384, None, 256 * MiB, 4), "rff"),
    ((100000, 3, None, 64 * MiB, 4), "nystrom"),
    ((1000000, 4096, None, 16 * GiB, 4), "rff"),
    ((200000, 64, None, 64 * MiB, 4), "nystrom"),  # RFF's minimum does not fit; Nystrom's does
    ((400, 20, None, MiB, 4), "rff"),
    ((400, 3, None, MiB, 4), "nystrom"),
]


@pytest.mark.parametrize("case, kind", TABLE)
def test_selection_table(case, kind):
    num_points, dim, grid_shape, budget, dtype_bytes = case
    choice = select_kernel_operator(num_points, dim, grid_shape=grid_shape, memory_budget_bytes=budget,
                                    dtype_bytes=dtype_bytes)
    assert isinstance(choice, KernelChoice)
    assert choice.kind == kind, choice.reason
    assert 0 < choice.estimated_bytes <= budget
    assert choice.reason
    if kind in ("fft", "direct"):
        assert choice.expected_error == 0.0
    elif kind == "rff":
        assert choice.expected_error == pytest.approx(1 / math.sqrt(choice.params["num_features"]))
    else:
        assert math.isnan(choice.expected_error) and "error_estimate" in choice.reason
    # pure: the same question gets the same answer
    assert select_kernel_operator(num_points, dim, grid_shape=grid_shape, memory_budget_bytes=budget,
                                  dtype_bytes=dtype_bytes) == choice



@pytest.mark.parametrize(
    "num_points, dim, budget, kind, cls",
    [
        (100, 2, MiB, "direct", DirectKernel),
        ((50, 80), 8, MiB, "direct", DirectKernel),
        (400, 20, MiB, "rff", RFFKernel),
        (400, 3, MiB, "nystrom", NystromKernel),
        ((300, 500), 40, MiB, "rff", RFFKernel),
    ],
)
def test_built_operators_stay_under_the_budget(num_points, dim, budget, kind, cls):
    choice = select_kernel_operator(num_points, dim, memory_budget_bytes=budget)
    assert choice.kind == kind
    m, n = choice.params["num_points"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, dim, generator=gen)
    y = None if isinstance(num_points, int) else torch.randn(n, dim, generator=gen)
    op = build_kernel_operator(choice, x, y, eps=float(dim), generator=gen)
    assert isinstance(op, cls) and op.shape == (m, n)
    op.apply(torch.ones(n))  # the dense operator builds its kernel matrix on first use
    assert held_bytes(op) <= op.memory_bytes <= choice.estimated_bytes <= budget


def test_fft_choice_builds_a_grid_operator():
    choice = select_kernel_operator(48, 2, grid_shape=(6, 8), memory_budget_bytes=MiB)
    op = build_kernel_operator(choice, eps=2.0, spacing=0.5, dtype=torch.float64)
    assert isinstance(op, FFTKernel) and op.grid_shape == (6, 8) and op.spacing == (0.5, 0.5)
    assert op.memory_bytes <= choice.estimated_bytes * 2  # estimated for float32; built in float64
    with pytest.raises(ValueError, match="x=None"):
        build_kernel_operator(choice, torch.zeros(48, 2), eps=1.0)


def test_target_error_drives_the_feature_count_and_a_miss_is_reported():
    roomy = select_kernel_operator(20000, 64, memory_budget_bytes=4 * GiB, target_error=0.05)
    assert roomy.kind == "rff" and roomy.params["num_features"] == 400 and "NOT met" not in roomy.reason
    tight = select_kernel_operator(20000, 64, memory_budget_bytes=32 * MiB, target_error=0.05)
    assert tight.kind == "rff" and tight.params["num_features"] < 400
    assert tight.expected_error > 0.05 and "NOT met" in tight.reason


def test_nothing_fits_raises_with_the_needed_size():
    with pytest.raises(ValueError, match="smallest option needs \\d+ bytes"):
        select_kernel_operator(1_000_000, 3, memory_budget_bytes=64 * MiB)
    with pytest.raises(ValueError, match="FFT operator on grid"):
        select_kernel_operator(1 << 18, 2, grid_shape=(512, 512), memory_budget_bytes=KiB)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_points=0, dim=2), "num_points"),
        (dict(num_points=(3, 4, 5), dim=2), "num_points"),
        (dict(num_points=10, dim=0), "dim"),
        (dict(num_points=10, dim=2, memory_budget_bytes=0), "memory_budget_bytes"),
        (dict(num_points=10, dim=2, dtype_bytes=3), "dtype_bytes"),
        (dict(num_points=10, dim=2, target_error=0.0), "target_error"),
        (dict(num_points=10, dim=2, grid_shape=(2, 4)), "grid_shape"),
        (dict(num_points=8, dim=2, grid_shape=(2, 4), cost="euclidean"), "sqeuclidean"),
        (dict(num_points=8, dim=2, cost="l1"), "cost"),
    ],
)
def test_selection_argument_errors(kwargs, match):
    kwargs.setdefault("memory_budget_bytes", MiB)
    with pytest.raises(ValueError, match=match):
        select_kernel_operator(**kwargs)


def test_build_rejects_points_of_other_sizes():
    choice = select_kernel_operator(100, 2, memory_budget_bytes=MiB)
    with pytest.raises(ValueError, match="select_kernel_operator with these sizes"):
        build_kernel_operator(choice, torch.zeros(90, 2), eps=1.0)
    with pytest.raises(ValueError, match="needs the points"):
        build_kernel_operator(choice, eps=1.0)
