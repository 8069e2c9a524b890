"""Evaluation: distances between sample sets and prompt adherence on the shapes data."""

from __future__ import annotations

from atlas.eval.metrics import mmd, sliced_wasserstein2
from atlas.eval.shapes_metric import (
    ShapePrediction,
    classify_shapes_image,
    parse_shapes_prompt,
    shapes_prompt_adherence,
)

__all__ = [
    "ShapePrediction",
    "classify_shapes_image",
    "mmd",
    "parse_shapes_prompt",
    "shapes_prompt_adherence",
    "sliced_wasserstein2",
]
