"""ShapesDataset: determinism, value range, captions and variety."""

import numpy as np
import pytest
import torch

from atlas.data.shapes import BACKGROUNDS, COLORS, SHAPES, ShapesDataset, shapes_caption


def test_item_is_float_image_in_range_with_caption():
    dataset = ShapesDataset(size=20, resolution=32)
    assert dataset.resolution == 32 and dataset.channels == 3 and len(dataset) == 20
    for index in range(20):
        image, caption = dataset[index]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert isinstance(caption, str) and caption


@pytest.mark.parametrize("resolution", [16, 48, 64])
def test_any_resolution_from_16(resolution):
    image, _ = ShapesDataset(size=3, resolution=resolution)[2]
    assert image.shape == (3, resolution, resolution)


def test_same_seed_and_index_give_the_same_item_in_any_order():
    first = ShapesDataset(size=50, seed=3)
    second = ShapesDataset(size=50, seed=3)
    forward = [first[i] for i in range(10)]
    backward = [second[i] for i in reversed(range(10))][::-1]
    for (image_a, caption_a), (image_b, caption_b) in zip(forward, backward):
        assert torch.equal(image_a, image_b) and caption_a == caption_b
    assert torch.equal(first[7][0], first[7][0])


def test_different_seed_gives_different_items():
    first = ShapesDataset(size=10, seed=0)
    second = ShapesDataset(size=10, seed=1)
    assert any(not torch.equal(first[i][0], second[i][0]) for i in range(10))


def test_negative_index_and_out_of_range():
    dataset = ShapesDataset(size=5)
    assert torch.equal(dataset[-1][0], dataset[4][0])
    with pytest.raises(IndexError, match="out of range"):
        dataset[5]


def test_caption_formats_by_mode():
    full = ShapesDataset(size=30, caption_mode="full")
    short = ShapesDataset(size=30, caption_mode="short")
    mixed = ShapesDataset(size=200, caption_mode="mixed")
    for index in range(30):
        shape, color, background = full.attributes(index)
        assert full[index][1] == f"a {color} {shape} on a {background} background"
        assert short[index][1] == f"a {color} {shape}"
    kinds = [" background" in mixed.caption(i) for i in range(200)]
    assert 60 < sum(kinds) < 140  # about half full, half short
    assert [mixed[i][1] for i in range(10)] == [mixed.caption(i) for i in range(10)]


def test_captions_cover_every_generated_caption():
    for mode, expected in [("full", 3 * 6 * 8), ("short", 3 * 6), ("mixed", 3 * 6 * 9)]:
        dataset = ShapesDataset(size=400, caption_mode=mode)
        vocabulary = dataset.captions()
        assert vocabulary == sorted(set(vocabulary)) and len(vocabulary) == expected
        assert {dataset.caption(i) for i in range(400)} <= set(vocabulary)
    assert shapes_caption("circle", "red", "blue") in ShapesDataset(caption_mode="full").captions()


def _foreground_box(image: torch.Tensor, background: str) -> tuple[int, int, int, int]:
    rgb = (image + 1) * 127.5
    distance = (rgb - torch.tensor(BACKGROUNDS[background]).view(3, 1, 1)).norm(dim=0)
    rows, cols = torch.nonzero(distance > 60, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_variety_over_1000_items():
    dataset = ShapesDataset(size=1000, resolution=32, seed=0)
    attributes = [dataset.attributes(i) for i in range(1000)]
    assert {(shape, color) for shape, color, _ in attributes} == {(s, c) for s in SHAPES for c in COLORS}
    assert all(color != background for _, color, background in attributes)
    assert {background for _, _, background in attributes} == set(BACKGROUNDS)
    sizes, centres = [], []
    for index in range(0, 1000, 5):
        image, _ = dataset[index]
        # The background colour fills the corners far from the shape: the palette colour is exact.
        top, bottom, left, right = _foreground_box(image, attributes[index].background)
        sizes.append(max(bottom - top, right - left) + 1)
        centres.append(((top + bottom) / 2, (left + right) / 2))
    sizes = np.array(sizes)
    assert sizes.min() >= 0.4 * 32 - 1 and sizes.max() <= 0.75 * 32 + 1
    assert sizes.max() - sizes.min() >= 6
    centres = np.array(centres)
    assert centres.std(axis=0).min() > 2.0


def test_shape_colour_is_exact_in_the_interior():
    dataset = ShapesDataset(size=50, resolution=32, caption_mode="full")
    for index in range(50):
        image, _ = dataset[index]
        attributes = dataset.attributes(index)
        pixels = ((image + 1) * 127.5).round().reshape(3, -1).T
        colours = {tuple(int(v) for v in p) for p in pixels}
        assert COLORS[attributes.color] in colours and BACKGROUNDS[attributes.background] in colours


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolution": 8}, "resolution must be >= 16"),
        ({"size": 0}, "size must be >= 1"),
        ({"caption_mode": "long"}, "caption_mode must be one of"),
        ({"seed": -1}, "seed must be a non-negative"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesDataset(**kwargs)
