"""`DatasetConfig`: a dataset described by settings, and presets for the standard image benchmarks.

A DatasetConfig is either procedural ("shapes", "digits": generated or bundled, nothing to point at) or a
folder of images (any other name: the benchmark presets below, or "folder" for your own pictures), read by
:class:`atlas.data.ImageFolderDataset`. atlas never downloads data: a folder dataset needs ``root`` set to a
local copy, and ``build()`` says what is missing and what layout it expects.

The presets (:data:`DATASET_PRESETS`, :func:`dataset_preset`):

==================  ==========  =========================================================================
name                resolution  captions
==================  ==========  =========================================================================
cifar10             32          "folder": the class folder names (CIFAR-10 exported as ROOT/<class>/*.png)
imagenet64          64          "folder": the class folder names (ImageNet exported as ROOT/<class>/*)
ffhq128             128         "sidecar": none unless you add <stem>.txt captions (FFHQ has no captions)
lsun_bedroom256     256         "sidecar": as ffhq128
celebahq1024        1024        "sidecar": as ffhq128
==================  ==========  =========================================================================

The uncaptioned sets use "sidecar" rather than "none" so that captions you write yourself (from a captioner,
say) are picked up; with no ``.txt`` files every caption is "" and the model trained is unconditional.
Every image is resized (bicubic, short side to ``resolution``) and centre-cropped, so LSUN's non-square
bedrooms keep their aspect ratio.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from torch.utils.data import Dataset

from atlas.data.folder import CAPTION_SOURCES, IMAGE_EXTENSIONS, ImageFolderDataset
from atlas.fields import check_known_fields

__all__ = ["DATASET_PRESETS", "PROCEDURAL_DATASETS", "DatasetConfig", "dataset_preset"]

# Procedural datasets and their fixed channel counts; they read no folder and make their own captions.
PROCEDURAL_DATASETS: Mapping[str, int] = MappingProxyType({"shapes": 3, "digits": 1})

_FOLDER_LAYOUT = (f"a folder of images, searched recursively (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                  "captions from <stem>.txt next to an image (captions='sidecar'), from the folder holding it "
                  "(captions='folder') or none (captions='none')")


@dataclass
class DatasetConfig:
    """Which images to train on and how to read them; ``build()`` makes the torch Dataset.

    Not frozen: edit a preset in place (``config.root = "./my_images"``); everything is checked again by
    ``build()``.

    Attributes:
        name: "shapes" or "digits" (procedural: root must be None), or any other name for a folder of
            images ("folder" for your own, or a preset name such as "cifar10").
        root: the folder to read (str or path-like; None until set). Never downloaded.
        resolution: image side in pixels; images are resized (short side) and centre-cropped to it.
        channels: 3 (RGB) or 1 (greyscale) for folders; fixed by procedural datasets (shapes 3, digits 1).
        captions: folder datasets: "sidecar", "folder" or "none" (see ImageFolderDataset); None means the
            source's own captions ("sidecar" for a folder, the generated captions of shapes/digits).
            Procedural datasets accept only None.
        size: number of items (the first ``size`` in sorted order for folders); None = all (10000 for shapes).
        description: what the data is and how to obtain and lay it out; shown in errors about ``root``.
    """

    name: str = "folder"
    root: str | None = None
    resolution: int = 32
    channels: int = 3
    captions: str | None = None
    size: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.root, os.PathLike):
            self.root = os.fspath(self.root)
        self.validate()

    @property
    def is_procedural(self) -> bool:
        return self.name in PROCEDURAL_DATASETS

    def validate(self) -> None:
        """Check every field; raises ValueError/TypeError naming the field, the value and the fix."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetConfig.name={self.name!r} must be a non-empty string: 'shapes', 'digits', "
                             f"'folder' or a preset name ({', '.join(DATASET_PRESETS)})")
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise TypeError(f"DatasetConfig.root must be a path string or None, got {type(self.root).__name__}")
        for name in ("resolution", "size"):
            value = getattr(self, name)
            if name == "size" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DatasetConfig.{name}={value!r} must be a positive integer"
                                 + (" or None (all images)" if name == "size" else ""))
        if self.is_procedural:
            self._validate_procedural()
            return
        if self.channels not in (1, 3):
            raise ValueError(f"DatasetConfig.channels={self.channels!r} must be 3 (RGB) or 1 (greyscale)")
        if self.captions is not None and self.captions not in CAPTION_SOURCES:
            raise ValueError(f"DatasetConfig.captions={self.captions!r} must be one of {CAPTION_SOURCES} or None "
                             "(= 'sidecar'): 'sidecar' reads <stem>.txt next to each image, 'folder' uses the "
                             "class folder's name, 'none' trains unconditionally")

    def _validate_procedural(self) -> None:
        expected_channels = PROCEDURAL_DATASETS[self.name]
        if self.root is not None:
            raise ValueError(f"DatasetConfig(name={self.name!r}) is generated, not read from a folder, but "
                             f"root={self.root!r} is set; to train on your images use name='folder' (or a preset "
                             f"such as dataset_preset('ffhq128')) with that root, or set root=None")
        if self.channels != expected_channels:
            raise ValueError(f"DatasetConfig(name={self.name!r}) has {expected_channels} channel(s), got "
                             f"channels={self.channels!r}; set channels={expected_channels}")
        if self.captions is not None:
            raise ValueError(f"DatasetConfig(name={self.name!r}) makes its own captions; captions="
                             f"{self.captions!r} applies to image folders only: leave captions=None")

    @property
    def spec(self) -> str:
        """The equivalent ``load_dataset`` / ``TrainingConfig.dataset`` string ("shapes", "folder:PATH").

        For a folder it does not carry ``captions`` or ``channels``; ``to_dict()`` is the full record.
        """
        if self.is_procedural:
            return self.name
        if self.root is None:
            raise ValueError(self._root_unset_message())
        return f"folder:{os.fspath(self.root)}"

    @classmethod
    def from_spec(cls, spec: str, *, resolution: int, size: int | None = None) -> "DatasetConfig":
        """The DatasetConfig that ``load_dataset(spec, resolution=..., size=...)`` describes."""
        from atlas.data import DATASET_SPECS

        if isinstance(spec, str) and spec in PROCEDURAL_DATASETS:
            return cls(name=spec, resolution=resolution, channels=PROCEDURAL_DATASETS[spec], size=size)
        if isinstance(spec, str) and spec.startswith("folder:") and spec[len("folder:"):]:
            return cls(name="folder", root=spec[len("folder:"):], resolution=resolution, size=size)
        raise ValueError(f"unknown dataset spec {spec!r}; valid forms are {', '.join(map(repr, DATASET_SPECS))}")

    def build(self, *, seed: int = 0) -> Dataset:
        """The torch Dataset of (image (C, resolution, resolution) in [-1, 1], caption) items.

        Args:
            seed: procedural datasets only (shapes: which items; digits: their order); folders are read in
                sorted order.

        Raises:
            ValueError: root not set, or invalid fields. FileNotFoundError / NotADirectoryError: root missing
            or not a folder.
        """
        if isinstance(self.root, os.PathLike):
            self.root = os.fspath(self.root)
        self.validate()
        if self.is_procedural:
            from atlas.data import load_dataset

            return load_dataset(self.name, resolution=self.resolution, seed=seed, size=self.size)
        if self.root is None:
            raise ValueError(self._root_unset_message())
        root = Path(self.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"DatasetConfig(name={self.name!r}).root={self.root!r} does not exist "
                                    f"(resolved to {str(root.resolve())!r}); expected {self._layout()}")
        if not root.is_dir():
            raise NotADirectoryError(f"DatasetConfig(name={self.name!r}).root={self.root!r} is a file; point it "
                                     f"at {self._layout()}")
        return ImageFolderDataset(root, resolution=self.resolution, channels=self.channels, size=self.size,
                                  captions=self.captions or "sidecar")

    def _layout(self) -> str:
        return self.description or _FOLDER_LAYOUT

    def _root_unset_message(self) -> str:
        how = self.description or f"it should be {_FOLDER_LAYOUT}."
        return (f"DatasetConfig(name={self.name!r}).root is not set; atlas never downloads data. {how} "
                f"Then set config['dataset'].root = '/path/to/{self.name}'")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["root"] is not None:
            data["root"] = os.fspath(data["root"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DatasetConfig":
        check_known_fields(cls, data)
        return cls(**data)


def _class_folders(title: str, example: str) -> str:
    return (f"{title} Download it yourself and export it as one folder per class, named after the class: "
            f"ROOT/{example}/00001.png, ...; the folder names become the captions.")


def _uncaptioned(title: str) -> str:
    return (f"{title} Download it yourself and put the images (any subfolders) under ROOT; it has no captions: "
            "add <stem>.txt next to an image to caption it, otherwise the model is unconditional.")


DATASET_PRESETS: Mapping[str, DatasetConfig] = MappingProxyType({
    "cifar10": DatasetConfig(
        name="cifar10", resolution=32, captions="folder",
        description=_class_folders("CIFAR-10 (Krizhevsky 2009): 60,000 32x32 photos in 10 classes.", "airplane")),
    "imagenet64": DatasetConfig(
        name="imagenet64", resolution=64, captions="folder",
        description=_class_folders("ImageNet 64x64 (Chrabaszcz et al. 2017, downsampled ILSVRC-2012): 1.28M "
                                   "images in 1000 classes; rename the WordNet-id folders (n01440764) to class "
                                   "names for readable prompts.", "tench")),
    "ffhq128": DatasetConfig(
        name="ffhq128", resolution=128, captions="sidecar",
        description=_uncaptioned("FFHQ (Karras et al. 2019): 70,000 aligned faces, 1024x1024 PNGs, read at 128.")),
    "lsun_bedroom256": DatasetConfig(
        name="lsun_bedroom256", resolution=256, captions="sidecar",
        description=_uncaptioned("LSUN Bedroom (Yu et al. 2015): about 3M bedroom photos, short side 256. It ships "
                                 "as an LMDB database, which atlas does not read: export it to image files "
                                 "first.")),
    "celebahq1024": DatasetConfig(
        name="celebahq1024", resolution=1024, captions="sidecar",
        description=_uncaptioned("CelebA-HQ (Karras et al. 2018): 30,000 faces at 1024x1024.")),
})


def dataset_preset(name: str) -> DatasetConfig:
    """A fresh, editable copy of ``DATASET_PRESETS[name]`` (root unset: set it to your local copy)."""
    if name not in DATASET_PRESETS:
        raise ValueError(f"unknown dataset preset {name!r}; valid names are {', '.join(DATASET_PRESETS)} "
                         f"(or DatasetConfig(name='folder', root=...) for your own images)")
    return replace(DATASET_PRESETS[name])
