"""A small, honest scratch-buffer pool for attention temporaries.

Buffers are keyed by ``(shape, dtype, device)`` and handed out only as *scratch*: a caller borrows one inside
:meth:`ScratchPool.borrow`, fills it, consumes it, and gives it back when the ``with`` block ends.  Tensors that
are returned to users are never taken from the pool, so nothing a user holds can be overwritten by a later call.
Scratch is only safe when autograd will not save it for a later backward pass: callers borrow only when gradients
are off (see :meth:`ImprovedDilatedAttention.forward`).

PyTorch's CUDA caching allocator already pools device memory, and on CPU the benefit of pooling is not shown by a
benchmark yet, so modules use the pool only when asked (``use_memory_pool=True``).  The lock is a plain,
non-reentrant :class:`threading.Lock` held only for dictionary updates, never while calling out.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Union

import torch
from torch import Tensor

__all__ = ["ScratchPool", "clear_memory_pool", "default_pool", "get_memory_pool_info"]

_Key = tuple[tuple[int, ...], torch.dtype, str]


class ScratchPool:
    """Reusable scratch tensors with hit/miss counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[_Key, list[Tensor]] = {}
        self._lent: dict[int, Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(shape, dtype: torch.dtype, device: Union[str, torch.device]) -> _Key:
        return tuple(int(s) for s in shape), dtype, str(torch.device(device))

    def acquire(self, shape, dtype: torch.dtype, device: Union[str, torch.device]) -> Tensor:
        """An uninitialised buffer of that shape; give it back with :meth:`release`."""
        key = self._key(shape, dtype, device)
        with self._lock:
            free = self._free.get(key)
            if free:
                buffer = free.pop()
                self.hits += 1
            else:
                buffer = None
                self.misses += 1
        if buffer is None:
            buffer = torch.empty(key[0], dtype=dtype, device=device)
        with self._lock:
            self._lent[id(buffer)] = buffer
        return buffer

    def release(self, buffer: Tensor) -> None:
        with self._lock:
            if self._lent.pop(id(buffer), None) is None:
                raise ValueError("release() got a tensor this pool did not lend (or one already released)")
            self._free.setdefault(self._key(buffer.shape, buffer.dtype, buffer.device), []).append(buffer)

    @contextmanager
    def borrow(self, shape, dtype: torch.dtype, device: Union[str, torch.device]) -> Iterator[Tensor]:
        buffer = self.acquire(shape, dtype, device)
        try:
            yield buffer
        finally:
            self.release(buffer)

    def _buffers(self) -> list[Tensor]:
        with self._lock:
            return [t for free in self._free.values() for t in free] + list(self._lent.values())

    def storage_pointers(self) -> set[int]:
        """Data pointers of every buffer the pool holds (for aliasing checks)."""
        return {t.untyped_storage().data_ptr() for t in self._buffers()}

    def info(self) -> dict:
        """``total_buffers``, ``total_memory_mb``, ``hits``, ``misses``, ``in_use`` and per-device ``devices``."""
        buffers = self._buffers()
        devices: dict[str, dict] = {}
        for t in buffers:
            entry = devices.setdefault(str(t.device), {"buffers": 0, "memory_mb": 0.0})
            entry["buffers"] += 1
            entry["memory_mb"] += t.numel() * t.element_size() / 2**20
        with self._lock:
            in_use, hits, misses = len(self._lent), self.hits, self.misses
        return {
            "total_buffers": len(buffers),
            "total_memory_mb": sum(t.numel() * t.element_size() for t in buffers) / 2**20,
            "hits": hits,
            "misses": misses,
            "in_use": in_use,
            "devices": devices,
        }

    def clear(self) -> None:
        """Drop every free buffer and reset the counters (buffers lent right now stay with their borrower)."""
        with self._lock:
            self._free.clear()
            self.hits = 0
            self.misses = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_DEFAULT_POOL = ScratchPool()


def default_pool() -> ScratchPool:
    """The process-wide pool the attention modules share."""
    return _DEFAULT_POOL


def get_memory_pool_info() -> dict:
    """Statistics of the shared pool: ``total_buffers``, ``total_memory_mb``, ``hits``, ``misses``, ..."""
    return _DEFAULT_POOL.info()


def clear_memory_pool() -> None:
    """Empty the shared pool (and the CUDA cache when CUDA is present)."""
    _DEFAULT_POOL.clear()
