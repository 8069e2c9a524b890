"""Out-of-memory handling for generation: recognise the error, explain it, and back off instead of failing.

``run_with_backoff`` runs a chunked job (items ``[0, total)``, ``batch_size`` at a time). When a chunk runs out of
memory it frees what it can, splits the chunk in halves and retries (down to one item), then retries that item
with tiling; later chunks start from the reduced size. Every step is logged at WARNING and recorded in the
returned :class:`BackoffLog`. Because the caller's ``run_chunk`` seeds every item by its index (one generator per
image, ``seed + i``), splitting a chunk leaves every image as it would have been: bitwise equal to a run with the
same chunks, and equal up to batched-kernel rounding to a run with any other batch size. Tiling is the one step
that changes images (slightly: the denoiser sees overlapping tiles), so it is logged and recorded per chunk.
When even a tiled single item does not fit, the original error type is raised with the specification's message
(:func:`format_oom_message`) and the log, ``from`` the original error.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

__all__ = ["BackoffEvent", "BackoffLog", "format_oom_message", "free_memory", "is_out_of_memory",
           "memory_usage", "run_with_backoff"]

logger = logging.getLogger(__name__)

_OOM_TYPES = tuple({t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError",
                                                                                    None)) if t is not None})
# Allocator messages that mean "out of memory" (lower-cased): CUDA/HIP/MPS ("... out of memory ..."), and the CPU
# allocator ("DefaultCPUAllocator: can't allocate memory" on POSIX, "... not enough memory" on Windows).
_OOM_PHRASES = ("out of memory", "defaultcpuallocator: can't allocate memory", "defaultcpuallocator: not enough memory")
_MB = 1024 ** 2


def is_out_of_memory(error: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``) and for RuntimeErrors whose message
    is an allocator's out-of-memory report (CUDA, HIP, MPS, the CPU allocator); False for everything else,
    including Python's ``MemoryError`` (raised for impossible sizes as often as for a full machine)."""
    if _OOM_TYPES and isinstance(error, _OOM_TYPES):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error).lower()
    return any(phrase in message for phrase in _OOM_PHRASES)


def _device_type(device: torch.device | str | None, error: BaseException | None = None) -> str:
    """"cpu", "cuda", "mps", ...: from ``device`` when given, else from the error's allocator message."""
    if device is not None:
        return torch.device(device).type
    text = str(error or "")
    if "CPUAllocator" in text:
        return "cpu"
    if "MPS" in text:
        return "mps"
    if "CUDA" in text or "HIP" in text or (_OOM_TYPES and isinstance(error, _OOM_TYPES)):
        return "cuda"
    return "cpu"


def _process_memory_bytes() -> tuple[int | None, int | None]:
    """(resident set size now, peak resident set size) of this process in bytes; None where unknown.

    Linux: VmRSS / VmHWM from /proc/self/status. Elsewhere only the peak is known (``ru_maxrss``: bytes on macOS,
    KiB on other Unixes)."""
    status = Path("/proc/self/status")
    if status.is_file():
        values = {}
        for line in status.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM") and rest.split():
                values[name] = int(rest.split()[0]) * 1024  # reported in kB
        if values:
            return values.get("VmRSS"), values.get("VmHWM")
    try:
        import resource  # Unix only
    except ImportError:
        return None, None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return None, (peak if sys.platform == "darwin" else peak * 1024) or None


