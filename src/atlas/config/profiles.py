"""GPU memory profiles: the single source of truth for the easy API's settings and the training presets.

Six profiles for GPUs of 6, 8, 12, 16, 24 and 32 GB (the specification's consumer tiers) and a conservative one
for CPUs. Each carries the model, training, sampler and kernel settings of its tier, and a memory budget that is
COMPUTED: the larger of the estimated peaks (:func:`atlas.config.memory_estimate.estimate_memory`) of one training step
of its model (micro-batch, resolution, precision) and of one sampling step at its inference batch with
classifier-free guidance. ``tests/config/test_config_profiles.py`` checks every budget is at most 0.9 x the tier.

``gpu_memory="auto"`` picks the largest profile whose budget fits the device's free memory
(:func:`detect_gpu_profile`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

import atlas

from atlas.config.kernel import KernelConfig
from atlas.config.sampler import ConditioningConfig, SamplerConfig
from atlas.io import atomic_write_json, cache_dir
from atlas.config.memory_estimate import MemoryEstimate, estimate_memory
from atlas.models import HighResModelConfig
from atlas.runtime.hardware import Capabilities, detect_capabilities
from atlas.runtime.precision import compute_dtype

__all__ = ["GPU_MEMORY_CHOICES", "PROFILES", "GPUProfile", "detect_gpu_profile", "get_profile", "list_profiles",
           "step_estimates"]

log = logging.getLogger(__name__)

MIB = 2 ** 20
TEXT_TOKENS = 16  # prompt length the budgets assume (atlas's vocabulary encoder: start token + 15 words)


@dataclass(frozen=True)
class GPUProfile:
    """One memory tier.

    Attributes:
        name: "6GB" ... "32GB", or "CPU".
        memory_gb: the tier's memory in GiB (the budget must stay under 0.9 x this).
        description: example devices.
        device_kind: "cuda" or "cpu".
        resolution: the training resolution of its model, and the largest image side generated without tiles.
        batch_size: images per sampling forward pass (the easy API's default).
        precision: autocast dtype for sampling and training ("bf16", "fp16" or "fp32").
        text_encoder: whether its training preset builds a text encoder (the specification's "CLIP enabled").
        tile_size: tile side in pixels for generation above ``resolution`` (None: no tiling).
        enable_cuda_graphs: replay sampling through CUDA graphs.
        model: HighResModelConfig fields of its training model (channels, depth, attention, checkpointing).
        training: TrainingConfig fields (micro-batch, accumulation, learning rate).
        kernel: the Schrodinger-bridge coupling's kernel settings (its memory budget scales with the tier).
    """

    name: str
    memory_gb: float
    description: str
    device_kind: str
    resolution: int
    batch_size: int
    precision: str
    text_encoder: bool
    tile_size: Optional[int]
    enable_cuda_graphs: bool
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    kernel: KernelConfig = field(default_factory=KernelConfig)

    def model_config(self, in_channels: int = 3, context_dim: Optional[int] | str = "default") -> HighResModelConfig:
        """The training model (``context_dim`` default: the text width if ``text_encoder`` else None)."""
        if context_dim == "default":
            context_dim = self.conditioning_config().context_dim
        return HighResModelConfig(in_channels=in_channels, resolution=self.resolution, context_dim=context_dim,
                                  pooled_dim=context_dim, **self.model)

    def conditioning_config(self) -> ConditioningConfig:
        if not self.text_encoder:  # unconditional: guidance would have no effect (validate_configs warns)
            return ConditioningConfig(text_encoder="none", guidance_scale=1.0)
        return ConditioningConfig(text_encoder="vocab")

    def sampler_config(self) -> SamplerConfig:
        """Its generation defaults: batch size, precision, CUDA graphs, and sequential tiles of ``tile_size``
        pixels, which act only on images larger than a tile (a tile covering the image is a no-op)."""
        return SamplerConfig(batch_size=self.batch_size, precision=self.precision,
                             enable_cuda_graphs=self.enable_cuda_graphs, tile_size=self.tile_size)

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.precision)

    @functools.cached_property
    def estimates(self) -> dict[str, MemoryEstimate]:
        """The estimated peaks behind the budget: one training step and one guided sampling step (computed
        once per profile object)."""
        return _estimates(self)

    @functools.cached_property
    def memory_budget_mb(self) -> float:
        """max(training step, sampling step) estimated peak of this profile's own settings, in MiB.

        Computing it traces two steps (seconds per profile), so the value is also kept on disk
        (``~/.cache/atlas/profile_budgets.json``), keyed by the profile's settings and a fingerprint of the
        estimator and model sources, atlas and torch: any change to those recomputes it.
        """
        key = _budget_key(self)
        cached = _read_budget_cache().get(key)
        if isinstance(cached, (int, float)) and cached > 0:
            return float(cached)
        budget = max(e.total_mb for e in self.estimates.values())
        _write_budget_cache(key, budget)
        return budget

    def summary(self) -> str:
        """The lines :func:`list_profiles` prints for this profile."""
        solver = self.kernel.solver_type
        return "\n".join([
            f"{self.name}:",
            f"  Description: {self.description}",
            f"  Resolution: {self.resolution}x{self.resolution}",
            f"  Batch size: {self.batch_size}",
            f"  Mixed precision: {self.precision != 'fp32'} ({self.precision})",
            f"  Text encoder enabled: {self.text_encoder}",
            f"  Kernel solver: {solver} (budget {self.kernel.memory_budget_mb:g} MB)",
            f"  Tiling above: {self.resolution}px with {self.tile_size}px tiles" if self.tile_size else "  Tiling: off",
            f"  CUDA graphs: {self.enable_cuda_graphs}",
            f"  Memory budget (estimated): {self.memory_budget_mb:,.0f} MB of {self.memory_gb:g} GB",
        ])


_FINGERPRINT_MODULES = ("atlas.config.memory_estimate", "atlas.memory.trace", "atlas.memory.ledger",
                        "atlas.memory.tiling", "atlas.models", "atlas.attention")


@functools.lru_cache(maxsize=1)
def _source_fingerprint() -> str:
    """SHA-256 over the sources that decide an estimate, plus the atlas and torch versions."""
    digest = hashlib.sha256(f"{atlas.__version__} {torch.__version__}".encode())
    for name in _FINGERPRINT_MODULES:
        path = Path(importlib.import_module(name).__file__)
        for source in sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]:
            digest.update(source.read_bytes())
    return digest.hexdigest()


def _budget_key(profile: GPUProfile) -> str:
    settings = {"model": profile.model_config().to_dict(), "training": profile.training,
                "resolution": profile.resolution, "batch_size": profile.batch_size, "precision": profile.precision,
                "text_encoder": profile.text_encoder, "device_kind": profile.device_kind}
    payload = json.dumps(settings, sort_keys=True, default=str) + _source_fingerprint()
    return hashlib.sha256(payload.encode()).hexdigest()


def _budget_cache_path() -> Path:
    return cache_dir() / "profile_budgets.json"


def _read_budget_cache() -> dict[str, Any]:
    path = _budget_cache_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring the unreadable profile budget cache %s (%s); it will be rewritten", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _write_budget_cache(key: str, budget: float) -> None:
    try:
        atomic_write_json(_budget_cache_path(), {**_read_budget_cache(), key: budget})
    except OSError as error:  # a read-only home: the budget is still returned, only not kept
        log.warning("could not write the profile budget cache %s: %s", _budget_cache_path(), error)


def step_estimates(model: HighResModelConfig, *, micro_batch: int, inference_batch: int, precision: str,
                   device: str, ema: bool) -> dict[str, MemoryEstimate]:
    """The two peaks a budget is the larger of: one training step at ``micro_batch`` and one sampling step
    (guided for a text model) at ``inference_batch``, both at the model's resolution and ``precision``."""
    tokens = TEXT_TOKENS if model.context_dim is not None else None
    dtype = compute_dtype(precision)
    training = estimate_memory(model, batch_size=micro_batch, resolution=model.resolution, dtype=dtype,
                               mode="training", text_tokens=tokens, device=device, ema=ema)
    inference = estimate_memory(model, batch_size=inference_batch, resolution=model.resolution, dtype=dtype,
                                mode="inference", text_tokens=tokens, device=device)
    return {"training": training, "inference": inference}


def _estimates(profile: GPUProfile) -> dict[str, MemoryEstimate]:
    return step_estimates(profile.model_config(),
                          micro_batch=profile.training["batch_size"] // profile.training.get("grad_accum", 1),
                          inference_batch=profile.batch_size, precision=profile.precision,
                          device="cuda" if profile.device_kind == "cuda" else "cpu",
                          ema=profile.training.get("ema_decay", 0.999) > 0)


def _profile(name: str, memory_gb: float, description: str, **fields: Any) -> GPUProfile:
    fields.setdefault("device_kind", "cuda")
    fields.setdefault("kernel", KernelConfig(memory_budget_mb=max(64.0, 16.0 * memory_gb)))
    return GPUProfile(name=name, memory_gb=memory_gb, description=description, **fields)


_UNET = dict(num_res_blocks=2, num_heads=8, norm_groups=32)
PROFILES: dict[str, GPUProfile] = {p.name: p for p in (
    _profile("CPU", 4, "Any CPU (laptop or server): small models, fp32", device_kind="cpu", resolution=64,
             batch_size=4, precision="fp32", text_encoder=True, tile_size=None, enable_cuda_graphs=False,
             model=dict(base_channels=64, channel_mult=(1, 2, 2), attention_levels=(1, 2), num_res_blocks=1,
                        num_heads=4, norm_groups=16),
             training=dict(batch_size=16, grad_accum=1, lr=2e-4)),
    _profile("6GB", 6, "Consumer GPUs: GTX 1660, RTX 3050, RTX 4050", resolution=256, batch_size=4,
             precision="fp16", text_encoder=False, tile_size=256, enable_cuda_graphs=False,
             model=dict(base_channels=64, channel_mult=(1, 1, 2, 2, 4), attention_levels=(3, 4),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=2, lr=1e-4)),
    _profile("8GB", 8, "Consumer GPUs: RTX 3060 Ti, RTX 3070, RTX 4060", resolution=256, batch_size=8,
             precision="fp16", text_encoder=True, tile_size=256, enable_cuda_graphs=False,
             model=dict(base_channels=64, channel_mult=(1, 2, 2, 4, 4), attention_levels=(3, 4),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=2, lr=1e-4)),
    _profile("12GB", 12, "RTX 3060 12GB, RTX 3080 12GB, RTX 4070 Ti", resolution=512, batch_size=8,
             precision="bf16", text_encoder=True, tile_size=512, enable_cuda_graphs=False,
             model=dict(base_channels=64, channel_mult=(1, 1, 2, 2, 4, 4), attention_levels=(4, 5),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=4, lr=1e-4)),
    _profile("16GB", 16, "RTX 4060 Ti 16GB, RTX 4080, RTX A4000", resolution=512, batch_size=8,
             precision="bf16", text_encoder=True, tile_size=512, enable_cuda_graphs=True,
             model=dict(base_channels=96, channel_mult=(1, 1, 2, 2, 4, 4), attention_levels=(4, 5),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=4, lr=1e-4)),
    _profile("24GB", 24, "RTX 3090, RTX 4090, RTX A5000", resolution=1024, batch_size=4,
             precision="bf16", text_encoder=True, tile_size=1024, enable_cuda_graphs=True,
             model=dict(base_channels=64, channel_mult=(1, 1, 2, 2, 4, 4, 4), attention_levels=(5, 6),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=8, lr=1e-4)),
    _profile("32GB", 32, "RTX 5090, V100 32GB, RTX A6000 (48GB also fits)", resolution=1024, batch_size=4,
             precision="bf16", text_encoder=True, tile_size=1024, enable_cuda_graphs=True,
             model=dict(base_channels=96, channel_mult=(1, 1, 2, 2, 4, 4, 4), attention_levels=(5, 6),
                        gradient_checkpointing=True, **_UNET),
             training=dict(batch_size=16, grad_accum=8, lr=1e-4)),
)}
GPU_MEMORY_CHOICES = ("auto", "6GB", "8GB", "12GB", "16GB", "24GB", "32GB", "CPU")


def get_profile(gpu_memory: str | GPUProfile, capabilities: Capabilities | None = None) -> GPUProfile:
    """``"auto"`` (detected), a tier name such as ``"8GB"`` (case-insensitive, "8gb" and "8" too) or "CPU"."""
    if isinstance(gpu_memory, GPUProfile):
        return gpu_memory
    if not isinstance(gpu_memory, str):
        raise TypeError(f"gpu_memory must be a str such as '8GB' or 'auto', got {type(gpu_memory).__name__}")
    if gpu_memory.strip().lower() == "auto":
        return detect_gpu_profile(capabilities)
    key = gpu_memory.strip().upper().replace(" ", "")
    key = key if key.endswith("GB") or key == "CPU" else f"{key}GB"
    if key not in PROFILES:
        raise ValueError(f"gpu_memory={gpu_memory!r} is not a profile; valid values are {list(GPU_MEMORY_CHOICES)} "
                         f"(run atlas.list_profiles() to see them)")
    return PROFILES[key]


def detect_gpu_profile(capabilities: Capabilities | None = None) -> GPUProfile:
    """The profile for a device: CPU/MPS -> "CPU"; CUDA -> the largest tier whose estimated budget fits its free
    memory (the smallest tier, with its tiling, when even that does not fit; free memory unknown -> total)."""
    caps = capabilities or detect_capabilities()
    if caps.device_kind != "cuda":
        return PROFILES["CPU"]
    free = caps.free_memory_bytes if caps.free_memory_bytes is not None else caps.total_memory_bytes
    tiers = [p for p in PROFILES.values() if p.device_kind == "cuda"]
    if free is None:
        return tiers[0]
    fitting = [p for p in tiers if p.memory_budget_mb * MIB <= free]
    return max(fitting, key=lambda p: p.memory_gb) if fitting else tiers[0]


def list_profiles(print_table: bool = True) -> list[GPUProfile]:
    """Print every profile (as the specification shows) and return them."""
    profiles = list(PROFILES.values())
    if print_table:
        print("Available GPU Memory Profiles:")
        print("=" * 79)
        for profile in profiles:
            print()
            print(profile.summary())
    return profiles
