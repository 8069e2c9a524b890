"""Entropic optimal transport and the kernel operators it runs on (pure torch, no I/O).

One convention everywhere: cost ``c(x, y) = ||x - y||^2`` and Gibbs kernel ``k_eps(x, y) = exp(-||x - y||^2 / eps)``
(see :mod:`.kernels`).
"""

from .auto import KernelChoice, build_kernel_operator, select_kernel_operator
from .direct import DirectKernel
from .fft import FFTKernel
from .kernels import COSTS, KernelOperator, cost_matrix, gaussian_kernel, gibbs_kernel, squared_distances
from .nystrom import NystromKernel
from .rff import RFFKernel
from .bridge import brownian_bridge_mean, brownian_bridge_sample, brownian_bridge_variance, sb_cfm_target
from .coupling import COUPLINGS, KernelFactory, MinibatchPairing, pair_minibatch, solve_assignment
from .kernel_sinkhorn import KernelSinkhornResult, kernel_sinkhorn
from .convolutional import grid_sinkhorn
from .entropic import EntropicCost, SinkhornResult, sinkhorn

__all__ = [
    "COSTS",
    "COUPLINGS",
    "DirectKernel",
    "EntropicCost",
    "FFTKernel",
    "KernelChoice",
    "KernelFactory",
    "KernelOperator",
    "KernelSinkhornResult",
    "MinibatchPairing",
    "NystromKernel",
    "RFFKernel",
    "SinkhornResult",
    "brownian_bridge_mean",
    "brownian_bridge_sample",
    "brownian_bridge_variance",
    "build_kernel_operator",
    "cost_matrix",
    "gaussian_kernel",
    "gibbs_kernel",
    "grid_sinkhorn",
    "kernel_sinkhorn",
    "pair_minibatch",
    "sb_cfm_target",
    "select_kernel_operator",
    "sinkhorn",
    "solve_assignment",
    "squared_distances",
]