def memory_usage(device: torch.device | str) -> str:
    """What is known about memory use on ``device``, in MB (MiB), as the text after ``"Memory usage: "``.

    CUDA: ``torch.cuda.memory_allocated`` and ``max_memory_allocated`` (the specification's "X MB allocated, Y MB
    peak"). MPS: tensor memory and what the Metal driver holds (MPS keeps no peak). CPU: the process's resident set
    and its peak; tensors are not counted separately. Nothing unknown is reported as 0."""
    kind = _device_type(device)
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "unknown (CUDA is not available in this process)"
        index = torch.device(device)
        return (f"{torch.cuda.memory_allocated(index) / _MB:.1f} MB allocated, "
                f"{torch.cuda.max_memory_allocated(index) / _MB:.1f} MB peak")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            return "unknown (MPS is not available in this process)"
        return (f"{torch.mps.current_allocated_memory() / _MB:.1f} MB allocated, "
                f"{torch.mps.driver_allocated_memory() / _MB:.1f} MB held by the Metal driver (MPS records no peak)")
    rss, peak = _process_memory_bytes()
    parts = ([f"{rss / _MB:.1f} MB resident"] if rss else []) + ([f"{peak / _MB:.1f} MB peak"] if peak else [])
    if not parts:
        return f"unknown (no process memory statistics on {sys.platform})"
    return ", ".join(parts) + " (process RSS in RAM; tensors are not counted separately)"


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Size):
        return str(tuple(value))
    return str(value)


def _side(settings: dict) -> str | None:
    if settings.get("resolution") is not None:
        return f"{settings['resolution']} px"
    shape = settings.get("shape")
    if isinstance(shape, Sequence) and len(shape) >= 3:
        return f"{shape[-2]}x{shape[-1]}"
    return None


def _suggestions(settings: dict, device_type: str) -> list[str]:
    """Numbered suggestions for ``settings``; what is already on (mixed precision, tiling) is not suggested."""
    tips = []
    batch = settings.get("batch_size")
    if batch is None:
        tips.append("Reduce batch_size")
    elif batch > 1:
        tips.append(f"Reduce batch_size (currently {batch})")
    precision = settings.get("mixed_precision")
    if precision is None:
        tips.append("Enable mixed_precision if not already enabled")
    elif not precision:
        tips.append("Enable mixed_precision (bf16/fp16 activations take half the memory of fp32)")
    side = _side(settings)
    tips.append(f"Use smaller resolution (currently {side})" if side else "Use smaller resolution")
    if settings.get("tiling"):
        size = settings.get("tile_size")
        tips.append("Use a smaller tile_size" + (f" (currently {size})" if size is not None else ""))
    else:
        resolution = settings.get("resolution")
        if isinstance(resolution, int) and resolution >= 16:
            example = f"tile_size={max(8, resolution // 2 // 8 * 8)}"
        else:
            example = "tile_size about half the image side"
        tips.append(f"Enable tiling ({example}, tile_overlap=0.125): the denoiser then sees one tile at a time")
    guidance = settings.get("guidance_scale")
    if guidance is not None and guidance != 1:
        tips.append(f"guidance_scale={guidance} runs the model on cond and uncond together (2 x batch_size); "
                    f"guidance_scale=1 halves that, but changes the images")
    if settings.get("attention") == "naive":
        tips.append("Use attention='sdpa': naive attention stores the full (tokens x tokens) score matrix")
    if settings.get("cuda_graphs"):
        tips.append("Disable CUDA graphs: every captured graph keeps its own buffers")
    if settings.get("kernel_cache_size"):
        tips.append(f"Reduce kernel cache size in KernelConfig (currently {settings['kernel_cache_size']})")
    if device_type == "cuda":
        tips.append("Clear GPU cache: torch.cuda.empty_cache(), and close other programs using the GPU (nvidia-smi)")
    elif device_type == "mps":
        tips.append("Clear GPU cache: torch.mps.empty_cache(), and close other programs using the GPU")
    else:
        tips.append("Close other programs to free RAM, or run on a GPU")
    return tips


