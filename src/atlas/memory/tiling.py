"""Tiled denoising: evaluate a denoiser on overlapping tiles and blend (MultiDiffusion-style).

At every call the image ``x (B, C, H, W)`` is cut into ``tile x tile`` windows whose starts are ``stride`` apart
(the last tile on each axis shifted inward so it ends flush with the border), the denoiser runs on every tile, and
the outputs are blended with per-tile windows ``w_n`` normalised so that they sum to 1 at every pixel::

    D_tiled(x) = sum_n  P_n^T [ w_n * D(P_n x) ] / sum_n P_n^T w_n

(Bar-Tal et al. 2023, "MultiDiffusion", Eq. 5, with spatial windows instead of uniform weights; ``P_n`` crops
tile n).  For a pointwise denoiser this equals the untiled call exactly.  For a real network it is an
approximation: receptive fields are cut at tile borders, and GroupNorm and attention see per-tile statistics
(means, variances, softmax normalisers over the tile's tokens only), so a tiled UNet is not the same function
as the untiled one even where tiles do not overlap.

Units: :class:`TilingConfig` is given in image pixels; :meth:`TilingConfig.in_latent_units` divides by the
autoencoder's downsampling factor, and :class:`TiledDenoiser` tiles the tensor it is called on (the latent).
Conditioning keywords (``context``, ``context_mask``, ``pooled``: batch first, not spatial) reach every tile.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "BLENDINGS", "DEFAULT_TILE_OVERLAP", "TileCall", "TileLayout", "TiledDenoiser", "TilingConfig",
    "blend_weights", "blend_window", "tile_layout", "tile_starts",
]

logger = logging.getLogger(__name__)

BLENDINGS = ("hann", "linear", "none")
DEFAULT_TILE_OVERLAP = 0.125


def _check_positive_int(name: str, value: Any, unit: str = "pixels") -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int number of {unit}, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive number of {unit}, got {value}")


def _stride_from_overlap(tile_size: int, overlap: float) -> int:
    # Round half up (not Python's banker's rounding): 512 px at 10% -> 461, at 20% -> 410, as in the docs' table.
    return int(math.floor(tile_size * (1.0 - overlap) + 0.5))


@dataclass(frozen=True)
class TilingConfig:
    """Tile geometry and blending, in image pixels; validated on construction.

    Attributes:
        tile_size: side of a square tile, pixels (> 0).
        tile_stride: distance between tile starts, pixels, ``1 <= tile_stride <= tile_size``.
        tile_overlap: fraction of the tile shared with the next one, in [0, 1); the stride is
            ``round(tile_size * (1 - tile_overlap))``. 0.125 when neither stride nor overlap is given.
            Both may be given only if they agree.
        blending: tile window, one of :data:`BLENDINGS` (see :func:`blend_window`).
        sequential: True runs one denoiser call per tile (lowest memory); False stacks all tiles of the batch
            into one call (faster, memory grows with the tile count).
    """

    tile_size: int
    tile_stride: Optional[int] = None
    tile_overlap: Optional[float] = None
    blending: str = "hann"
    sequential: bool = True

    def __post_init__(self) -> None:
        _check_positive_int("tile_size", self.tile_size)
        if self.tile_stride is not None:
            _check_positive_int("tile_stride", self.tile_stride)
            if self.tile_stride > self.tile_size:
                raise ValueError(
                    f"tile_stride ({self.tile_stride}) must be <= tile_size ({self.tile_size}); "
                    f"use tile_overlap={DEFAULT_TILE_OVERLAP} for the default"
                )
        if self.tile_overlap is not None:
            overlap = self.tile_overlap
            if isinstance(overlap, bool) or not isinstance(overlap, Real) or not 0.0 <= overlap < 1.0:
                raise ValueError(
                    f"tile_overlap must be a fraction in [0, 1), got {overlap!r}; "
                    f"use tile_overlap={DEFAULT_TILE_OVERLAP} for the default"
                )
            stride = _stride_from_overlap(self.tile_size, float(overlap))
            if self.tile_stride is not None and stride != self.tile_stride:
                raise ValueError(
                    f"tile_stride ({self.tile_stride}) and tile_overlap ({overlap}) disagree: with tile_size "
                    f"{self.tile_size} that overlap means a stride of {stride}; pass only one of them"
                )
            if stride < 1:
                raise ValueError(
                    f"tile_overlap ({overlap}) leaves a stride of {self.tile_size * (1 - overlap):.3g} < 1 pixel "
                    f"for tile_size {self.tile_size}; use a smaller overlap or a larger tile"
                )
        elif self.tile_stride is None:
            object.__setattr__(self, "tile_overlap", DEFAULT_TILE_OVERLAP)
            if self.stride < 1:
                raise ValueError(
                    f"tile_size ({self.tile_size}) is too small for the default tile_overlap "
                    f"({DEFAULT_TILE_OVERLAP}); pass tile_stride=1 or a larger tile_size"
                )
        if self.blending not in BLENDINGS:
            raise ValueError(f"unknown tile blending {self.blending!r}; valid blendings are {list(BLENDINGS)}")
        if not isinstance(self.sequential, bool):
            raise TypeError(f"sequential must be True or False, got {self.sequential!r}")

    @property
    def stride(self) -> int:
        """Distance between tile starts, in the same units as ``tile_size``."""
        if self.tile_stride is not None:
            return self.tile_stride
        return _stride_from_overlap(self.tile_size, float(self.tile_overlap))

    def in_latent_units(self, latent_factor: int) -> "TilingConfig":
        """This config with tile and stride divided by the autoencoder's downsampling factor.

        ``tile_size`` must be a multiple of the factor (a tile is an exact latent region).  With ``tile_overlap``
        the overlap fraction is kept; an explicit ``tile_stride`` that is not a multiple is rounded down (more
        overlap, never a gap) and logged at WARNING.  ``latent_factor`` 1 returns ``self``.
        """
        _check_positive_int("latent_factor", latent_factor, unit="pixels per latent pixel")
        factor = int(latent_factor)
        if factor == 1:
            return self
        if self.tile_size < factor or self.tile_size % factor:
            lower = max(factor, self.tile_size // factor * factor)
            raise ValueError(
                f"tile_size ({self.tile_size} pixels) must be a multiple of the autoencoder factor ({factor}) "
                f"so that a tile is a whole number of latent pixels; use tile_size={lower} or {lower + factor}"
            )
        tile = self.tile_size // factor
        common = dict(blending=self.blending, sequential=self.sequential)
        if self.tile_stride is None:
            if _stride_from_overlap(tile, float(self.tile_overlap)) < 1:
                raise ValueError(
                    f"tile_overlap ({self.tile_overlap}) leaves no stride for a tile of {tile} latent pixels "
                    f"(tile_size {self.tile_size} pixels / factor {factor}); use a smaller overlap or larger tile"
                )
            return TilingConfig(tile, tile_overlap=self.tile_overlap, **common)
        stride = self.tile_stride // factor
        if stride < 1:
            raise ValueError(
                f"tile_stride ({self.tile_stride} pixels) is less than one latent pixel at autoencoder factor "
                f"{factor}; use tile_stride >= {factor}"
            )
        if self.tile_stride % factor:
            logger.warning(
                "tile_stride (%d pixels) is not a multiple of the autoencoder factor %d; tiles step by %d latent "
                "pixels (%d pixels) instead", self.tile_stride, factor, stride, stride * factor,
            )
        return TilingConfig(tile, tile_stride=stride, **common)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the tiles along one axis.

    ``ceil((length - tile) / stride) + 1`` tiles at ``0, stride, 2 stride, ...`` with the last one moved to
    ``length - tile`` (flush with the border); ``[0]`` when ``tile >= length`` (the tile is then the whole axis).
    Consecutive starts differ by at most ``stride <= tile``, so every position is covered.
    """
    _check_positive_int("length", length)
    _check_positive_int("tile", tile)
    _check_positive_int("stride", stride)
    if stride > tile:
        raise ValueError(f"stride ({stride}) must be <= tile ({tile}), otherwise positions between tiles are lost")
    if tile >= length:
        return [0]
    count = -(-(length - tile) // stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


@dataclass(frozen=True)
class TileLayout:
    """Where the tiles of an ``height x width`` image lie; every tile is ``tile_height x tile_width``."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles per axis (rows, columns)."""
        return len(self.starts_y), len(self.starts_x)

    def __len__(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def boxes(self) -> list[tuple[int, int]]:
        """(top, left) of every tile, row-major; tile n covers ``[top, top + tile_height) x [left, ...)``."""
        return [(top, left) for top in self.starts_y for left in self.starts_x]


def tile_layout(height: int, width: int, tile: int, stride: int) -> TileLayout:
    """The tiles of an image; an axis shorter than the tile gets one tile spanning it."""
    return TileLayout(height, width, min(tile, height), min(tile, width),
                      tuple(tile_starts(height, tile, stride)), tuple(tile_starts(width, tile, stride)))


def blend_window(length: int, blending: str, at_start: bool = False, at_end: bool = False,
                 dtype: torch.dtype = torch.float64, device: Optional[torch.device] = None) -> Tensor:
    """One axis of a tile window, shape (length,), strictly positive.

    ``hann``: ``0.5 - 0.5 cos(2 pi (i + 1) / (length + 1))``, a raised cosine whose zeros lie one step outside
    the tile; ``linear``: the triangle ``2 min(i + 1, length - i) / (length + 1)``; ``none``: ones (a plain
    average where tiles overlap, MultiDiffusion's uniform weights).  A side lying on the image border is
    flattened to the window's peak (``at_start``/``at_end``), since nothing there blends with it.
    """
    if blending not in BLENDINGS:
        raise ValueError(f"unknown tile blending {blending!r}; valid blendings are {list(BLENDINGS)}")
    index = torch.arange(length, dtype=torch.float64, device=device)
    # Distance to the nearer edge, in (0, 1/2]: both windows are exactly symmetric by construction.
    position = torch.minimum(index + 1, length - index) / (length + 1)
    if blending == "hann":
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * position)
    elif blending == "linear":
        window = 2 * position
    else:
        window = torch.ones(length, dtype=torch.float64, device=device)
    if at_start:  # every value left of the peak becomes the peak: a running max from the right
        window = torch.flip(torch.cummax(torch.flip(window, (0,)), 0).values, (0,))
    if at_end:
        window = torch.cummax(window, 0).values
    return window.to(dtype)


def blend_weights(layout: TileLayout, blending: str, dtype: torch.dtype = torch.float64,
                  device: Optional[torch.device] = None) -> Tensor:
    """Normalised tile weights, shape (N, tile_height, tile_width) in the order of ``layout.boxes()``.

    Weight n is ``w_n / sum_m w_m`` at the pixel it lands on (separable windows from :func:`blend_window`), so
    the weights of all tiles covering a pixel sum to 1.  Windows are strictly positive and every pixel is
    covered, so the denominator is >= the smallest window value: no NaN, no Inf.
    """
    rows = [blend_window(layout.tile_height, blending, top == 0, top + layout.tile_height == layout.height,
                         torch.float64, device) for top in layout.starts_y]
    cols = [blend_window(layout.tile_width, blending, left == 0, left + layout.tile_width == layout.width,
                         torch.float64, device) for left in layout.starts_x]
    windows = torch.stack([row[:, None] * col[None, :] for row in rows for col in cols])
    total = torch.zeros(layout.height, layout.width, dtype=torch.float64, device=device)
    for window, (top, left) in zip(windows, layout.boxes()):
        total[top:top + layout.tile_height, left:left + layout.tile_width] += window
    normalised = [window / total[top:top + layout.tile_height, left:left + layout.tile_width]
                  for window, (top, left) in zip(windows, layout.boxes())]
    return torch.stack(normalised).to(dtype)


@dataclass(frozen=True)
class TileCall:
    """What one :class:`TiledDenoiser` call did (sizes in the units of the tensor, i.e. latent pixels)."""

    image_size: tuple[int, int]
    tile_size: tuple[int, int]
    grid: tuple[int, int]
    denoiser_calls: int
    batch_per_call: int

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]


