"""The UCI handwritten digits bundled with scikit-learn, as a small captioned image dataset.

1797 greyscale 8x8 images with values 0..16 (``sklearn.datasets.load_digits``,
shipped inside scikit-learn, so nothing is downloaded), upsampled to the
requested resolution. Captions name the digit: "the digit seven".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DIGIT_WORDS", "DigitsDataset", "digit_caption"]

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# load_digits pixel values run from 0 (background) to 16 (full ink).
_MAX_INK = 16.0


def digit_caption(label: int) -> str:
    """Caption for a digit label 0..9, e.g. 7 -> "the digit seven"."""
    return f"the digit {DIGIT_WORDS[label]}"


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits dataset needs scikit-learn: pip install 'atlas-diffusion[digits]'") from error
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


class DigitsDataset(torch.utils.data.Dataset):
    """Handwritten digits, 1 channel, upsampled (bicubic) to ``resolution`` and scaled to [-1, 1].

    Item ``i`` is ``(image, caption)``: image float32 (1, resolution, resolution)
    with 0 ink -> -1 and full ink -> +1 (bicubic overshoot is clipped), caption
    e.g. "the digit seven".

    Args:
        resolution: image side in pixels, >= 8.
        seed: order of the 1797 images (a seeded permutation), and so which
            ones a ``size`` subset keeps.
        size: keep the first ``size`` images of that order; None keeps all 1797.

    Attributes:
        labels: (len,) int64 tensor of digit labels 0..9, aligned with the items.
    """

    channels = 1

    def __init__(self, resolution: int = 32, seed: int = 0, size: int | None = None):
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 (the digits are 8x8 pixels), got {resolution}")
        images, labels = _load_sklearn_digits()
        if size is not None and not 1 <= size <= len(images):
            raise ValueError(f"size must be between 1 and {len(images)} (the number of digits), got {size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        order = np.random.default_rng(seed).permutation(len(images))[: size or len(images)]
        self.resolution = resolution
        self.seed = seed
        self._images = torch.from_numpy(images[order])  # (len, 8, 8), 0..16
        self.labels = torch.from_numpy(labels[order])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a DigitsDataset of size {len(self)}")
        image = self._images[index][None, None] * (2.0 / _MAX_INK) - 1.0  # (1, 1, 8, 8) in [-1, 1]
        if self.resolution != image.shape[-1]:
            image = F.interpolate(image, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        return image[0].clamp(-1.0, 1.0), digit_caption(int(self.labels[index]))

    def captions(self) -> list[str]:
        """Every caption this dataset can produce (one per digit present), sorted."""
        return sorted({digit_caption(int(label)) for label in self.labels.unique()})
