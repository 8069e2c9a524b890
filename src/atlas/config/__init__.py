"""Configuration objects of the product layers (validated on construction)."""

from .kernel import KERNEL_SOLVERS, KernelConfig
from .sampler import ConditioningConfig, SamplerConfig

__all__ = ["KERNEL_SOLVERS", "ConditioningConfig", "KernelConfig", "SamplerConfig"]