def format_oom_message(error: BaseException, *, settings: dict, device: torch.device | str | None,
                       suggestions: list[str] | None = None) -> str:
    """The specification's out-of-memory message::

        Out of GPU memory during sampling.          ("Out of memory during sampling." on CPU)
        Memory usage: 8234.5 MB allocated, 9012.3 MB peak
        Current settings:
          - batch_size: 8
          - shape: (8, 4, 128, 128)
          - mixed_precision: True

        Suggestions:
          1. Reduce batch_size (currently 8)
          ...
        Cause: <first line of the original error>

    ``settings`` are listed in the order given; recognised keys tailor the suggestions (``batch_size``, ``shape``,
    ``resolution``, ``mixed_precision``, ``tiling``, ``tile_size``, ``guidance_scale``, ``attention``,
    ``cuda_graphs``, ``kernel_cache_size``). ``suggestions`` (caller-specific) are appended to the built-in ones.
    ``device`` None = inferred from the error message.
    """
    kind = _device_type(device, error)
    heading = "Out of memory during sampling." if kind == "cpu" else "Out of GPU memory during sampling."
    lines = [heading, f"Memory usage: {memory_usage(device if device is not None else kind)}", "Current settings:"]
    lines += [f"  - {name}: {_format_value(value)}" for name, value in settings.items()] or ["  (none given)"]
    tips = _suggestions(settings, kind) + list(suggestions or [])
    lines += ["", "Suggestions:"] + [f"  {number}. {tip}" for number, tip in enumerate(tips, start=1)]
    cause = str(error).strip().splitlines()
    if cause:
        lines.append(f"Cause: {cause[0][:300]}")
    return "\n".join(lines)


def free_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return the allocator's cached blocks to the device (CUDA when ``device`` is None or a
    CUDA device and CUDA is in use; MPS for an MPS device), so a retry starts from the least memory in use."""
    gc.collect()
    kind = _device_type(device) if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if kind == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


@dataclass(frozen=True)
class BackoffEvent:
    """One out-of-memory failure of chunk ``[start, stop)`` and what was done about it.

    action: "split" (retry in halves of ``retry_batch_size``), "enable_tiling" (retry the item tiled) or
    "give_up" (the ladder is exhausted; the error is raised). memory: usage when it failed (see memory_usage)."""

    start: int
    stop: int
    tiled: bool
    action: Literal["split", "enable_tiling", "give_up"]
    retry_batch_size: int
    memory: str
    error: str

    def describe(self) -> str:
        what = {"split": f"retrying in chunks of {self.retry_batch_size}", "enable_tiling": "retrying it tiled",
                "give_up": "no smaller step left"}[self.action]
        return (f"out of memory on items [{self.start}, {self.stop}) ({self.stop - self.start} at a time"
                f"{', tiled' if self.tiled else ''}; {self.memory}): {what}")


@dataclass
class BackoffLog:
    """What ``run_with_backoff`` did: every failure (``events``), every chunk that ran (``chunks``: (start, stop,
    tiled)), the requested and final batch sizes and whether tiling was switched on (which changes images)."""

    initial_batch_size: int
    final_batch_size: int
    tiling_enabled: bool = False
    events: list[BackoffEvent] = field(default_factory=list)
    chunks: list[tuple[int, int, bool]] = field(default_factory=list)

    @property
    def backed_off(self) -> bool:
        return bool(self.events)

    @property
    def tiled_items(self) -> list[int]:
        return [i for start, stop, tiled in self.chunks if tiled for i in range(start, stop)]

    def summary(self) -> str:
        lines = [f"batch_size {self.initial_batch_size} -> {self.final_batch_size}"
                 + (", tiling enabled" if self.tiling_enabled else "")]
        return "\n".join(lines + [f"  {n}. {event.describe()}" for n, event in enumerate(self.events, start=1)])

    def as_dict(self) -> dict:
        return {"initial_batch_size": self.initial_batch_size, "final_batch_size": self.final_batch_size,
                "tiling_enabled": self.tiling_enabled, "tiled_items": self.tiled_items,
                "chunks": [list(chunk) for chunk in self.chunks],
                "events": [dict(vars(event)) for event in self.events]}


def _raise_with_log(error: BaseException, message: str, log: BackoffLog):
    """Raise ``error``'s own type with ``message`` (``from error``), carrying ``backoff_log``."""
    try:
        new = type(error)(message)
    except TypeError:  # an exception class whose constructor wants other arguments: annotate the original
        new = None
    if new is None:
        if hasattr(error, "add_note"):
            error.add_note(message)
        error.backoff_log = log
        raise error
    new.backoff_log = log
    raise new from error


