"""The shapes classifier is exact on our own data; prompt parsing and adherence scores."""

import math

import pytest
import torch

from atlas.data.shapes import BACKGROUNDS, COLORS, ShapesDataset
from atlas.eval.shapes_metric import (
    ShapePrediction,
    classify_shapes_image,
    parse_shapes_prompt,
    shapes_prompt_adherence,
)


@pytest.mark.parametrize("resolution", [32, 64])
def test_classifier_is_exact_on_the_dataset(resolution):
    dataset = ShapesDataset(size=500, resolution=resolution, seed=11)
    wrong = [
        (index, dataset.attributes(index), prediction)
        for index in range(500)
        if (prediction := classify_shapes_image(dataset[index][0])) != tuple(dataset.attributes(index))
    ]
    assert wrong == []


def test_classifier_is_robust_to_mild_noise():
    dataset = ShapesDataset(size=500, resolution=32, seed=12)
    generator = torch.Generator().manual_seed(0)
    correct = 0
    for index in range(500):
        image = dataset[index][0]
        noisy = (image + 0.05 * torch.randn(image.shape, generator=generator)).clamp(-1, 1)
        correct += classify_shapes_image(noisy) == tuple(dataset.attributes(index))
    assert correct / 500 >= 0.98


def test_value_range_zero_one():
    dataset = ShapesDataset(size=20, resolution=32, seed=13)
    for index in range(20):
        unit = (dataset[index][0] + 1) / 2
        assert classify_shapes_image(unit, value_range=(0, 1)) == tuple(dataset.attributes(index))


def test_plain_image_has_no_shape():
    gray = torch.full((3, 32, 32), 128 / 127.5 - 1)
    assert classify_shapes_image(gray) == ShapePrediction("none", "none", "gray")


def test_classifier_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        classify_shapes_image(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="value_range"):
        classify_shapes_image(torch.zeros(3, 32, 32), value_range=(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        classify_shapes_image(torch.full((3, 32, 32), float("nan")))


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red circle on a blue background", ("circle", "red", "blue")),
        ("a red circle", ("circle", "red", None)),
        ("A Cyan Triangle on a grey background", ("triangle", "cyan", "gray")),
        ("a square on a white background", ("square", None, "white")),
        ("a magenta blob", (None, None, None)),
        ("", (None, None, None)),
    ],
)
def test_parse_shapes_prompt(prompt, expected):
    assert parse_shapes_prompt(prompt) == expected


def test_parse_roundtrips_every_dataset_caption():
    dataset = ShapesDataset(size=100, caption_mode="mixed")
    for index in range(100):
        shape, color, background = dataset.attributes(index)
        parsed = parse_shapes_prompt(dataset.caption(index))
        assert parsed[:2] == (shape, color)
        assert parsed[2] in (background, None)


def test_adherence_on_a_mix_of_right_and_wrong_images():
    dataset = ShapesDataset(size=8, resolution=32, seed=14, caption_mode="full")
    images = torch.stack([dataset[i][0] for i in range(8)])
    prompts = []
    for index in range(8):
        shape, color, background = dataset.attributes(index)
        if index < 2:  # wrong colour only
            color = next(c for c in COLORS if c not in (color, background))
        elif index < 3:  # wrong shape only
            shape = "square" if shape != "square" else "circle"
        elif index < 4:  # wrong background only
            background = next(b for b in BACKGROUNDS if b not in (color, background))
        prompts.append(f"a {color} {shape} on a {background} background" if index < 6 else f"a {color} {shape}")
    result = shapes_prompt_adherence(images, prompts)
    assert result["color_accuracy"] == pytest.approx(6 / 8)
    assert result["shape_accuracy"] == pytest.approx(7 / 8)
    assert result["background_accuracy"] == pytest.approx(5 / 6)
    assert result["joint_accuracy"] == pytest.approx(4 / 8)
    assert result["n"] == 8 and result["n_with_background"] == 6


def test_adherence_without_backgrounds_and_errors():
    dataset = ShapesDataset(size=3, resolution=32, caption_mode="short")
    images = torch.stack([dataset[i][0] for i in range(3)])
    result = shapes_prompt_adherence(images, [dataset.caption(i) for i in range(3)])
    assert result["color_accuracy"] == 1.0 and result["shape_accuracy"] == 1.0
    assert math.isnan(result["background_accuracy"]) and result["n_with_background"] == 0
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        shapes_prompt_adherence(images, ["a red circle"] * 2)
    with pytest.raises(ValueError, match="names neither"):
        shapes_prompt_adherence(images, ["a cat"] * 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        shapes_prompt_adherence(images[0], ["a red circle"] * 3)
