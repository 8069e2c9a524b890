"""Networks. They know nothing of samplers, schedules or text: inputs in, tensors out."""

from .config import HighResModelConfig
from .unet import HighResLatentScoreModel

__all__ = ["HighResModelConfig", "HighResLatentScoreModel"]
