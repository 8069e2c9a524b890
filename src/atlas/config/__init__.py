"""Configuration objects of the product layers (validated on construction)."""

from .kernel import KERNEL_SOLVERS, KernelConfig

__all__ = ["KERNEL_SOLVERS", "KernelConfig"]
