"""A folder of image files, with captions from sidecar files or class folders, as a training dataset.

Images are found recursively and sorted, so the item order is the same on every
machine. Captions come from one of CAPTION_SOURCES: "sidecar" reads
``cat/001.txt`` for ``cat/001.png`` when that file exists; "folder" uses the name
of the folder holding the image ("cat"), for class-labelled sets such as CIFAR-10
or ImageNet exported as one folder per class; "none" gives every image "".
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from atlas.data.transforms import pil_to_tensor, resize_short_side_and_center_crop

__all__ = ["CAPTION_SOURCES", "IMAGE_EXTENSIONS", "ImageFolderDataset", "folder_caption"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

CAPTION_SOURCES: tuple[str, ...] = ("sidecar", "folder", "none")


class ImageFolderDataset(torch.utils.data.Dataset):
    """Every image under ``root`` (recursively), resized and centre-cropped to a square.

    Item ``i`` is ``(image, caption)``: image float32 (channels, resolution,
    resolution) in [-1, 1], made by a bicubic resize of the short side to
    ``resolution`` followed by a centre crop (aspect ratio kept, the long side's
    ends cut off); caption as chosen by ``captions``.

    Args:
        root: folder to search for files ending in IMAGE_EXTENSIONS (any case).
        resolution: output side in pixels.
        channels: 3 (RGB) or 1 (greyscale, PIL mode "L"). Transparency is dropped.
        size: keep only the first ``size`` images in sorted order; None keeps all.
        captions: where captions come from, one of CAPTION_SOURCES:
            "sidecar": the stripped text of ``<stem>.txt`` next to the image, "" when there is none;
            "folder": the name of the folder holding the image, with "_" and "-" read as spaces
            (``root/pickup_truck/0001.png`` -> "pickup truck"); an image directly under ``root`` gets "";
            "none": every caption is "" (an unconditional dataset).
    """

    def __init__(self, root: str | Path, resolution: int, channels: int = 3, size: int | None = None,
                 captions: str = "sidecar"):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist; check the path")
        if not root.is_dir():
            raise NotADirectoryError(f"image folder {str(root)!r} is a file, not a folder")
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (RGB) or 1 (greyscale), got {channels}")
        if captions not in CAPTION_SOURCES:
            raise ValueError(
                f"captions must be one of {CAPTION_SOURCES}, got {captions!r}: 'sidecar' reads <stem>.txt next to "
                "each image, 'folder' uses the class folder's name, 'none' leaves every caption empty"
            )
        paths = sorted(
            path for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        )
        if not paths:
            raise ValueError(
                f"no images found under {str(root)!r}; accepted extensions are {', '.join(IMAGE_EXTENSIONS)}"
            )
        if size is not None:
            if not 1 <= size <= len(paths):
                raise ValueError(f"size must be between 1 and {len(paths)} (images under {str(root)!r}), got {size}")
            paths = paths[:size]
        self.root = root
        self.resolution = resolution
        self.channels = channels
        self.caption_source = captions
        self.paths: list[Path] = paths
        self._captions = [_caption(path, root, captions) for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path = self.paths[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("L" if self.channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise OSError(f"could not read image {str(path)!r}: {error}; remove or replace the file") from error
        image = resize_short_side_and_center_crop(image, self.resolution)
        return pil_to_tensor(image), self._captions[index]

    def captions(self) -> list[str]:
        """Every caption the dataset can produce, de-duplicated and sorted ("" if some image has none)."""
        return sorted(set(self._captions))


def folder_caption(image_path: Path, root: Path) -> str:
    """Caption from the class folder: the name of the folder holding ``image_path``, "_"/"-" as spaces.

    An image directly under ``root`` has no class folder and gets "".
    """
    if image_path.parent == root:
        return ""
    return " ".join(image_path.parent.name.replace("_", " ").replace("-", " ").split())


def _caption(image_path: Path, root: Path, source: str) -> str:
    if source == "folder":
        return folder_caption(image_path, root)
    if source == "none":
        return ""
    return _read_sidecar(image_path)


def _read_sidecar(image_path: Path) -> str:
    caption_path = image_path.with_suffix(".txt")
    if not caption_path.is_file():
        return ""
    return caption_path.read_text(encoding="utf-8").strip()
