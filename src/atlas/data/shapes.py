"""Procedural coloured shapes with captions: a dataset whose prompt adherence can be checked exactly.

Each image is one axis-aligned shape (circle, square, or upright triangle) of one
named colour on a plain background of a different named colour, rendered
anti-aliased. Because the palette and geometry are ours,
:func:`atlas.eval.shapes_metric.classify_shapes_image` recovers the attributes of
every item exactly, which turns "does the sample match its prompt" into a number.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from atlas.data.transforms import pil_to_tensor

__all__ = [
    "SHAPES",
    "COLORS",
    "NEUTRAL_BACKGROUNDS",
    "BACKGROUNDS",
    "CAPTION_MODES",
    "ShapeAttributes",
    "ShapesDataset",
    "shapes_caption",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Well separated in RGB: the smallest distance between any shape colour and any
# background it may appear on is about 130 (of 255), so anti-aliasing and mild
# noise never make one colour look like another.
COLORS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 50),
        "blue": (30, 70, 220),
        "yellow": (240, 220, 40),
        "magenta": (210, 40, 200),
        "cyan": (40, 210, 220),
    }
)

NEUTRAL_BACKGROUNDS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "black": (15, 15, 15),
        "white": (240, 240, 240),
        "gray": (128, 128, 128),
    }
)

# Every colour a background can have; an item never uses its shape's own colour.
BACKGROUNDS: Mapping[str, tuple[int, int, int]] = MappingProxyType({**NEUTRAL_BACKGROUNDS, **COLORS})

CAPTION_MODES: tuple[str, ...] = ("full", "short", "mixed")

# Shape size (bounding-box side, which is the circle's diameter and the
# triangle's base and height) as a fraction of the image side.
MIN_SIZE_FRACTION = 0.40
MAX_SIZE_FRACTION = 0.75
# Shapes are drawn at this multiple of the resolution and box-filtered down.
SUPERSAMPLING = 4


class ShapeAttributes(NamedTuple):
    """What one item shows: names from SHAPES, COLORS and BACKGROUNDS."""

    shape: str
    color: str
    background: str


def shapes_caption(shape: str, color: str, background: str | None = None) -> str:
    """Caption text: "a red circle on a blue background", or "a red circle" without a background."""
    if background is None:
        return f"a {color} {shape}"
    return f"a {color} {shape} on a {background} background"


class _ItemPlan(NamedTuple):
    attributes: ShapeAttributes
    full_caption: bool
    size: int  # bounding-box side in supersampled pixels
    left: int  # top-left corner in supersampled pixels
    top: int


class ShapesDataset(torch.utils.data.Dataset):
    """Coloured shapes with captions, generated on the fly.

    Item ``i`` is ``(image, caption)``: image a float32 tensor (3, resolution,
    resolution) in [-1, 1], caption e.g. "a red circle on a blue background"
    (full) or "a red circle" (short). Item ``i`` depends only on ``(seed, i)``,
    never on the order of access.

    Args:
        size: number of items.
        resolution: image side in pixels, >= 16.
        seed: selects the whole procedural dataset.
        caption_mode: "full", "short", or "mixed" (each item independently full
            or short with probability 1/2, fixed by ``(seed, i)``).
    """

    channels = 3

    def __init__(self, size: int = 10000, resolution: int = 32, seed: int = 0, caption_mode: str = "mixed"):
        if size < 1:
            raise ValueError(f"size must be >= 1 item, got {size}")
        if resolution < 16:
            raise ValueError(
                f"resolution must be >= 16 pixels for shapes to stay recognisable, got {resolution}"
            )
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption_mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.size = size
        self.resolution = resolution
        self.seed = seed
        self.caption_mode = caption_mode

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        plan = self._plan(index)
        return pil_to_tensor(self._render(plan)), self._caption(plan)

    def attributes(self, index: int) -> ShapeAttributes:
        """(shape, color, background) names of item ``index``, without rendering it."""
        return self._plan(index).attributes

    def caption(self, index: int) -> str:
        """Caption of item ``index``, without rendering it."""
        return self._caption(self._plan(index))

    def captions(self) -> list[str]:
        """Every caption this dataset can produce under its caption_mode, de-duplicated and sorted."""
        result: set[str] = set()
        for shape in SHAPES:
            for color in COLORS:
                if self.caption_mode in ("short", "mixed"):
                    result.add(shapes_caption(shape, color))
                if self.caption_mode in ("full", "mixed"):
                    for background in BACKGROUNDS:
                        if background != color:
                            result.add(shapes_caption(shape, color, background))
        return sorted(result)

    def _plan(self, index: int) -> _ItemPlan:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} is out of range for a ShapesDataset of size {self.size}")
        index = index % self.size
        rng = np.random.default_rng([self.seed, index])
        shape = SHAPES[rng.integers(len(SHAPES))]
        color_names = list(COLORS)
        color = color_names[rng.integers(len(color_names))]
        background_names = [name for name in BACKGROUNDS if name != color]
        background = background_names[rng.integers(len(background_names))]
        full_caption = bool(rng.integers(2)) if self.caption_mode == "mixed" else self.caption_mode == "full"
        canvas = self.resolution * SUPERSAMPLING
        size = int(round(rng.uniform(MIN_SIZE_FRACTION, MAX_SIZE_FRACTION) * canvas))
        size = min(max(size, int(np.ceil(MIN_SIZE_FRACTION * canvas))), int(MAX_SIZE_FRACTION * canvas))
        left = int(rng.integers(canvas - size + 1))
        top = int(rng.integers(canvas - size + 1))
        return _ItemPlan(ShapeAttributes(shape, color, background), full_caption, size, left, top)

    def _caption(self, plan: _ItemPlan) -> str:
        shape, color, background = plan.attributes
        return shapes_caption(shape, color, background if plan.full_caption else None)

    def _render(self, plan: _ItemPlan) -> Image.Image:
        canvas = self.resolution * SUPERSAMPLING
        image = Image.new("RGB", (canvas, canvas), BACKGROUNDS[plan.attributes.background])
        draw = ImageDraw.Draw(image)
        fill = COLORS[plan.attributes.color]
        # PIL boxes include both end pixels, so a side of `size` pixels ends at start + size - 1.
        right, bottom = plan.left + plan.size - 1, plan.top + plan.size - 1
        if plan.attributes.shape == "circle":
            draw.ellipse((plan.left, plan.top, right, bottom), fill=fill)
        elif plan.attributes.shape == "square":
            draw.rectangle((plan.left, plan.top, right, bottom), fill=fill)
        else:  # an upright isosceles triangle whose base and height both equal `size`
            apex = (plan.left + (plan.size - 1) / 2, plan.top)
            draw.polygon([(plan.left, bottom), (right, bottom), apex], fill=fill)
        return image.resize((self.resolution, self.resolution), Image.Resampling.BOX)
