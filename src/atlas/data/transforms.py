"""Conversions between PIL images and the model's image tensors.

Every dataset in :mod:`atlas.data` returns images as float32 tensors of shape
(C, H, W) with values in [-1, 1]; 8-bit value ``v`` maps to ``v / 127.5 - 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["pil_to_tensor", "tensor_to_pil", "resize_short_side_and_center_crop"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert an 8-bit "RGB" or "L" PIL image to a float32 tensor in [-1, 1].

    Returns shape (3, H, W) for "RGB" and (1, H, W) for "L".
    """
    if image.mode not in ("RGB", "L"):
        raise ValueError(
            f"pil_to_tensor expects an 'RGB' or 'L' image, got mode {image.mode!r}; "
            "call image.convert('RGB') (or 'L') first"
        )
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return tensor / 127.5 - 1.0


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Convert a (C, H, W) tensor in [-1, 1] (C = 1 or 3) to an 8-bit PIL image.

    Values outside [-1, 1] are clipped: a model sample may overshoot slightly.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"tensor_to_pil expects a (C, H, W) tensor with C in (1, 3), got shape {tuple(image.shape)}"
        )
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def resize_short_side_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize (bicubic) so the short side equals ``resolution``, then centre-crop a square.

    The aspect ratio is preserved: content beyond the centred square on the long
    side is cut off, never squashed in.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    width, height = image.size
    scale = resolution / min(width, height)
    new_width = max(resolution, round(width * scale))
    new_height = max(resolution, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left = (new_width - resolution) // 2
    top = (new_height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))
