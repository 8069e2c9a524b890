"""Memory techniques that work on any denoiser or module: tiled denoising (more modules to come)."""

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

__all__ = [
    "BLENDINGS", "DEFAULT_TILE_OVERLAP", "TileCall", "TileLayout", "TiledDenoiser", "TilingConfig",
    "blend_weights", "blend_window", "tile_layout", "tile_starts",
]
