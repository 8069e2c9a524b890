"""Live-bytes ledger: the bytes of tensor storages that torch ops create and free, on any device, meta included.

:class:`LiveBytesLedger` is a ``TorchDispatchMode``: it sits below autograd, so it sees every op of a forward
pass, of autograd's backward pass and of an optimizer step. After each op it looks at the storages of the
outputs; a storage that is neither an input's nor already known is a new allocation of
``untyped_storage().nbytes()`` bytes (views share their base's storage and are counted once; in-place ops
allocate nothing; a storage that grows, e.g. through ``out=`` or ``resize_``, is charged the difference). A
``weakref.finalize`` on the storage's Python object, which PyTorch keeps alive exactly as long as the storage
itself, records the free. Current and peak live bytes are kept per device.

Meta tensors have storages with sizes but no memory, so the same ledger over a meta-device run gives the
allocation profile of the eager run without allocating anything (the estimator's trace, :mod:`.trace`).

What it cannot see: memory a kernel allocates and frees inside itself (workspaces, per-thread blocks) and
allocator rounding (CUDA rounds blocks up to 512 bytes). :func:`profiler_peak_bytes` reads the CPU
allocator's own event stream instead and does see kernel-internal buffers; :func:`measure_peak_bytes` uses
``torch.cuda.max_memory_allocated`` on CUDA. No meter here returns a made-up 0: a device without a meter
raises :class:`MeterUnavailable`.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytesLedger", "MeterUnavailable", "measure_peak_bytes", "profiler_peak_bytes"]

Device = Union[str, torch.device]
DEFAULT_CATEGORY = "activations"


class MeterUnavailable(RuntimeError):
    """No memory meter exists for the requested device (raised instead of reporting 0)."""


def device_key(device: Device) -> str:
    """Canonical device name: ``"cpu"``, ``"meta"``, ``"cuda:0"`` (an index-less accelerator means index 0)."""
    device = torch.device(device)
    if device.type in ("cpu", "meta") or device.index is not None:
        return device.type if device.type in ("cpu", "meta") else str(device)
    return f"{device.type}:0"


def _freed(ledger_ref: "weakref.ref[LiveBytesLedger]", key: int, serial: int) -> None:
    ledger = ledger_ref()
    if ledger is not None:
        ledger._release(key, serial)


class LiveBytesLedger(TorchDispatchMode):
    """Counts live tensor-storage bytes per device while active (``with LiveBytesLedger() as ledger: ...``).

    Only storages created while the ledger is active, or registered with :meth:`track`, are counted: tensors
    that existed before are neither charged nor credited. Allocations are attributed to the innermost
    :meth:`category` (default ``"activations"``); :meth:`breakdown_at_peak` splits the peak by category.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._live: dict[int, tuple[int, str, int]] = {}  # storage address -> (serial, device, nbytes)
        self._category: dict[int, str] = {}  # serial -> category, kept after the free for peak replay
        self._events: list[tuple[int, str, int]] = []  # (serial, device, +/- bytes) in order
        self._current: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._peak_event: dict[str, int] = {}  # number of events up to and including the peak
        self._categories = [DEFAULT_CATEGORY]
        self._marks: list[tuple[str, int]] = []  # (phase name, number of events before it)
        self._serial = 0

    # -- recording ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._note(tensor, inputs)
        return out

    def track(self, tensors: Iterable[torch.Tensor], category: str = DEFAULT_CATEGORY) -> int:
        """Count already-existing tensors as live from now on (e.g. parameters); returns the bytes added."""
        before = sum(self._current.values())
        with self.category(category):
            for tensor in tensors:
                self._note(tensor, set())
        return sum(self._current.values()) - before

    @contextmanager
    def category(self, name: str) -> Iterator[None]:
        """Attribute allocations made inside the block to ``name``."""
        self._categories.append(name)
        try:
            yield
        finally:
            self._categories.pop()

    def mark(self, phase: str) -> None:
        """Start a named phase (e.g. "forward", "backward"); :meth:`peak_phase` says in which one a peak fell."""
        self._marks.append((phase, len(self._events)))

    def _note(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        if tensor.layout != torch.strided:
            raise NotImplementedError(f"the ledger counts strided tensors only; an op returned a {tensor.layout} "
                                      "tensor. Densify it first, or measure this code with profiler_peak_bytes")
        storage = tensor.untyped_storage()
        key, nbytes = storage._cdata, int(storage.nbytes())
        with self._lock:
            known = self._live.get(key)
            if known is not None:
                serial, device, old = known
                if nbytes != old:  # grown or shrunk in place (out=, resize_)
                    self._live[key] = (serial, device, nbytes)
                    self._add(serial, device, nbytes - old)
                return
            if key in inputs:
                return  # a view of, or an in-place op on, a storage created before the ledger
            self._serial += 1
            serial, device = self._serial, device_key(tensor.device)
            self._live[key] = (serial, device, nbytes)
            self._category[serial] = self._categories[-1]
            self._add(serial, device, nbytes)
        weakref.finalize(storage, _freed, weakref.ref(self), key, serial)

    def _add(self, serial: int, device: str, delta: int) -> None:
        self._events.append((serial, device, delta))
        current = self._current.get(device, 0) + delta
        self._current[device] = current
        if current > self._peak.get(device, -1):
            self._peak[device] = current
            self._peak_event[device] = len(self._events)

    def _release(self, key: int, serial: int) -> None:
        with self._lock:
            known = self._live.get(key)
            if known is None or known[0] != serial:
                return
            del self._live[key]
            self._add(serial, known[1], -known[2])

    # -- queries -----------------------------------------------------------------------------------------
    def current_bytes(self, device: Device) -> int:
        """Bytes counted as live on ``device`` now."""
        return self._current.get(device_key(device), 0)

    def peak_bytes(self, device: Device) -> int:
        """Largest live total on ``device`` since the ledger started or :meth:`reset_peak` (0: nothing allocated)."""
        return max(self._peak.get(device_key(device), 0), 0)

    def reset_peak(self) -> None:
        """Make the current live bytes the new peak of every device."""
        with self._lock:
            for device, current in self._current.items():
                self._peak[device] = current
                self._peak_event[device] = len(self._events)

    def devices(self) -> list[str]:
        return sorted(self._current)

    def serial(self, tensor: torch.Tensor) -> int | None:
        """The ledger's id of the live storage under ``tensor`` (None when it is not counted)."""
        known = self._live.get(tensor.untyped_storage()._cdata)
        return None if known is None else known[0]

    def live_at_peak(self, device: Device) -> dict[int, int]:
        """{storage serial: bytes} of the storages live at the peak of ``device`` (replayed from the events)."""
        device = device_key(device)
        live: dict[int, int] = {}
        for serial, event_device, delta in self._events[: self._peak_event.get(device, 0)]:
            if event_device == device:
                live[serial] = live.get(serial, 0) + delta
        return {serial: nbytes for serial, nbytes in live.items() if nbytes}

    def peak_phase(self, device: Device) -> str | None:
        """The :meth:`mark` phase in which the peak of ``device`` was reached (None before any mark)."""
        event = self._peak_event.get(device_key(device), 0)
        phases = [name for name, start in self._marks if start < event]
        return phases[-1] if phases else None

    def breakdown_at_peak(self, device: Device, relabel: dict[int, str] | None = None) -> dict[str, int]:
        """{category: bytes} live at the peak of ``device``; ``relabel`` overrides categories by serial."""
        relabel = relabel or {}
        split: dict[str, int] = {}
        for serial, nbytes in self.live_at_peak(device).items():
            name = relabel.get(serial, self._category[serial])
            split[name] = split.get(name, 0) + nbytes
        return split

    def category_peaks(self, device: Device, relabel: dict[int, str] | None = None) -> dict[str, int]:
        """{category: the most bytes of that category live at one time} on ``device`` over the whole record."""
        device, relabel = device_key(device), relabel or {}
        current: dict[str, int] = {}
        peaks: dict[str, int] = {}
        for serial, event_device, delta in self._events:
            if event_device == device:
                name = relabel.get(serial, self._category[serial])
                current[name] = current.get(name, 0) + delta
                peaks[name] = max(peaks.get(name, 0), current[name])
        return peaks


def measure_peak_bytes(fn: Callable[[], Any], device: Device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (the caching allocator's
    count, including kernel workspaces, rounded to its 512-byte blocks). CPU and meta: the live-bytes ledger
    (tensor storages only; see the module docstring for what that excludes). Other devices raise
    :class:`MeterUnavailable`.
    """
    key = device_key(device)
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MeterUnavailable(f"cannot measure {device!r}: this torch build has no usable CUDA device "
                                   f"(torch {torch.__version__}); measure on 'cpu' instead")
        index = torch.device(key).index
        torch.cuda.synchronize(index)
        base = torch.cuda.memory_allocated(index)
        torch.cuda.reset_peak_memory_stats(index)
        fn()
        torch.cuda.synchronize(index)
        return int(torch.cuda.max_memory_allocated(index) - base)
    if key not in ("cpu", "meta"):
        raise MeterUnavailable(f"no peak-memory meter for device {device!r}; supported: 'cpu', 'meta', 'cuda'")
    with LiveBytesLedger() as ledger:
        fn()
    return ledger.peak_bytes(key)


def profiler_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak CPU bytes allocated while ``fn()`` runs, from ``torch.profiler``'s allocator events.

    Every allocation and free of the CPU allocator on the profiled thread is an event with a signed size;
    the peak is the largest running sum. This meter is independent of the ledger (it knows nothing of
    storages or ops) and also sees buffers that kernels allocate and free internally.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += int(event.nbytes())
        peak = max(peak, running)
    return peak
