"""DigitsDataset: sklearn's bundled 8x8 digits, upsampled and captioned."""

import pytest
import torch

pytest.importorskip("sklearn")

from atlas.data.digits import DIGIT_WORDS, DigitsDataset  # noqa: E402


def test_items_shape_range_caption_and_labels():
    dataset = DigitsDataset(resolution=32)
    assert len(dataset) == 1797 and dataset.channels == 1 and dataset.resolution == 32
    assert dataset.labels.shape == (1797,) and set(dataset.labels.tolist()) == set(range(10))
    for index in range(0, 1797, 97):
        image, caption = dataset[index]
        assert image.shape == (1, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1
        assert caption == f"the digit {DIGIT_WORDS[int(dataset.labels[index])]}"
    # Background is -1 (no ink) and strokes reach close to +1.
    image, _ = dataset[0]
    assert image.min() == -1 and image.max() > 0.5


def test_captions_name_all_ten_digits():
    captions = DigitsDataset(resolution=16).captions()
    assert captions == sorted(f"the digit {word}" for word in DIGIT_WORDS)
    assert "the digit seven" in captions


def test_seed_orders_and_size_subsets():
    first, second = DigitsDataset(resolution=8, seed=0), DigitsDataset(resolution=8, seed=1)
    assert not torch.equal(first.labels, second.labels)
    assert torch.equal(first[5][0], DigitsDataset(resolution=8, seed=0)[5][0])
    subset = DigitsDataset(resolution=8, seed=0, size=100)
    assert len(subset) == 100 and torch.equal(subset.labels, first.labels[:100])
    with pytest.raises(ValueError, match="size must be between 1 and 1797"):
        DigitsDataset(size=5000)


def test_missing_sklearn_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def refuse_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_sklearn)
    with pytest.raises(ImportError, match=r"pip install 'atlas-diffusion\[digits\]'"):
        DigitsDataset()
