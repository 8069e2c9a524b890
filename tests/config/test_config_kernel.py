"""KernelConfig: validation, the operator it picks for a batch, and the factory the trainer uses."""

import pytest
import torch

from atlas.config import KernelConfig
from atlas.transport import NystromKernel, RFFKernel


def test_defaults_and_round_trip():
    config = KernelConfig()
    assert config.solver_type == "auto" and config.epsilon == 0.1
    assert KernelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown KernelConfig fields"):
        KernelConfig.from_dict({"max_kernel_cache_size": 4})


@pytest.mark.parametrize("kwargs, message", [
    ({"solver_type": "cg"}, "solver_type='cg' must be one of"),
    ({"epsilon": 0.0}, "epsilon=0.0 must be a positive finite number"),
    ({"rff_features": 0}, "rff_features=0 must be a positive integer or None"),
    ({"nystrom_landmarks": 2.5}, "nystrom_landmarks=2.5"),
    ({"memory_budget_mb": -1}, "memory_budget_mb=-1"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KernelConfig(**kwargs)


def test_auto_is_exact_for_training_batches_and_approximate_beyond_the_budget():
    assert KernelConfig().choose(256, 3 * 32 * 32).kind == "direct"
    assert KernelConfig().kernel_factory()(torch.randn(8, 3, dtype=torch.float64),
                                           torch.randn(8, 3, dtype=torch.float64), 1.0) is None
    small = KernelConfig(memory_budget_mb=8)
    assert small.choose(4096, 2).kind == "nystrom" and small.choose(4096, 64).kind == "rff"
    assert small.choose(4096, 64).estimated_bytes <= 8 * 2**20
    # Explicit sizes win over auto's, and an explicit kind does not consult the budget.
    assert KernelConfig(memory_budget_mb=8, rff_features=100).choose(4096, 64).params["num_features"] == 100
    assert KernelConfig(solver_type="direct", memory_budget_mb=1).choose(4096, 2).kind == "direct"


def test_explicit_solvers_build_their_operator():
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    rff = KernelConfig(solver_type="rff", rff_features=128).kernel_factory(seed=1)(x, y, 2.0)
    assert isinstance(rff, RFFKernel) and rff.num_features == 128 and rff.orthogonal
    nystrom = KernelConfig(solver_type="nystrom", nystrom_landmarks=10).kernel_factory()(x, y, 2.0)
    assert isinstance(nystrom, NystromKernel) and nystrom.num_landmarks == 10
    assert KernelConfig(solver_type="direct").kernel_factory() is None
    with pytest.raises(ValueError, match="regular grid"):
        KernelConfig(solver_type="fft").choose(20, 4)