def _next_step(error: BaseException, record: BackoffLog, start: int, stop: int, tiled: bool,
               tiling_available: bool, settings: dict | None, device: torch.device | str,
               log_to: logging.Logger) -> tuple[int, bool]:
    """Record the failure of chunk [start, stop); return the next (batch size, tiled), or raise at the end."""
    count = stop - start
    action = "split" if count > 1 else ("enable_tiling" if tiling_available and not tiled else "give_up")
    retry = math.ceil(count / 2) if action == "split" else 1
    cause = str(error).strip().splitlines()
    event = BackoffEvent(start, stop, tiled, action, retry, memory_usage(device), cause[0][:300] if cause else "")
    record.events.append(event)
    if action == "give_up":
        shown = {"batch_size": count, **{k: v for k, v in (settings or {}).items() if k != "batch_size"}}
        shape = shown.get("shape")
        if isinstance(shape, Sequence) and len(shape) > 0:
            shown["shape"] = (count, *tuple(shape)[1:])
        shown["tiling"] = bool(shown.get("tiling")) or tiled  # the caller's own tiling, or the back-off's
        log_to.warning("Out-of-memory back-off failed: %s", event.describe())
        message = format_oom_message(error, settings=shown, device=device)
        _raise_with_log(error, f"{message}\n\nBack-off log: {record.summary()}", record)
    log_to.warning("Out-of-memory back-off: %s%s", event.describe(),
                   "; tiled images differ slightly from untiled ones" if action == "enable_tiling" else "")
    record.final_batch_size, record.tiling_enabled = retry, tiled or action == "enable_tiling"
    return retry, record.tiling_enabled


def run_with_backoff(run_chunk: Callable[[int, int, bool], Tensor], total: int, batch_size: int, *,
                     tiling_available: bool = True, settings: dict | None = None,
                     device: torch.device | str | None = None,
                     logger: logging.Logger | None = None) -> tuple[Tensor, BackoffLog]:
    """Run ``run_chunk(start, stop, tiled) -> (stop - start, ...)`` over items ``[0, total)``, ``batch_size`` at a
    time, and concatenate the outputs in item order (dim 0), backing off on out-of-memory errors.

    Ladder for a failing chunk of n items: free memory; n > 1 -> retry in chunks of ceil(n / 2) (and keep that
    size for later chunks); n == 1 -> retry tiled if ``tiling_available`` (and keep tiling on); else raise the
    original error type with :func:`format_oom_message` (``settings`` plus the failing batch_size/tiling) and the
    log, ``from`` the original (the exception carries ``.backoff_log``). Other errors propagate untouched.
    ``run_chunk`` must seed each item by its index so that images do not depend on the chunking.
    """
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"total={total!r} must be an int >= 1 (the number of items to generate)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    log_to = logger or logging.getLogger(__name__)
    size, tiled, start = batch_size, False, 0
    record = BackoffLog(initial_batch_size=batch_size, final_batch_size=batch_size)
    outputs: list[Tensor] = []
    while start < total:
        stop = min(start + size, total)
        failed_on = None
        try:
            output = run_chunk(start, stop, tiled)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            failed_on = _device_type(device, error)
            size, tiled = _next_step(error, record, start, stop, tiled, tiling_available, settings,
                                     failed_on if device is None else device, log_to)
        if failed_on is not None:
            # Outside the except block: the error's traceback (and the activations its frames hold) is gone.
            free_memory(failed_on if device is None else device)
            continue
        if not isinstance(output, Tensor) or output.ndim == 0 or output.shape[0] != stop - start:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"run_chunk({start}, {stop}, tiled={tiled}) returned {got}; it must return a tensor "
                             f"with {stop - start} items along dim 0")
        outputs.append(output)
        record.chunks.append((start, stop, tiled))
        start = stop
    return torch.cat(outputs), record
