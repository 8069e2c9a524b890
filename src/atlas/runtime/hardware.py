"""What this machine can do, as one frozen record, and the advice that follows from it.

`detect_capabilities` is the only function here that touches the hardware.  Everything else
(`cuda_feature_flags`, `recommended_precision`, `recommendations`, `format_report`) is a pure function of a
`Capabilities` record, so it can be tested with injected records for any machine.

Rules (NVIDIA compute capability, "cc"):
* bf16 is native from cc 8.0 (Ampere); Turing and older only emulate it, slowly, so it counts as unsupported
  (`torch.cuda.is_bf16_supported()` says True there because emulation works).
* fp16 arithmetic from cc 5.3; fp16 *tensor cores* (what makes fp16 worth recommending) from cc 7.0.
* TF32 tensor cores and the flash SDPA kernel from cc 8.0.
* CUDA graphs (`torch.cuda.CUDAGraph`) need a CUDA 11+ build of PyTorch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from atlas.fields import check_known_fields

log = logging.getLogger(__name__)

DEVICE_KINDS = ("cpu", "cuda", "mps")
GIB = 1024**3


@dataclass(frozen=True)
class Capabilities:
    """One device as atlas sees it.  Memory in bytes; None where the platform gives no way to read it.

    free_memory_source says where free_memory_bytes came from: "mem_get_info" (the driver's count, includes
    other processes), "total_minus_reserved" (fallback: only this process's PyTorch cache is subtracted),
    "mps_recommended_minus_allocated", "proc_meminfo" (MemAvailable), "sysconf" or "unavailable".
    """

    device_kind: str
    device_index: int | None
    name: str
    compute_capability: tuple[int, int] | None
    total_memory_bytes: int | None
    free_memory_bytes: int | None
    free_memory_source: str
    bf16: bool
    fp16: bool
    tf32: bool
    cuda_graphs: bool
    flash_sdpa: bool
    cpu_count: int
    torch_version: str
    cuda_version: str | None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.device_kind not in DEVICE_KINDS:
            raise ValueError(f"device_kind={self.device_kind!r} is not one of {DEVICE_KINDS}")
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", tuple(int(v) for v in self.compute_capability))
            if len(self.compute_capability) != 2:
                raise ValueError(f"compute_capability must be (major, minor); got {self.compute_capability!r}")
        for name in ("total_memory_bytes", "free_memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value} must be >= 0 or None (unknown)")
        if self.cpu_count < 1:
            raise ValueError(f"cpu_count={self.cpu_count} must be >= 1")
        object.__setattr__(self, "notes", tuple(self.notes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); `from_dict` inverts it."""
        data = asdict(self)
        data["compute_capability"] = None if self.compute_capability is None else list(self.compute_capability)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Capabilities":
        check_known_fields(cls, data)
        values = dict(data)
        if values.get("compute_capability") is not None:
            values["compute_capability"] = tuple(values["compute_capability"])
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)


def _version_at_least(version: str | None, minimum: tuple[int, int]) -> bool:
    if not version:
        return False
    parts = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    return tuple(parts + [0] * (2 - len(parts))) >= minimum


def cuda_feature_flags(compute_capability: tuple[int, int], cuda_version: str | None) -> dict[str, bool]:
    """bf16 / fp16 / tf32 / flash_sdpa / cuda_graphs for an NVIDIA GPU of this compute capability (module rules)."""
    cc = tuple(compute_capability)
    return {"bf16": cc >= (8, 0), "fp16": cc >= (5, 3), "tf32": cc >= (8, 0), "flash_sdpa": cc >= (8, 0),
            "cuda_graphs": _version_at_least(cuda_version, (11, 0))}


# ----------------------------------------------------------------------------------------------- probing

