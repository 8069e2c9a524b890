"""Memory techniques that work on any denoiser or module (torch only): tiled denoising, the live-bytes ledger
and meters, meta-device step tracing, the OOM guard with its back-off ladder, and batch-size autotuning."""

from .autotune import autotune_batch_size, cache_key, search_largest_fitting
from .guard import (
    BackoffEvent,
    BackoffLog,
    format_oom_message,
    free_memory,
    is_out_of_memory,
    memory_usage,
    run_with_backoff,
)
from .ledger import LiveBytesLedger, MeterUnavailable, measure_peak_bytes, profiler_peak_bytes
from .tiling import (
    BLENDINGS,
    DEFAULT_TILE_OVERLAP,
    TileCall,
    TiledDenoiser,
    TileLayout,
    TilingConfig,
    blend_weights,
    blend_window,
    tile_layout,
    tile_starts,
)
from .trace import (
    ATTENTION_KERNELS,
    OPTIMIZERS,
    TRACE_DEVICES,
    MetaTraceMode,
    StepTrace,
    make_optimizer,
    optimizer_state,
    tensor_bytes,
    trace_step,
)

__all__ = [
    # tiling
    "BLENDINGS", "DEFAULT_TILE_OVERLAP", "TileCall", "TileLayout", "TiledDenoiser", "TilingConfig",
    "blend_weights", "blend_window", "tile_layout", "tile_starts",
    # guard
    "BackoffEvent", "BackoffLog", "format_oom_message", "free_memory", "is_out_of_memory", "memory_usage",
    "run_with_backoff",
    # autotune
    "autotune_batch_size", "cache_key", "search_largest_fitting",
    # ledger
    "LiveBytesLedger", "MeterUnavailable", "measure_peak_bytes", "profiler_peak_bytes",
    # trace
    "ATTENTION_KERNELS", "OPTIMIZERS", "TRACE_DEVICES", "MetaTraceMode", "StepTrace", "make_optimizer",
    "optimizer_state", "tensor_bytes", "trace_step",
]
