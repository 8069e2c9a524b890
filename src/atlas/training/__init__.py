"""Training: the loop (Trainer), its settings, EMA, and `train` to compose a run from settings."""

from .config import TrainingConfig
from .ema import EMA
from .run import build_bundle, train
from .trainer import Trainer, batch_indices, learning_rate

__all__ = ["EMA", "Trainer", "TrainingConfig", "batch_indices", "build_bundle", "learning_rate", "train"]