def _system_memory() -> tuple[int | None, int | None, str]:
    """(total, available, source) of system RAM: /proc/meminfo where it exists, else os.sysconf."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024  # values are in kB
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree")), "proc_meminfo"
    except (OSError, KeyError, ValueError, IndexError):
        pass  # not Linux (or an unusual kernel): sysconf below is the documented second source
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return None, None, "unavailable"
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * page  # absent on macOS
    except (ValueError, OSError, AttributeError):
        free = None
    return total, free, "sysconf"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass  # no /proc/cpuinfo: no native-bf16 flags can be read, so none are claimed
    return set()


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's total
    return os.cpu_count() or 1


def _cuda_free_memory(index: int, total: int) -> tuple[int, str, tuple[str, ...]]:
    """Free bytes from `torch.cuda.mem_get_info`, or total - reserved when it is missing or raises."""
    mem_get_info = getattr(torch.cuda, "mem_get_info", None)
    if mem_get_info is None:
        note = "torch.cuda.mem_get_info is missing in this PyTorch; free memory = total - reserved"
    else:
        try:
            free, _ = mem_get_info(index)
            return int(free), "mem_get_info", ()
        except (RuntimeError, AssertionError, NotImplementedError) as error:
            note = f"torch.cuda.mem_get_info failed ({error}); free memory = total - reserved"
    log.warning("%s (other processes' memory is not counted)", note)
    return max(0, total - int(torch.cuda.memory_reserved(index))), "total_minus_reserved", (note,)


def _detect_cuda(index: int | None) -> Capabilities:
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False; install a CUDA "
                           "build of PyTorch, check the driver with nvidia-smi, or use device='cpu'")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if index is None else index
    if not 0 <= index < count:
        raise ValueError(f"CUDA device index {index} does not exist; this machine has {count} (0..{count - 1})")
    props = torch.cuda.get_device_properties(index)
    total = int(props.total_memory)
    free, source, notes = _cuda_free_memory(index, total)
    cuda_version = torch.version.cuda
    flags = cuda_feature_flags((props.major, props.minor), cuda_version)
    if flags["flash_sdpa"] and hasattr(torch.backends.cuda, "is_flash_attention_available"):
        flags["flash_sdpa"] = bool(torch.backends.cuda.is_flash_attention_available())
    return Capabilities("cuda", index, str(props.name), (int(props.major), int(props.minor)), total, free, source,
                        cpu_count=_cpu_count(), torch_version=torch.__version__, cuda_version=cuda_version,
                        notes=notes, **flags)


def _detect_mps() -> Capabilities:
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' was requested but torch.backends.mps.is_available() is False; it needs "
                           "Apple silicon and macOS 12.3+; use device='cpu'")
    notes: list[str] = []
    if hasattr(torch.mps, "recommended_max_memory"):
        total = int(torch.mps.recommended_max_memory())
        free = max(0, total - int(torch.mps.driver_allocated_memory()))
        source = "mps_recommended_minus_allocated"
    else:
        total, free, source = _system_memory()
        notes.append(f"this PyTorch has no torch.mps.recommended_max_memory; memory is system RAM ({source}), "
                     "which the GPU shares")
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        bf16 = True
    except (RuntimeError, TypeError) as error:
        bf16 = False
        notes.append(f"bf16 tensors fail on this MPS device ({error}); macOS 14+ is needed")
    return Capabilities("mps", 0, "Apple silicon GPU (MPS)", None, total, free, source, bf16=bf16, fp16=True,
                        tf32=False, cuda_graphs=False, flash_sdpa=False, cpu_count=_cpu_count(),
                        torch_version=torch.__version__, cuda_version=None, notes=tuple(notes))


def _detect_cpu() -> Capabilities:
    total, free, source = _system_memory()
    flags = _cpu_flags()
    name = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # the generic name "CPU" stays: the model name is cosmetic
    return Capabilities(
        "cpu", None, name, None, total, free, source,
        bf16=bool(flags & {"avx512_bf16", "amx_bf16"}), fp16=bool(flags & {"avx512_fp16", "amx_fp16"}),
        tf32=False, cuda_graphs=False,
        flash_sdpa=hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"),
        cpu_count=_cpu_count(), torch_version=torch.__version__, cuda_version=torch.version.cuda,
        notes=() if source != "unavailable" else ("system memory could not be read on this platform",),
    )


def detect_capabilities(device: str | torch.device | None = None) -> Capabilities:
    """Probe one device: None picks CUDA if available, else MPS, else CPU.  The only probing function here."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:1' or 'mps'") from error
    if device.type == "cuda":
        return _detect_cuda(device.index)
    if device.type == "mps":
        return _detect_mps()
    if device.type == "cpu":
        return _detect_cpu()
    raise ValueError(f"device type {device.type!r} is not supported; use one of {DEVICE_KINDS}")


# ------------------------------------------------------------------------------------- pure functions of caps

def recommended_precision(caps: Capabilities) -> str:
    """The precision, "bf16", "fp16" or "fp32", for sampling and mixed-precision training on this device.

    * CUDA with native bf16 (cc >= 8.0): "bf16" (fp32's exponent range, so no loss scaling, no overflow).
    * CUDA with fp16 tensor cores but no bf16 (cc 7.x): "fp16".
    * everything else (CUDA cc < 7.0, MPS, CPU): "fp32".  Pascal has no fp16 tensor cores, so fp16 costs
      accuracy for little speed; atlas does not run MPS/CPU autocast by default (CPU bf16 autocast is slower
      than fp32 without AMX, and MPS autocast is untested here).
    """
    if caps.device_kind == "cuda":
        if caps.bf16:
            return "bf16"
        if caps.fp16 and caps.compute_capability is not None and caps.compute_capability >= (7, 0):
            return "fp16"
    return "fp32"


