"""`SamplerConfig` and `ConditioningConfig`: how images are generated, and how prompts condition them.

These are the specification's configuration objects (``../shared/seeds/000``, ``002``). Every field changes what
generation does (tests/config/test_config_fields.py checks each one in a probe run); the transport knobs of the
specification live in :class:`atlas.config.KernelConfig` and ``TrainingConfig.sb_iterations`` because the
Schrodinger bridge is solved at training time (docs/TRANSPORT.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

from atlas.diffusion import SAMPLERS, SCHEDULES
from atlas.memory.tiling import BLENDINGS, TilingConfig

__all__ = ["PRECISIONS", "ConditioningConfig", "SamplerConfig"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_ENCODERS = ("vocab", "none")


def _int_at_least(owner: str, name: str, value: Any, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}.{name}={value!r} must be an integer >= {low}{hint}")


@dataclass(frozen=True)
class SamplerConfig:
    """Generation settings.

    Attributes:
        sampler: a name of :data:`atlas.diffusion.SAMPLERS` ("dpmpp_2m", "heun", "euler", "unipc", ...).
        schedule: the sigma grid, a name of :data:`atlas.diffusion.SCHEDULES`.
        timesteps: sampler steps when ``generate`` is not given ``timesteps``.
        batch_size: images per forward pass (None: all at once). Images do not depend on it (per-image seeds).
        precision: "auto" (the hardware's recommendation: bf16 or fp16 on CUDA, fp32 on CPU), "fp32", "bf16" or
            "fp16": the autocast dtype of the network's forward passes.
        enable_cuda_graphs: replay the network through captured CUDA graphs (CUDA only; eager elsewhere, and on a
            failed capture, with a warning).
        cuda_graph_warmup_iters: eager calls before each capture.
        cuda_graph_cache_size: graphs kept (LRU), one per input shape.
        tile_size: denoise over overlapping tiles of this many pixels (None: no tiling); converted to latent
            units through the autoencoder's factor.
        tile_stride: pixels between tile starts (<= tile_size); or give ``tile_overlap`` instead (both only when
            they agree).
        tile_overlap: fraction of a tile shared with its neighbour, in [0, 1) (default 0.125 when tiling).
        tile_blending: "hann", "linear" or "none" window over each tile.
        ultrahighres_sequential_tiles: one tile per network call, so the peak is bounded by the tile (default);
            False batches all tiles of an image into one call: faster, but it holds every tile at once and needs
            MORE memory than no tiling (measured by the estimator, docs/QUICKSTART.md section 6).
        hierarchical: above the model's native resolution, generate coarse-to-fine (native first, then upsample,
            re-noise and refine); False samples directly at the requested size.
        oom_backoff: on out-of-memory, halve the batch and retry, then enable tiling (each step logged).
        memory_check: estimate memory before generating and warn when it exceeds the free memory.
        verbose_logging: log atlas at INFO level during generation.
    """

    sampler: str = "dpmpp_2m"
    schedule: str = "karras"
    timesteps: int = 50
    batch_size: Optional[int] = None
    precision: str = "auto"
    enable_cuda_graphs: bool = False
    cuda_graph_warmup_iters: int = 2
    cuda_graph_cache_size: int = 16
    tile_size: Optional[int] = None
    tile_stride: Optional[int] = None
    tile_overlap: Optional[float] = None
    tile_blending: str = "hann"
    ultrahighres_sequential_tiles: bool = True
    hierarchical: bool = True
    oom_backoff: bool = True
    memory_check: bool = True
    verbose_logging: bool = False

    def __post_init__(self) -> None:
        owner = "SamplerConfig"
        if self.sampler not in SAMPLERS:
            raise ValueError(f"{owner}.sampler={self.sampler!r} is not one of {sorted(SAMPLERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{owner}.schedule={self.schedule!r} is not one of {sorted(SCHEDULES)}")
        _int_at_least(owner, "timesteps", self.timesteps, 1, "; 20-50 is typical")
        if self.batch_size is not None:
            _int_at_least(owner, "batch_size", self.batch_size, 1, " or None (all images at once)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{owner}.precision={self.precision!r} must be one of {PRECISIONS}")
        _int_at_least(owner, "cuda_graph_warmup_iters", self.cuda_graph_warmup_iters, 0)
        _int_at_least(owner, "cuda_graph_cache_size", self.cuda_graph_cache_size, 1)
        if self.tile_blending not in BLENDINGS:
            raise ValueError(f"{owner}.tile_blending={self.tile_blending!r} must be one of {BLENDINGS}")
        if self.tile_size is None:
            for name in ("tile_stride", "tile_overlap"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{owner}.{name}={getattr(self, name)!r} has no effect without tile_size; "
                                     f"set tile_size (e.g. 512) or leave {name}=None")
        else:
            self.tiling_config()  # TilingConfig validates the tile fields

    def tiling_config(self) -> Optional[TilingConfig]:
        """The tile settings in pixels (None without tile_size); convert with ``.in_latent_units(factor)``."""
        if self.tile_size is None:
            return None
        return TilingConfig(self.tile_size, tile_stride=self.tile_stride, tile_overlap=self.tile_overlap,
                            blending=self.tile_blending, sequential=self.ultrahighres_sequential_tiles)

    def updated(self, **changes: Any) -> "SamplerConfig":
        """A copy with ``changes`` applied (validated); unknown names raise TypeError listing the fields."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown SamplerConfig option(s) {unknown}; valid options are "
                            f"{sorted(f.name for f in fields(self))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplerConfig":
        return cls().updated(**data)


@dataclass(frozen=True)
class ConditioningConfig:
    """Prompt conditioning.

    Attributes:
        guidance_scale: classifier-free guidance weight w when ``generate`` is not given one (1 = no guidance).
        negative_prompt: the prompt on the unconditional side of guidance when none is given ("" = unconditional).
        text_encoder: for training presets, "vocab" (atlas's small text encoder, trained with the model) or
            "none" (an unconditional model). A checkpoint always brings its own encoder.
        text_dim: width of the text encoder's token states (the model's ``context_dim`` must equal it).
        text_layers: Transformer layers of the text encoder.
    """

    guidance_scale: float = 7.5
    negative_prompt: str = ""
    text_encoder: str = "vocab"
    text_dim: int = 64
    text_layers: int = 2

    def __post_init__(self) -> None:
        if not (isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)
                and self.guidance_scale >= 0):
            raise ValueError(f"ConditioningConfig.guidance_scale={self.guidance_scale!r} must be a finite number >= 0 "
                             "(1 = no guidance; 3-8 is typical)")
        if not isinstance(self.negative_prompt, str):
            raise TypeError(f"ConditioningConfig.negative_prompt must be a str, got {type(self.negative_prompt).__name__}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"ConditioningConfig.text_encoder={self.text_encoder!r} must be one of {TEXT_ENCODERS}")
        _int_at_least("ConditioningConfig", "text_dim", self.text_dim, 1)
        _int_at_least("ConditioningConfig", "text_layers", self.text_layers, 0)

    @property
    def context_dim(self) -> Optional[int]:
        """The ``context_dim`` a model conditioned this way needs (None for text_encoder="none")."""
        return None if self.text_encoder == "none" else self.text_dim

    def text_overrides(self) -> Optional[dict[str, Any]]:
        """TextEncoderConfig fields for training (None: no text encoder)."""
        if self.text_encoder == "none":
            return None
        return {"dim": self.text_dim, "num_layers": self.text_layers, "num_heads": 4 if self.text_dim % 4 == 0 else 1}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