class TiledDenoiser(nn.Module):
    """A denoiser ``D(x, sigma, **cond)`` evaluated tile by tile and blended (see the module docstring).

    Usable wherever a denoiser is: under ``classifier_free_guidance(TiledDenoiser(...), cond, uncond, w)`` (the
    2B guidance batch is tiled like any batch) and around ``atlas.diffusion.Denoiser(network)``.  When the tile
    covers the whole image the wrapped denoiser is called once with the arguments unchanged.

    Args:
        denoiser: ``denoiser(x (B, C, h, w), sigma, **cond) -> (B, C', h, w)``.
        config: tile geometry in image pixels.
        latent_factor: the autoencoder's downsampling factor (1 for pixel-space models).
    """

    def __init__(self, denoiser: Callable[..., Tensor], config: TilingConfig, latent_factor: int = 1):
        super().__init__()
        if not isinstance(config, TilingConfig):
            raise TypeError(f"config must be a TilingConfig, got {type(config).__name__}")
        self.latent_config = config.in_latent_units(latent_factor)  # validates latent_factor
        self.denoiser = denoiser
        self.config = config
        self.latent_factor = int(latent_factor)
        self.last_call: Optional[TileCall] = None
        self.forward_calls = 0
        self.denoiser_calls = 0
        self.tiles_evaluated = 0

    def stats(self) -> dict[str, Any]:
        """Counters since construction (or :meth:`reset_stats`) and the last call's record.

        ``tiles_evaluated`` counts tile images (tiles x batch rows) given to the denoiser; a call that fits in
        one tile counts its batch.
        """
        return {"forward_calls": self.forward_calls, "denoiser_calls": self.denoiser_calls,
                "tiles_evaluated": self.tiles_evaluated, "last_call": self.last_call}

    def reset_stats(self) -> None:
        self.last_call, self.forward_calls, self.denoiser_calls, self.tiles_evaluated = None, 0, 0, 0

    def _record(self, call: TileCall) -> None:
        self.last_call = call
        self.forward_calls += 1
        self.denoiser_calls += call.denoiser_calls
        self.tiles_evaluated += call.denoiser_calls * call.batch_per_call

    def forward(self, x: Tensor, sigma: float | Tensor, **cond: Any) -> Tensor:
        """Blended denoiser output, shape (B, C', H, W) in the denoiser's output dtype.

        Args:
            x: noisy latents (B, C, H, W).
            sigma: a float, a 0-d or (1,) tensor, or (B,).
            **cond: conditioning keywords; tensors must have batch B first and are given to every tile (row b
                of every tile of sample b); None and non-tensor values pass through unchanged.
        """
        if x.ndim != 4:
            raise ValueError(f"tiling needs x of shape (B, C, H, W), got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        tile, stride = self.latent_config.tile_size, self.latent_config.stride
        if tile >= height and tile >= width:
            self._record(TileCall((height, width), (height, width), (1, 1), 1, batch))
            return self.denoiser(x, sigma, **cond)
        _check_cond(cond, batch)
        sigma_per_sample = _check_sigma(sigma, batch)
        layout = tile_layout(height, width, tile, stride)
        boxes, th, tw = layout.boxes(), layout.tile_height, layout.tile_width
        count = len(boxes)

        if self.latent_config.sequential:
            outputs = (self._call(x[:, :, top:top + th, left:left + tw].contiguous(), sigma, cond, batch, th, tw)
                       for top, left in boxes)
            call = TileCall((height, width), (th, tw), layout.grid, count, batch)
        else:
            tiles = torch.stack([x[:, :, top:top + th, left:left + tw] for top, left in boxes], dim=1)
            tiles = tiles.reshape(batch * count, *tiles.shape[2:])  # sample-major: row b * count + n
            tile_sigma = sigma.repeat_interleave(count) if sigma_per_sample else sigma
            tile_cond = {name: value.repeat_interleave(count, dim=0) if isinstance(value, Tensor) else value
                         for name, value in cond.items()}
            stacked = self._call(tiles, tile_sigma, tile_cond, batch * count, th, tw)
            stacked = stacked.reshape(batch, count, *stacked.shape[1:])
            outputs = (stacked[:, n] for n in range(count))
            call = TileCall((height, width), (th, tw), layout.grid, 1, batch * count)

        weights = blend_weights(layout, self.latent_config.blending)  # float64 on the CPU; moved once below
        out_dtype = accumulator = None
        for n, (out, (top, left)) in enumerate(zip(outputs, boxes)):
            if accumulator is None:
                out_dtype = out.dtype
                accumulator = torch.zeros((batch, out.shape[1], height, width), device=out.device,
                                          dtype=torch.promote_types(out.dtype, torch.float32))
                weights = weights.to(device=out.device, dtype=accumulator.dtype)
            accumulator[:, :, top:top + th, left:left + tw] += weights[n] * out.to(accumulator.dtype)
        self._record(call)
        return accumulator.to(out_dtype)

    def _call(self, tiles: Tensor, sigma: Any, cond: dict[str, Any], batch: int, th: int, tw: int) -> Tensor:
        out = self.denoiser(tiles, sigma, **cond)
        if out.ndim != 4 or out.shape[0] != batch or out.shape[2:] != (th, tw):
            raise ValueError(
                f"the denoiser returned shape {tuple(out.shape)} for tiles of shape {tuple(tiles.shape)}; tiling "
                f"needs an output of shape ({batch}, C, {th}, {tw}) (same batch and spatial size as its input)"
            )
        return out

    def extra_repr(self) -> str:
        c = self.latent_config
        return (f"tile_size={self.config.tile_size}px, stride={self.config.stride}px, latent_factor="
                f"{self.latent_factor} (latent tile {c.tile_size}, stride {c.stride}), blending={c.blending!r}, "
                f"sequential={c.sequential}")


def _check_cond(cond: dict[str, Any], batch: int) -> None:
    for name, value in cond.items():
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != batch):
            raise ValueError(
                f"conditioning {name!r} has shape {tuple(value.shape)} but x has batch {batch}; tiled denoising "
                f"gives row b of every conditioning tensor to the tiles of sample b, so its first dim must be {batch}"
            )


def _check_sigma(sigma: Any, batch: int) -> bool:
    """True when sigma is per-sample (B,) (and must be repeated for stacked tiles); False for a scalar."""
    if not isinstance(sigma, Tensor) or sigma.ndim == 0 or tuple(sigma.shape) == (1,):
        return False
    if tuple(sigma.shape) != (batch,):
        raise ValueError(
            f"sigma must be a float, a 0-d tensor, shape (1,) or shape (B,) = ({batch},), got {tuple(sigma.shape)}"
        )
    return True
