"""Prompt adherence on the procedural shapes data: classify an image's shape, colour and background.

The classifier knows the palette and geometry of :mod:`atlas.data.shapes`, so on
that dataset it is exact; on model samples it measures whether the sample shows
what its prompt asked for.

Algorithm for one image (RGB values on a 0..255 scale):

1. background = median of the border pixels, named by the nearest palette colour
   (``BACKGROUNDS``, which includes ``COLORS``). A shape touches at most two
   sides and covers less than half of the border, so the median is background.
2. foreground = pixels farther than ``foreground_threshold`` from the background;
   colour = median foreground pixel, named by the nearest ``COLORS`` entry.
3. coverage ``alpha`` of every pixel = projection of (pixel - background) onto
   (foreground - background), normalised so background is 0 and foreground 1.
   Anti-aliased edges are linear mixes, so ``alpha`` measures area to sub-pixel
   precision, and it is left unclipped so pixel noise averages out.
4. inside the bounding box of ``alpha > 1/2`` (grown by one pixel):
   width = largest row sum of ``alpha``, height = largest column sum,
   fill = total ``alpha`` / (width * height), and taper = mean row width in the
   top half / mean row width in the bottom half.
   Square: fill 1, taper 1. Circle: fill pi/4 ~ 0.785, taper 1.
   Upright triangle: fill 1/2, taper 1/3.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Sequence

import torch

from atlas.data.shapes import BACKGROUNDS, COLORS, SHAPES

__all__ = [
    "ShapePrediction",
    "ShapeFeatures",
    "classify_shapes_image",
    "shape_features",
    "parse_shapes_prompt",
    "shapes_prompt_adherence",
]

NO_SHAPE = "none"

# Decision boundaries between the ideal feature values (see the module docstring).
SQUARE_MIN_FILL = 0.89  # between circle 0.785 and square 1.0
TRIANGLE_MAX_FILL = 0.64  # between triangle 0.5 and circle 0.785
TRIANGLE_MAX_TAPER = 0.6  # between triangle 1/3 and circle / square 1


class ShapePrediction(NamedTuple):
    """Names read off an image: shape in SHAPES or "none", colour in COLORS or "none", background in BACKGROUNDS."""

    shape: str
    color: str
    background: str


class ShapeFeatures(NamedTuple):
    """Geometric measurements of the foreground; lengths in pixels, area in pixels^2."""

    area: float
    width: float
    height: float
    fill: float  # area / (width * height)
    taper: float  # mean row width, top half / bottom half


_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_RGB = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)  # (9, 3)
_COLOR_NAMES = tuple(COLORS)
_COLOR_RGB = torch.tensor(list(COLORS.values()), dtype=torch.float32)  # (6, 3)


def _nearest_name(rgb: torch.Tensor, names: tuple[str, ...], palette: torch.Tensor) -> str:
    return names[int(torch.linalg.vector_norm(palette - rgb, dim=1).argmin())]


def _to_rgb255(image: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an RGB image tensor of shape (3, H, W), got {shape}")
    if image.shape[1] < 4 or image.shape[2] < 4:
        raise ValueError(f"image must be at least 4x4 pixels to classify, got {tuple(image.shape)}")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}; use (-1, 1) or (0, 1)")
    image = image.detach().float().cpu()
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or infinite values; check the sampler output before classifying it")
    return (image - low) * (255.0 / (high - low))


def shape_features(alpha: torch.Tensor) -> ShapeFeatures | None:
    """Geometric features of a coverage map ``alpha`` (H, W), 0 = background, 1 = foreground.

    Returns None when no pixel is more than half covered.
    """
    rows, cols = torch.nonzero(alpha > 0.5, as_tuple=True)
    if rows.numel() == 0:
        return None
    height_px, width_px = alpha.shape
    top, bottom = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 2, height_px)
    left, right = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, width_px)
    window = alpha[top:bottom, left:right]
    row_widths = window.sum(dim=1)
    width = float(row_widths.max())
    height = float(window.sum(dim=0).max())
    area = float(window.sum())
    fill = area / (width * height) if width > 0 and height > 0 else 0.0
    # Taper: compare the top and bottom halves of the rows the shape spans.
    first, last = int(rows.min()) - top, int(rows.max()) - top
    middle = (first + last) / 2
    indices = torch.arange(len(row_widths), dtype=torch.float32)
    upper = row_widths[(indices >= first) & (indices < middle)]
    lower = row_widths[(indices > middle) & (indices <= last)]
    if upper.numel() == 0 or lower.numel() == 0 or float(lower.mean()) <= 0:
        taper = 1.0  # a one-row sliver has no top and bottom to compare
    else:
        taper = float(upper.mean() / lower.mean())
    return ShapeFeatures(area=area, width=width, height=height, fill=fill, taper=taper)


def classify_shapes_image(
    image: torch.Tensor,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    foreground_threshold: float = 48.0,
    min_foreground_fraction: float = 0.02,
) -> ShapePrediction:
    """Read (shape, colour, background) off one image of the shapes kind.

    Args:
        image: (3, H, W) RGB tensor with values in ``value_range``.
        value_range: the values of black and white; (-1, 1) for dataset and
            model tensors, (0, 1) for images scaled to the unit interval.
        foreground_threshold: RGB distance (0..255 scale) from the background
            above which a pixel counts as foreground. Shape/background pairs in
            the palette differ by >= ~130.
        min_foreground_fraction: below this fraction of foreground pixels the
            image shows no shape: shape and colour are "none".

    Returns:
        ShapePrediction(shape, color, background).
    """
    if not foreground_threshold > 0:
        raise ValueError(
            f"foreground_threshold must be > 0 (an RGB distance on a 0..255 scale), got {foreground_threshold}"
        )
    if not 0 <= min_foreground_fraction < 1:
        raise ValueError(f"min_foreground_fraction must be in [0, 1), got {min_foreground_fraction}")
    rgb = _to_rgb255(image, value_range)
    pixels = rgb.reshape(3, -1).T  # (H*W, 3)
    border = torch.cat([rgb[:, 0, :], rgb[:, -1, :], rgb[:, 1:-1, 0], rgb[:, 1:-1, -1]], dim=1).T
    background_rgb = border.median(dim=0).values
    background = _nearest_name(background_rgb, _BACKGROUND_NAMES, _BACKGROUND_RGB)

    distance = torch.linalg.vector_norm(pixels - background_rgb, dim=1)
    foreground = distance > foreground_threshold
    if int(foreground.sum()) < min_foreground_fraction * pixels.shape[0]:
        return ShapePrediction(NO_SHAPE, NO_SHAPE, background)
    foreground_rgb = pixels[foreground].median(dim=0).values
    color = _nearest_name(foreground_rgb, _COLOR_NAMES, _COLOR_RGB)

    contrast = foreground_rgb - background_rgb
    if float(contrast.norm()) < foreground_threshold / 2:
        # Foreground pixels on all sides of the background colour: no single shape colour to measure against.
        return ShapePrediction(NO_SHAPE, color, background)
    alpha = ((pixels - background_rgb) @ contrast / contrast.dot(contrast)).reshape(rgb.shape[1:])
    features = shape_features(alpha)
    if features is None:
        return ShapePrediction(NO_SHAPE, color, background)
    return ShapePrediction(_shape_from_features(features), color, background)


def _shape_from_features(features: ShapeFeatures) -> str:
    if features.taper < TRIANGLE_MAX_TAPER or features.fill < TRIANGLE_MAX_FILL:
        return "triangle"
    if features.fill >= SQUARE_MIN_FILL:
        return "square"
    return "circle"


_SHAPE_PATTERN = re.compile(r"\b(" + "|".join(SHAPES) + r")s?\b")
_COLOR_BEFORE_SHAPE = re.compile(r"\b(" + "|".join(COLORS) + r")\s+(?:" + "|".join(SHAPES) + r")s?\b")
_BACKGROUND_PATTERN = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r")\s+background\b")


def parse_shapes_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(shape, color, background) named by a prompt; None for each one it does not name.

    Understands the dataset's captions ("a red circle on a blue background",
    "a red circle"), case-insensitively; "grey" is read as "gray".
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text = re.sub(r"\bgrey\b", "gray", prompt.lower())
    shape_match = _SHAPE_PATTERN.search(text)
    color_match = _COLOR_BEFORE_SHAPE.search(text)
    background_match = _BACKGROUND_PATTERN.search(text)
    return (
        shape_match.group(1) if shape_match else None,
        color_match.group(1) if color_match else None,
        background_match.group(1) if background_match else None,
    )


def shapes_prompt_adherence(
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> dict[str, float | int]:
    """How often generated images show what their prompts name.

    Args:
        images: (B, 3, H, W) tensor with values in ``value_range``.
        prompts: B prompts, e.g. the dataset's captions.

    Returns:
        dict with ``color_accuracy``, ``shape_accuracy``, ``background_accuracy``
        (each over the prompts that name that attribute; NaN when none does),
        ``joint_accuracy`` (every named attribute right), ``n`` (images) and
        ``n_with_background``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; pass one prompt per image")
    if images.shape[0] == 0:
        raise ValueError("shapes_prompt_adherence needs at least one image, got an empty batch")
    hits = {"shape": [], "color": [], "background": []}
    joint = []
    for image, prompt in zip(images, prompts):
        wanted = dict(zip(("shape", "color", "background"), parse_shapes_prompt(prompt)))
        if wanted["shape"] is None and wanted["color"] is None:
            raise ValueError(f"prompt {prompt!r} names neither a shape {SHAPES} nor a colour {tuple(COLORS)}")
        got = classify_shapes_image(image, value_range=value_range)._asdict()
        named = [key for key in hits if wanted[key] is not None]
        for key in named:
            hits[key].append(wanted[key] == got[key])
        joint.append(all(wanted[key] == got[key] for key in named))

    def accuracy(values: list[bool]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {
        "color_accuracy": accuracy(hits["color"]),
        "shape_accuracy": accuracy(hits["shape"]),
        "background_accuracy": accuracy(hits["background"]),
        "joint_accuracy": accuracy(joint),
        "n": int(images.shape[0]),
        "n_with_background": len(hits["background"]),
    }
