"""Image tensors <-> PNG files, and sample grids (PIL only; no torchvision)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from atlas.io import atomic_write_bytes


def to_pil(image: Tensor) -> Image.Image:
    """(C, H, W) float in [0, 1] with C in {1, 3} -> PIL image."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1 or 3, H, W); got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if array.shape[0] == 1:
        return Image.fromarray(array[0], mode="L")
    return Image.fromarray(array.transpose(1, 2, 0), mode="RGB")


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """Tile (N, C, H, W) images into one (C, H', W') image with ``nrow`` images per row."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N>0, C, H, W); got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def _png_bytes(image: Tensor) -> bytes:
    import io

    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Tensor, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, _png_bytes(image))
    return path


def slug(text: str, limit: int = 40) -> str:
    """File-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "unconditional"


def save_images(images: Tensor, out_dir: str | Path, prompts: Sequence[str] | None = None,
                seeds: Sequence[int] | None = None, grid: bool = True) -> list[Path]:
    """Save each image as a PNG (named by index, prompt and seed) and, optionally, a grid of all of them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        name = f"{i:04d}"
        if prompts is not None:
            name += f"-{slug(prompts[i])}"
        if seeds is not None:
            name += f"-seed{seeds[i]}"
        paths.append(save_png(image, out_dir / f"{name}.png"))
    if grid and len(images) > 1:
        paths.append(save_png(make_grid(images), out_dir / "grid.png"))
    return paths
