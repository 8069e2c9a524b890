"""The "auto" kind: a pure, logged, inspectable function of an environment record.

Rules, first match wins (issue 4, Sec. 6):

1. a process group with more than one rank -> ``"distributed"``;
2. an expected sequence length >= ``ring_min_seq_len`` -> ``"ring"``;
3. a CUDA device with flash or memory-efficient SDPA -> ``"improved"``;
4. otherwise -> ``"standard"`` (every CPU-only machine).

:func:`select_kind` never probes hardware: tests inject an :class:`AttentionEnvironment`.
:meth:`AttentionEnvironment.detect` is the one place that looks at torch's runtime state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = ["RING_MIN_SEQ_LEN", "AttentionEnvironment", "KindChoice", "select_kind"]

#: Default length from which "auto" prefers the memory-lean ring kind.
RING_MIN_SEQ_LEN = 131_072


@dataclass(frozen=True)
class AttentionEnvironment:
    """What "auto" decides from.

    Attributes:
        world_size: ranks in the initialised default process group (1 when none).
        device_type: ``"cpu"``, ``"cuda"``, ... -- where the module will run.
        sdpa_flash_available: the flash SDPA backend is usable on that device.
        sdpa_mem_efficient_available: the memory-efficient SDPA backend is usable on that device.
        expected_seq_len: the longest sequence the caller expects, or None if unknown.
        ring_min_seq_len: from this expected length on, prefer "ring".
    """

    world_size: int = 1
    device_type: str = "cpu"
    sdpa_flash_available: bool = False
    sdpa_mem_efficient_available: bool = False
    expected_seq_len: Optional[int] = None
    ring_min_seq_len: int = RING_MIN_SEQ_LEN

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {self.world_size!r}")
        length = self.expected_seq_len
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"expected_seq_len must be None or a positive integer, got {self.expected_seq_len!r}")
        if not isinstance(self.ring_min_seq_len, int) or self.ring_min_seq_len < 1:
            raise ValueError(f"ring_min_seq_len must be a positive integer, got {self.ring_min_seq_len!r}")

    @classmethod
    def detect(
        cls,
        device: Optional[Union[str, torch.device]] = None,
        expected_seq_len: Optional[int] = None,
        ring_min_seq_len: int = RING_MIN_SEQ_LEN,
    ) -> "AttentionEnvironment":
        """Read the current process: process group size, the target device and its SDPA backends.

        ``device`` defaults to CUDA when available, else CPU.
        """
        dist = torch.distributed
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device_type = torch.device(device).type
        flash = mem_efficient = False
        if device_type == "cuda" and torch.cuda.is_available():
            flash = torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.is_flash_attention_available()
            mem_efficient = torch.backends.cuda.mem_efficient_sdp_enabled()
        return cls(world_size, device_type, bool(flash), bool(mem_efficient), expected_seq_len, ring_min_seq_len)


@dataclass(frozen=True)
class KindChoice:
    """The kind "auto" picked, why, and from what."""

    kind: str
    reason: str
    environment: AttentionEnvironment


def select_kind(environment: AttentionEnvironment) -> KindChoice:
    """Apply the rules in the module docstring; deterministic in ``environment``."""
    env = environment
    if env.world_size > 1:
        return KindChoice("distributed", f"a process group with {env.world_size} ranks is initialised", env)
    if env.expected_seq_len is not None and env.expected_seq_len >= env.ring_min_seq_len:
        return KindChoice(
            "ring", f"expected_seq_len={env.expected_seq_len} >= ring_min_seq_len={env.ring_min_seq_len}", env
        )
    if env.device_type == "cuda" and (env.sdpa_flash_available or env.sdpa_mem_efficient_available):
        backends = [name for name, ok in (("flash", env.sdpa_flash_available),
                                          ("memory-efficient", env.sdpa_mem_efficient_available)) if ok]
        return KindChoice("improved", f"CUDA with {' and '.join(backends)} SDPA available", env)
    return KindChoice(
        "standard", f"single process on {env.device_type} without flash/memory-efficient SDPA on CUDA", env
    )
