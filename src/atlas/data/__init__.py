"""Datasets of (image, caption) pairs, and ``load_dataset`` to build one from a short spec string.

Every dataset is a ``torch.utils.data.Dataset`` whose item ``i`` is
``(image, caption)``: image a float32 tensor (C, H, W) in [-1, 1], caption a
``str`` ("" when there is none). Every dataset has ``resolution: int``,
``channels: int`` and ``captions() -> list[str]`` (every caption it can produce,
de-duplicated and sorted).

Two ways to describe a dataset, one way to build it: a spec string for
``load_dataset`` ("shapes", "digits", "folder:PATH"), or a :class:`DatasetConfig`
(``DatasetConfig.from_spec(spec, ...)`` is the same dataset; ``dataset_preset(name)``
gives the CIFAR-10 / ImageNet-64 / FFHQ-128 / LSUN-Bedroom-256 / CelebA-HQ-1024
presets over local folders), whose ``build()`` calls ``load_dataset`` for the
procedural datasets.
"""

from __future__ import annotations

from atlas.data.digits import DigitsDataset
from atlas.data.folder import CAPTION_SOURCES, IMAGE_EXTENSIONS, ImageFolderDataset
from atlas.data.presets import DATASET_PRESETS, DatasetConfig, dataset_preset
from atlas.data.shapes import BACKGROUNDS, COLORS, SHAPES, ShapesDataset

__all__ = [
    "BACKGROUNDS",
    "CAPTION_SOURCES",
    "COLORS",
    "SHAPES",
    "DATASET_PRESETS",
    "DATASET_SPECS",
    "DatasetConfig",
    "DigitsDataset",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ShapesDataset",
    "dataset_preset",
    "load_dataset",
]

DATASET_SPECS: tuple[str, ...] = ("shapes", "digits", "folder:PATH")

# ShapesDataset is procedural: with no size given it has this many items.
DEFAULT_SHAPES_SIZE = 10000


def load_dataset(
    spec: str, *, resolution: int, seed: int = 0, size: int | None = None
) -> ShapesDataset | DigitsDataset | ImageFolderDataset:
    """Build a dataset from a spec string.

    Args:
        spec: "shapes", "digits", or "folder:PATH" (PATH relative to the working
            directory or absolute).
        resolution: image side in pixels.
        seed: shapes: selects the procedural dataset; digits: the item order;
            folder: unused (files are in sorted order).
        size: number of items; None means 10000 for shapes and all available
            images for digits and folder.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, one of {DATASET_SPECS}, got {type(spec).__name__}")
    if spec == "shapes":
        return ShapesDataset(size=DEFAULT_SHAPES_SIZE if size is None else size, resolution=resolution, seed=seed)
    if spec == "digits":
        return DigitsDataset(resolution=resolution, seed=seed, size=size)
    if spec.startswith("folder:"):
        path = spec[len("folder:") :]
        if not path:
            raise ValueError(f"dataset spec {spec!r} has no path; write it as 'folder:PATH', e.g. 'folder:./images'")
        return ImageFolderDataset(path, resolution=resolution, size=size)
    raise ValueError(f"unknown dataset spec {spec!r}; valid forms are {', '.join(repr(s) for s in DATASET_SPECS)}")
