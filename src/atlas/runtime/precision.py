"""Precision choice for inference: which autocast dtype a network runs under, and a module that applies it.

``"auto"`` is the hardware's recommendation (:func:`atlas.runtime.hardware.recommended_precision`): bf16 on CUDA
GPUs that have it, fp16 on older CUDA GPUs, fp32 on CPU and MPS. Only the network runs in reduced precision:
:class:`AutocastNetwork` returns its output in the input's dtype, so samplers and guidance stay in float32.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .hardware import Capabilities, recommended_precision

__all__ = ["AUTOCAST_DTYPES", "AutocastNetwork", "compute_dtype", "resolve_precision"]

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a concrete precision ("fp32", "bf16", "fp16") computes in (what memory estimates assume)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r} must be one of {tuple(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision] or torch.float32


def resolve_precision(precision: str, capabilities: Capabilities) -> str:
    """``precision`` ("auto", "fp32", "bf16", "fp16") -> a concrete one for the device of ``capabilities``.

    Raises for combinations that cannot run: fp16 needs a CUDA device; bf16 needs a GPU with bf16 or a CPU.
    """
    if precision == "auto":
        return recommended_precision(capabilities)
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision={precision!r} must be one of {('auto', *AUTOCAST_DTYPES)}")
    kind = capabilities.device_kind
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device, this one is {kind!r}; use 'bf16' (CPU) or 'fp32'")
    if precision == "bf16" and kind == "cuda" and not capabilities.bf16:
        raise ValueError(f"precision='bf16' is not supported natively by {capabilities.name} (compute capability "
                         f"{capabilities.compute_capability}); use 'fp16' or 'auto'")
    if precision == "bf16" and kind == "mps":
        raise ValueError("precision='bf16' autocast is not offered on MPS here; use 'fp32'")
    return precision


class AutocastNetwork(nn.Module):
    """Runs ``network(x, *args, **kwargs)`` under ``torch.autocast(dtype)`` and returns the output in x's dtype.

    ``dtype=None`` is a plain pass-through (fp32). Wrap it AROUND a CUDA-graph wrapper so the graph key sees the
    autocast state.
    """

    def __init__(self, network: nn.Module, dtype: Optional[torch.dtype]):
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.dtype is None:
            return self.network(x, *args, **kwargs)
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.network(x, *args, **kwargs)
        return out.to(x.dtype)

    @property
    def config(self):
        """The wrapped network's config (so code reading ``network.config`` keeps working)."""
        return self.network.config

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