def _gib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / GIB:.1f} GiB"


def recommendations(caps: Capabilities) -> list[str]:
    """Human advice that follows from ``caps``: precision, TF32, CUDA graphs, attention and memory."""
    advice = []
    precision = recommended_precision(caps)
    if caps.device_kind == "cuda":
        cc = ".".join(map(str, caps.compute_capability)) if caps.compute_capability else "?"
        reason = {"bf16": "native bf16 (cc >= 8.0): fp32 range, no loss scaling",
                  "fp16": f"fp16 tensor cores but no native bf16 (cc {cc}); training needs a GradScaler",
                  "fp32": f"no fp16 tensor cores (cc {cc} < 7.0)"}[precision]
        advice.append(f"precision: {precision} ({reason})")
        if caps.tf32:
            advice.append("TF32: available; torch.backends.cuda.matmul.allow_tf32 = True speeds up fp32 matmuls "
                          "(10-bit mantissa inputs); keep it off for bitwise fp32 comparisons")
        else:
            advice.append(f"TF32: not available (needs cc >= 8.0, this GPU is cc {cc})")
        if caps.cuda_graphs:
            advice.append("CUDA graphs: available; atlas.runtime.enable_cuda_graphs(network) removes kernel-launch "
                          "overhead, which matters most at small batches; measure with benchmarks/cuda_graphs.py")
        else:
            advice.append(f"CUDA graphs: not available (PyTorch built with CUDA {caps.cuda_version}, needs 11.0+)")
        if not caps.flash_sdpa:
            advice.append("attention: no flash SDPA kernel on this GPU; SDPA uses the memory-efficient kernel")
    elif caps.device_kind == "mps":
        advice.append("precision: fp32 (MPS autocast is not validated by atlas; fp16 is opt-in)")
        advice.append("CUDA graphs: not available on MPS")
        advice.append("memory: MPS shares system RAM; large batches slow the whole machine before they fail")
    else:
        advice.append("precision: fp32 (CPU; bf16 autocast pays off only with native bf16, AVX512-BF16 or AMX" +
                      (", which this CPU has: try it if speed matters more than bitwise fp32" if caps.bf16 else "")
                      + ")")
        advice.append(f"CPU: {caps.cpu_count} usable core(s); sampling is slow, so use few steps (15-25), the "
                      "native resolution and batch size 1-4")
    free, total = caps.free_memory_bytes, caps.total_memory_bytes
    if caps.free_memory_source == "total_minus_reserved":
        advice.append("free memory is an upper bound (total - this process's reserved memory): other processes' "
                      "use is not counted")
    if free is None:
        advice.append("free memory is unknown on this platform; use batch_size='auto' to find what fits")
    elif caps.device_kind != "cpu":
        if free < 4 * GIB:
            advice.append(f"only {_gib(free)} free: use batch size 1, tiling above the native resolution and "
                          "batch_size='auto'")
        if total and free < 0.5 * total:
            advice.append(f"{_gib(total - free)} of {_gib(total)} is already in use (other processes?); free "
                          f"it or plan with {_gib(free)}")
    return advice


def format_report(caps: Capabilities) -> str:
    """A two-column table of ``caps`` for people (sizes in GiB, flags as yes/no)."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    where = caps.device_kind if caps.device_index is None else f"{caps.device_kind}:{caps.device_index}"
    cc = None if caps.compute_capability is None else ".".join(map(str, caps.compute_capability))
    rows = [
        ("device", where), ("name", caps.name), ("compute capability", cc or "-"),
        ("total memory", _gib(caps.total_memory_bytes)),
        ("free memory", f"{_gib(caps.free_memory_bytes)} (source: {caps.free_memory_source})"),
        ("bf16 (native)", yes(caps.bf16)), ("fp16", yes(caps.fp16)), ("tf32", yes(caps.tf32)),
        ("CUDA graphs", yes(caps.cuda_graphs)), ("flash SDPA", yes(caps.flash_sdpa)),
        ("recommended precision", recommended_precision(caps)), ("CPU cores", str(caps.cpu_count)),
        ("torch", caps.torch_version), ("CUDA (build)", caps.cuda_version or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
    lines += [f"note: {note}" for note in caps.notes]
    return "\n".join(lines)
